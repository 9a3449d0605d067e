"""A trained per-request CAGUL module: discriminator + threshold + token encoder + its config."""

from __future__ import annotations

from torch import nn

from unlearning.cagul.config import CagulConfig
from unlearning.cagul.discriminator import Discriminator
from unlearning.cagul.encoder import TokenEncoder


class CagulModule(nn.Module):
    def __init__(self, config: CagulConfig, n_tokens: int, hidden_size: int, identity_dim: int = 0) -> None:
        super().__init__()
        self.config = config
        self.n_tokens = n_tokens
        self.hidden_size = hidden_size
        self.identity_dim = identity_dim
        self.discriminator = Discriminator(
            n_tokens, hidden_size, config.discriminator_hidden, config.discriminator_input, identity_dim
        )
        self.encoder = TokenEncoder(hidden_size, config.encoder_hidden, n_tokens if config.position_offsets else 0)

    @property
    def threshold(self) -> float:
        return float(self.discriminator.threshold)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
