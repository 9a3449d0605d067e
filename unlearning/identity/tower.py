"""Pre-train a vision tower as face-recognition towers are trained: contrastively, on many drawn people."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from unlearning.augment import MILD_VIEWS, augment
from unlearning.identity.config import TOWER_HEAD_DIM, TowerConfig
from unlearning.identity.encoder import IdentityEncoder
from unlearning.identity.trainer import batch_people, contrastive_loss, group_neighbours, two_views
from unlearning.progress import ProgressFn

# (identities, view indices, mildly changed) -> the tower's patch tokens [batch, tokens, hidden], with gradients.
TokensFn = Callable[[np.ndarray, torch.Tensor, bool], torch.Tensor]


def pretrain_vision_tower(
    tower: nn.Module,
    photos: np.ndarray,
    mean: list[float] | tuple[float, ...],
    std: list[float] | tuple[float, ...],
    config: TowerConfig,
    autocast: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, float], IdentityEncoder]:
    """Symmetric InfoNCE on a CLIP-style tower's patch tokens (`last_hidden_state`, class token first).

    `photos`: uint8 [identities, views, H, W, 3]. Returns the report and the projection head, an identity encoder on
    the tower's tokens: the VLM does not use it, the gate can (`IdentityConfig.init`), as face search uses CLIP's.
    """
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(config.seed)

    def tokens(who: np.ndarray, view: torch.Tensor, changed: bool) -> torch.Tensor:
        x = (torch.from_numpy(photos[who, view.numpy()]).permute(0, 3, 1, 2).float().div(255) - m) / s
        x = augment(x, mean, std, MILD_VIEWS, generator) if changed else x
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return tower(pixel_values=x).last_hidden_state[:, 1:]

    return pretrain_contrastively(tower, tokens, photos.shape[:2], config, generator, autocast, progress)


def pretrain_contrastively(
    tower: nn.Module,
    tokens: TokensFn,
    shape: tuple[int, int],
    config: TowerConfig,
    generator: torch.Generator,
    autocast: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, float], IdentityEncoder]:
    """Symmetric InfoNCE through a flattening head: a photo (mildly changed) against another of the same person,
    nearer by `config.margin` than any other person's.

    The extension point for other towers: `tokens` runs `tower` on drawn people's photos ([identities, views] as
    `shape`) however its model takes images; `generator` draws the batches and the changes.
    """
    torch.manual_seed(config.seed)
    n_ids, n_views = shape
    with torch.no_grad():
        n_tokens, hidden = tokens(np.zeros(1, dtype=int), torch.zeros(1, dtype=torch.long), False).shape[1:]
    head = IdentityEncoder(n_tokens, hidden, config.width, TOWER_HEAD_DIM, "tower")

    def embed(h: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return head(h)

    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-2)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, config.steps // 10), config.steps)
    tower.train()
    loss_value = float("nan")
    neighbours = None
    for step in range(config.steps):
        if config.hard_group and step % config.hard_refresh == 0:
            with torch.no_grad():
                people = [
                    embed(tokens(chunk, torch.zeros(len(chunk), dtype=torch.long), False)).float()
                    for chunk in np.array_split(np.arange(n_ids), max(1, n_ids // config.batch_size))
                ]
            neighbours = group_neighbours(torch.cat(people), config.hard_group)
        who = batch_people(neighbours, n_ids, config.batch_size, config.hard_group, generator).numpy()
        first, second = two_views(n_views, config.batch_size, generator)
        cosine = embed(tokens(who, first, True)) @ embed(tokens(who, second, False)).T
        loss = contrastive_loss(cosine, config.margin, config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        if progress is not None:
            progress("tower", step + 1, config.steps, loss_value)
    tower.eval()
    return {"final_loss": round(loss_value, 4)}, head.frozen()
