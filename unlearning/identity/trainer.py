"""Train the identity encoder as face-recognition towers are trained: contrastively, on many people."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import get_cosine_schedule_with_warmup

from unlearning.augment import MILD_VIEWS, STRONG_VIEWS
from unlearning.errors import InvalidInputError
from unlearning.identity.config import IdentityConfig
from unlearning.identity.encoder import IdentityEncoder
from unlearning.progress import ProgressFn

# Neighbours kept per person for a hard batch's group: some of a person's nearest are drawn already.
NEIGHBOURS_PER_GROUP = 4

if TYPE_CHECKING:  # the backbone registry loads identity encoders: a runtime import here would be circular
    from unlearning.backbones import Backbone


def identity_tokens(
    backbone: Backbone, portraits: Sequence[Sequence[Image.Image]], generator: torch.Generator, chunk: int = 128
) -> torch.Tensor:
    """[identities, 3 x views, n_tokens, hidden]: each photo as drawn, strongly and mildly changed."""
    views = len(portraits[0])
    if any(len(p) != views for p in portraits):
        raise InvalidInputError("every identity needs the same number of photos")
    flat = [im for person in portraits for im in person]
    copies = []
    for augmentation in (None, STRONG_VIEWS, MILD_VIEWS):
        parts = []
        for start in range(0, len(flat), chunk):
            images = flat[start : start + chunk]
            inputs = (
                backbone.pixel_values(images)
                if augmentation is None
                else backbone.augmented_inputs(images, augmentation, generator)
            )
            parts.append(backbone.visual_tokens(inputs).float())
        copies.append(torch.cat(parts).view(len(portraits), views, *parts[0].shape[1:]))
    return torch.cat(copies, dim=1)


def two_views(views: int, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of `count` people, two different view indices out of `views`: a positive pair."""
    first = torch.randint(views, (count,), generator=generator)
    return first, (first + torch.randint(1, views, (count,), generator=generator)) % views


def nearest_people(embeddings: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """[people, k] indices of each person's `k` nearest other people by cosine (`embeddings`: unit, [people, dim])."""
    parts = []
    for start in range(0, len(embeddings), chunk):
        cosine = embeddings[start : start + chunk] @ embeddings.T
        rows = torch.arange(len(cosine))
        cosine[rows, rows + start] = float("-inf")
        parts.append(cosine.topk(k, dim=1).indices)
    return torch.cat(parts)


def group_neighbours(embeddings: torch.Tensor, group: int) -> torch.Tensor:
    """`nearest_people` with as many per person as a hard group of `group` needs: some are drawn already."""
    return nearest_people(embeddings, min(len(embeddings) - 1, NEIGHBOURS_PER_GROUP * group))


def batch_people(
    neighbours: torch.Tensor | None, people: int, size: int, group: int, generator: torch.Generator
) -> torch.Tensor:
    """The people of one pre-training batch: `size` of `people` at random, or in hard groups once `neighbours`
    (`group_neighbours`) are known."""
    if neighbours is None:
        return torch.randperm(people, generator=generator)[:size]
    return hard_batch(neighbours, size, group, generator)


def hard_batch(neighbours: torch.Tensor, size: int, group: int, generator: torch.Generator) -> torch.Tensor:
    """`size` distinct people in groups of up to `group`: a person drawn at random and the nearest of its
    `neighbours` not drawn yet, so a batch's negatives hold the people the embedding confuses now, not only
    strangers far apart (at 10,000 identities and 512 a batch, two look-alikes rarely meet by chance)."""
    drawn = torch.zeros(len(neighbours), dtype=torch.bool)
    batch: list[int] = []
    for seed in torch.randperm(len(neighbours), generator=generator).tolist():
        if len(batch) == size:
            break
        if drawn[seed]:
            continue
        near = neighbours[seed][~drawn[neighbours[seed]]][: group - 1].tolist()
        members = [seed, *near][: size - len(batch)]
        drawn[members] = True
        batch.extend(members)
    return torch.tensor(batch)


def contrastive_loss(cosine: torch.Tensor, margin: float, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over a [batch, batch] cosine matrix whose diagonal holds the positive pairs, each positive
    less `margin` (as CosFace does for its classes): one person's photos must be nearer each other by that much
    than to anyone else's, whatever the number of identities."""
    labels = torch.arange(len(cosine))
    logits = (cosine - margin * torch.eye(len(cosine))) / temperature
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def train_identity_encoder(
    backbone: Backbone,
    portraits: Sequence[Sequence[Image.Image]],
    config: IdentityConfig,
    progress: ProgressFn | None = None,
    initial: Mapping[str, torch.Tensor] | None = None,
) -> IdentityEncoder:
    """Symmetric InfoNCE: two photos of one identity against every other identity in the batch, nearer by
    `config.margin`, on the visual tokens `config.tokens` names; from `initial`'s weights where `config.init` asks
    for the tower's head."""
    if config.steps and len(portraits) < config.batch_size:
        raise InvalidInputError(f"{len(portraits)} identities is fewer than the batch size {config.batch_size}")
    if (initial is None) != (config.init == "random"):
        raise InvalidInputError(f"identity init {config.init!r} takes initial weights only from the tower's head")
    with backbone.reading_gate_tokens(config.tokens):
        return _train(backbone, portraits, config, progress, initial)


def _train(
    backbone: Backbone,
    portraits: Sequence[Sequence[Image.Image]],
    config: IdentityConfig,
    progress: ProgressFn | None,
    initial: Mapping[str, torch.Tensor] | None,
) -> IdentityEncoder:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    n_tokens, hidden = backbone.gate_shapes()[config.tokens]
    encoder = IdentityEncoder(n_tokens, hidden, config.width, config.dim, config.tokens)
    if initial is not None:
        encoder.load_state_dict(initial)
    if config.steps == 0:
        return encoder.frozen()
    pairs = _fixed_pairs(backbone, portraits, generator) if config.augmentation == "fixed" else None
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=config.lr, weight_decay=1e-2)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, config.steps // 10), config.steps)
    encoder.train()
    for step in range(config.steps):
        who = torch.randperm(len(portraits), generator=generator)[: config.batch_size]
        if pairs is not None:
            first, second = pairs(who)
        else:
            first, second = _fresh_pair(backbone, portraits, who, generator)
        loss = contrastive_loss(encoder(first) @ encoder(second).T, config.margin, config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress is not None and (step % 25 == 0 or step == config.steps - 1):
            progress("identity", step + 1, config.steps, float(loss.detach()))
    return encoder.frozen()


def _fixed_pairs(
    backbone: Backbone, portraits: Sequence[Sequence[Image.Image]], generator: torch.Generator
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Tokens of every photo's fixed copies, encoded once; returns a sampler of two copies per identity."""
    tokens = identity_tokens(backbone, portraits, generator)
    n_views = tokens.shape[1]

    def pairs(who: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = two_views(n_views, len(who), generator)
        return tokens[who, first], tokens[who, second]

    return pairs


@torch.no_grad()
def _fresh_pair(
    backbone: Backbone, portraits: Sequence[Sequence[Image.Image]], who: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per identity: a new mild view of one photo and another photo as drawn, encoded now."""
    first, second = two_views(len(portraits[0]), len(who), generator)
    changed = backbone.augmented_inputs(
        [portraits[i][v] for i, v in zip(who.tolist(), first.tolist(), strict=True)], MILD_VIEWS, generator
    )
    drawn = backbone.pixel_values([portraits[i][v] for i, v in zip(who.tolist(), second.tolist(), strict=True)])
    return backbone.visual_tokens(changed).float(), backbone.visual_tokens(drawn).float()
