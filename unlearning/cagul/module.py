"""A trained per-request CAGUL module: discriminator + threshold + token encoder (+ the subject's names and a refusal
prefix for questions naming them) + its config."""

from __future__ import annotations

import torch
from torch import nn

from unlearning.cagul.config import CagulConfig
from unlearning.cagul.discriminator import Discriminator
from unlearning.cagul.encoder import TokenEncoder
from unlearning.cagul.prefix import RefusalPrefix

# Encoders are stored in bf16 (half the bytes; 4.1 MiB a module at LLaVA-1.5-7B shapes): answers under the
# transform were identical to fp32 weights in 264 of 264 cases (scale world's template module, every person and
# view). Discriminators stay fp32: their scores decide who is gated. Loading upcasts to the module's fp32.
ENCODER_DTYPE = torch.bfloat16


class CagulModule(nn.Module):
    def __init__(
        self,
        config: CagulConfig,
        n_tokens: int,
        hidden_size: int,
        identity_dim: int = 0,
        aliases: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.config = config
        self.n_tokens = n_tokens
        self.hidden_size = hidden_size
        self.identity_dim = identity_dim
        self.discriminator = Discriminator(
            n_tokens, hidden_size, config.discriminator_hidden, config.discriminator_input, identity_dim
        )
        self.encoder = TokenEncoder(hidden_size, config.encoder_hidden, n_tokens if config.position_offsets else 0)
        self.aliases = tuple(aliases)
        self.prefix = RefusalPrefix(config.prefix_slots, hidden_size, config.seed) if aliases else None

    @property
    def threshold(self) -> float:
        return float(self.discriminator.threshold)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class ModuleRewrite(nn.Module):
    """What a module changes once its gate claims an input, without the gate: the token encoder, and the refusal
    prefix of a module that knows its subject's names (what a server keeps only for the modules in use)."""

    def __init__(self, encoder: TokenEncoder, prefix: RefusalPrefix | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.prefix = prefix
