"""How well identity embeddings identify: a new photo against every person's other photos."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def identification_recall(embeddings: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """[people, views, dim]: share whose last view ranks their own prototype (mean of the rest) in the top k."""
    prototypes = F.normalize(embeddings[:, :-1].mean(1), dim=-1)
    similarity = embeddings[:, -1] @ prototypes.T
    rank = (similarity > similarity.diag()[:, None]).sum(1)
    return {f"recall_at_{k}": round(float((rank < k).float().mean()), 4) for k in ks}
