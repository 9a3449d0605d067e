"""Visual token encoder E(z) = z + W2 GELU(W1 LN(z)), zero-initialised so it starts as the identity."""

from __future__ import annotations

import torch
from torch import nn


class TokenEncoder(nn.Module):
    """Token-wise residual MLP, plus an optional learned offset per token position (zero-initialised)."""

    def __init__(self, hidden_size: int, width: int = 256, n_tokens: int = 0) -> None:
        super().__init__()
        self.position_offset = nn.Parameter(torch.zeros(n_tokens, hidden_size)) if n_tokens else None
        self.norm = nn.LayerNorm(hidden_size)
        self.fc1 = nn.Linear(hidden_size, width)
        self.fc2 = nn.Linear(width, hidden_size)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = z + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(z))))
        if self.position_offset is not None and z.shape[-2] == self.position_offset.shape[0]:
            out = out + self.position_offset
        return out
