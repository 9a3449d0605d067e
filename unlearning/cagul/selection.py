"""Attention-guided visual token selection: which k tokens the encoder rewrites."""

from __future__ import annotations

import torch


def select_tokens(
    scores: torch.Tensor | None,
    n_tokens: int,
    rule: str,
    share: float,
    batch: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean mask [batch, n_tokens]: the k = ceil(share * n) lowest/highest/random-scored tokens, or all."""
    k = max(1, min(n_tokens, round(share * n_tokens)))
    if rule == "all" or k == n_tokens:
        return torch.ones(batch, n_tokens, dtype=torch.bool)
    if rule == "random":
        keys = torch.rand(batch, n_tokens, generator=generator)
    else:
        if scores is None:
            raise ValueError(f"token rule {rule!r} needs attention scores")
        keys = scores.detach().float().cpu() if rule == "lowest" else -scores.detach().float().cpu()
    idx = keys.topk(k, dim=1, largest=False).indices
    mask = torch.zeros(batch, n_tokens, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask


def apply_encoder(encoder: torch.nn.Module, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Overwrite the selected tokens in place with E(z); all other tokens pass through untouched.

    E keeps its own dtype (fp32 weights beside a bf16 model): tokens go in as its dtype and come back as theirs."""
    dtype = next(encoder.parameters()).dtype
    return torch.where(mask.to(z.device)[..., None], encoder(z.to(dtype)).to(z.dtype), z)
