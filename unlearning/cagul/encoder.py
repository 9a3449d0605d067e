"""Visual token encoder E(z) = z + W2 GELU(W1 LN(z)), zero-initialised so it starts as the identity."""

from __future__ import annotations

import torch
from torch import nn


class TokenEncoder(nn.Module):
    def __init__(self, hidden_size: int, width: int = 256) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.fc1 = nn.Linear(hidden_size, width)
        self.fc2 = nn.Linear(width, hidden_size)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(z))))
