"""The identity encoder: the visual tokens the gate reads -> one unit-length embedding per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unlearning.freeze import freeze


class IdentityEncoder(nn.Module):
    """Layer-normed tokens, flattened, through a two-layer MLP; photos of one person land close together."""

    def __init__(self, n_tokens: int, hidden_size: int, width: int, dim: int, tokens: str = "projected") -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.hidden_size = hidden_size
        self.tokens = tokens  # which visual tokens it reads (`GATE_TOKENS`): a backbone serving it reads the same
        self.fc1 = nn.Linear(n_tokens * hidden_size, width)
        self.fc2 = nn.Linear(width, dim)

    @property
    def dim(self) -> int:
        return self.fc2.out_features

    def frozen(self) -> IdentityEncoder:
        """This encoder in eval mode with no gradients: how it is served and stored."""
        return freeze(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = F.layer_norm(z.float(), z.shape[-1:])
        # .float(): under bf16 autocast (the tower's pre-training, where this is its head) fc2 gives bf16.
        return F.normalize(self.fc2(F.gelu(self.fc1(z.flatten(1)))).float(), dim=-1)
