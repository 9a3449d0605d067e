"""Attention-guided visual token selection: which k tokens the encoder rewrites."""

from __future__ import annotations

import torch


def select_tokens(
    scores: torch.Tensor | None,
    n_tokens: int | torch.Tensor,
    rule: str,
    share: float,
    batch: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean mask [batch, n]: per row the k = round(share * n_row) lowest/highest/random-scored tokens, or all.

    `n_tokens` is one count for every row, or per row (images of different sizes: rows padded at the end to the
    largest, padding never selected).
    """
    counts = torch.as_tensor(n_tokens).expand(batch).long().cpu()
    width = int(counts.max())
    valid = torch.arange(width)[None, :] < counts[:, None]
    k = (share * counts).round().long().clamp(min=1).minimum(counts)
    if rule == "all" or bool((k == counts).all()):
        return valid
    if rule == "random":
        keys = torch.rand(batch, width, generator=generator)
    else:
        if scores is None:
            raise ValueError(f"token rule {rule!r} needs attention scores")
        keys = scores.detach().float().cpu() if rule == "lowest" else -scores.detach().float().cpu()
    keys = keys.masked_fill(~valid, float("inf"))
    rank = keys.argsort(dim=1).argsort(dim=1)  # each token's place in its row's order, lowest key first
    return rank < k[:, None]


def apply_encoder(encoder: torch.nn.Module, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Overwrite the selected tokens in place with E(z); all other tokens pass through untouched.

    E keeps its own dtype (fp32 weights beside a bf16 model): tokens go in as its dtype and come back as theirs."""
    dtype = next(encoder.parameters()).dtype
    return torch.where(mask.to(z.device)[..., None], encoder(z.to(dtype)).to(z.dtype), z)
