"""Many identity discriminators trained at once: bulk enrollment of thousands of subjects.

Each subject's gate is what `CagulTrainer` trains for one request (the same MLP on the identity embedding, the
same balanced BCE, prototype and threshold rule), trained for many subjects in one stacked op against one shared
pool of negatives. The views are fewer and the steps shorter than a request's: the cost per subject is a
fraction of a second instead of seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from unlearning.augment import MILD_VIEWS, STRONG_VIEWS, AugmentConfig
from unlearning.backbones import Backbone
from unlearning.cagul.config import CagulConfig
from unlearning.cagul.discriminator import Discriminator
from unlearning.progress import ProgressFn


@dataclass(frozen=True)
class EnrollmentConfig:
    strong_views: int = 8
    mild_views: int = 4
    negative_views: int = 1
    steps: int = 200
    # Each step, per subject: its own views, the shared pool, other subjects' views, its own look-alikes. Trained
    # against a pool of world look-alikes alone, 1,000 gates fired on 99.9% of strangers' photos: a gate learns
    # "not those people", so the negatives must be as varied as the people it will be shown.
    positives_per_step: int = 32
    pool_per_step: int = 48
    others_per_step: int = 24
    lookalikes_per_step: int = 24
    chunk: int = 1000  # subjects trained side by side in one stacked op
    seed: int = 0


def embed_views(
    backbone: Backbone,
    images: Sequence[Image.Image],
    views: list[tuple[AugmentConfig | None, int]],
    generator: torch.Generator,
    batch: int = 256,
) -> torch.Tensor:
    """Identity embeddings [len(images), sum of copies, dim]: each image as drawn (None) or changed, per entry."""
    out = []
    for augmentation, copies in views:
        for _ in range(copies):
            parts = []
            for start in range(0, len(images), batch):
                chunk = images[start : start + batch]
                inputs = (
                    backbone.pixel_values(chunk)
                    if augmentation is None
                    else backbone.augmented_inputs(chunk, augmentation, generator)
                )
                parts.append(backbone.identity_embeddings(backbone.visual_tokens(inputs)).float())
            out.append(torch.cat(parts))
    return torch.stack(out, dim=1)


def enroll(
    backbone: Backbone,
    subjects: Sequence[Sequence[Image.Image]],
    negatives: Sequence[Image.Image],
    heldout_negatives: Sequence[Image.Image],
    module_config: CagulConfig,
    config: EnrollmentConfig = EnrollmentConfig(),
    progress: ProgressFn | None = None,
    lookalikes: Sequence[Sequence[Image.Image]] | None = None,
) -> list[Discriminator]:
    """One calibrated identity discriminator (with its prototype) per subject, from the subject's photos.

    `negatives` are shared by every subject; `lookalikes[i]` (as many per subject) are subject i's own hard
    negatives; within a chunk, every other subject's views are negatives too.
    """
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    views = [(None, 1), (STRONG_VIEWS, config.strong_views), (MILD_VIEWS, config.mild_views)]
    neg = embed_views(backbone, negatives, [(None, 1), (STRONG_VIEWS, config.negative_views)], generator)
    neg = neg.flatten(0, 1)
    neg_heldout = embed_views(backbone, heldout_negatives, [(None, 1), (MILD_VIEWS, 2)], generator).flatten(0, 1)
    out: list[Discriminator] = []
    for start in range(0, len(subjects), config.chunk):
        group = subjects[start : start + config.chunk]
        flat = [im for photos in group for im in photos]
        drawn = embed_views(backbone, flat, views, generator)  # [photos, views, dim], each photo as sent first
        pos = drawn.view(len(group), -1, neg.shape[1])
        as_sent = drawn[:, 0].view(len(group), -1, neg.shape[1])
        hard = None
        if lookalikes:
            alike = [im for photos in lookalikes[start : start + config.chunk] for im in photos]
            hard = embed_views(backbone, alike, [(None, 1), (STRONG_VIEWS, 1)], generator).view(
                len(group), -1, neg.shape[1]
            )
        if progress is not None:
            progress("embedded", start + len(group), len(subjects), math.nan)
        shape = (backbone.n_visual_tokens, backbone.hidden_size, backbone.identity_dim)
        out += _train_group(pos, as_sent, hard, neg, neg_heldout, module_config, config, generator, shape)
        if progress is not None:
            progress("trained", start + len(group), len(subjects), math.nan)
    return out


def _train_group(
    pos: torch.Tensor,
    as_sent: torch.Tensor,
    hard: torch.Tensor | None,
    neg: torch.Tensor,
    neg_heldout: torch.Tensor,
    cfg: CagulConfig,
    config: EnrollmentConfig,
    generator: torch.Generator,
    shape: tuple[int, int, int],
) -> list[Discriminator]:
    """[M, views, dim] positives against shared negatives: M MLPs as stacked weights, trained together.

    `as_sent`: [M, photos, dim], each subject's photos as sent, whose mean is the module's prototype (as
    `CagulTrainer` takes a request's). `shape`: the backbone's visual token count, hidden size and identity size,
    as each module records them.
    """
    m, n_views, dim = pos.shape
    width = cfg.discriminator_hidden
    bound1, bound2 = 1 / math.sqrt(dim), 1 / math.sqrt(width)
    w1 = torch.empty(m, dim, width).uniform_(-bound1, bound1, generator=generator).requires_grad_()
    b1 = torch.empty(m, width).uniform_(-bound1, bound1, generator=generator).requires_grad_()
    w2 = torch.empty(m, width).uniform_(-bound2, bound2, generator=generator).requires_grad_()
    b2 = torch.zeros(m).requires_grad_()
    params = [w1, b1, w2, b2]
    optimizer = torch.optim.AdamW(params, lr=cfg.discriminator_lr, weight_decay=1e-2)
    p = config.positives_per_step
    n_hard = config.lookalikes_per_step if hard is not None else 0
    n_others = config.others_per_step if m > 1 else 0
    n = config.pool_per_step + n_others + n_hard
    labels = torch.cat([torch.ones(m, p), torch.zeros(m, n)], dim=1)
    # As the request trainer weighs them: the negatives' share over the positives' in what is trained on.
    pos_weight = torch.tensor(len(neg) / n_views)

    def logits(x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(torch.einsum("mbd,mdh->mbh", x, w1) + b1[:, None])
        return torch.einsum("mbh,mh->mb", h, w2) + b2[:, None]

    rows = torch.arange(m)[:, None]
    for _ in range(config.steps):
        parts = [
            pos[rows, torch.randint(n_views, (m, p), generator=generator)],
            neg[torch.randint(len(neg), (m, config.pool_per_step), generator=generator)],
        ]
        if n_others:
            other = (rows + torch.randint(1, m, (m, n_others), generator=generator)) % m
            parts.append(pos[other, torch.randint(n_views, (m, n_others), generator=generator)])
        if hard is not None:
            parts.append(hard[rows, torch.randint(hard.shape[1], (m, n_hard), generator=generator)])
        loss = F.binary_cross_entropy_with_logits(logits(torch.cat(parts, dim=1)), labels, pos_weight=pos_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        neg_scores = torch.cat(
            [
                torch.sigmoid(logits(neg_heldout[i : i + 256].expand(m, -1, -1)))
                for i in range(0, len(neg_heldout), 256)
            ],
            dim=1,
        )
        quantiles = torch.quantile(neg_scores, 1 - cfg.target_fpr, dim=1)
        thresholds = quantiles.clamp(min=cfg.threshold_floor)
        prototypes = F.normalize(as_sent.mean(1), dim=-1)
    out = []
    for i in range(m):
        d = Discriminator(shape[0], shape[1], width, "identity", shape[2])
        with torch.no_grad():
            d.fc1.weight.copy_(w1[i].T)
            d.fc1.bias.copy_(b1[i])
            d.fc2.weight.copy_(w2[i][None])
            d.fc2.bias.fill_(float(b2[i]))
            d.threshold.fill_(float(thresholds[i]))
            d.prototype.copy_(prototypes[i])
        out.append(d.eval())
    return out
