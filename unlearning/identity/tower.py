"""Pre-train a vision tower as face-recognition towers are trained: contrastively, on many drawn people."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from unlearning.augment import MILD_VIEWS, augment
from unlearning.identity.config import TowerConfig
from unlearning.identity.trainer import two_views
from unlearning.progress import ProgressFn


def pretrain_vision_tower(
    tower: nn.Module,
    photos: np.ndarray,
    mean: list[float] | tuple[float, ...],
    std: list[float] | tuple[float, ...],
    config: TowerConfig,
    autocast: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, float]:
    """Symmetric InfoNCE on the tower's patch tokens: a photo (mildly changed) against another of the same person.

    `tower`: a CLIP-style vision model (`last_hidden_state`, class token first); `photos`: uint8 [identities,
    views, H, W, 3]. The projection head is thrown away, as CLIP's is when a VLM is built on its tower.
    """
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    n_ids, n_views = photos.shape[:2]
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)

    def pixels(who: np.ndarray, view: torch.Tensor) -> torch.Tensor:
        x = torch.from_numpy(photos[who, view.numpy()]).permute(0, 3, 1, 2).float().div(255)
        return (x - m) / s

    with torch.no_grad():
        tokens = tower(pixel_values=pixels(np.zeros(1, dtype=int), torch.zeros(1, dtype=torch.long)))
    n_tokens, hidden = tokens.last_hidden_state[:, 1:].shape[1:]
    head = nn.Sequential(nn.Linear(n_tokens * hidden, config.width), nn.GELU(), nn.Linear(config.width, 128))

    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            h = tower(pixel_values=x).last_hidden_state[:, 1:]
            h = F.layer_norm(h.float(), h.shape[-1:])
            return F.normalize(head(h.flatten(1)).float(), dim=-1)

    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-2)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, config.steps // 10), config.steps)
    labels = torch.arange(config.batch_size)
    tower.train()
    loss_value = float("nan")
    for step in range(config.steps):
        who = torch.randperm(n_ids, generator=generator)[: config.batch_size].numpy()
        first, second = two_views(n_views, config.batch_size, generator)
        changed = augment(pixels(who, first), mean, std, MILD_VIEWS, generator)
        logits = embed(changed) @ embed(pixels(who, second)).T / config.temperature
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        if progress is not None:
            progress("tower", step + 1, config.steps, loss_value)
    tower.eval()
    return {"final_loss": round(loss_value, 4)}
