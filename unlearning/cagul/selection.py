"""Attention-guided visual token selection: which k tokens the encoder rewrites."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from unlearning.backbones import Backbone, VLMBatch
    from unlearning.cagul.config import CagulConfig


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


def encoder_rewrite(
    encoder: torch.nn.Module,
    backbone: Backbone,
    config: CagulConfig,
    batch: VLMBatch,
    generator: torch.Generator | None,
    attention_batch: VLMBatch | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The visual-token rewrite `config` asks for on `batch`: its chosen tokens through `encoder`, the rest kept.

    Attention scores, when the rule needs them, are read on `attention_batch` (training masks the answer out)."""
    scores = None
    if config.token_rule in ("lowest", "highest") and config.token_share < 1:
        scores = backbone.attention_scores(attention_batch or batch, config.attention_layers)
    counts = backbone.visual_counts(batch)
    mask = select_tokens(scores, counts, config.token_rule, config.token_share, batch.input_ids.shape[0], generator)
    return lambda z: apply_encoder(encoder, z, mask)
