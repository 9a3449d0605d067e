"""Identity embeddings: one shared map from the visual tokens the gate reads to a unit vector per person, across
photos."""

from unlearning.identity.config import GATE_TOKENS, IdentityConfig
from unlearning.identity.encoder import IdentityEncoder
from unlearning.identity.evaluation import identification_recall
from unlearning.identity.store import (
    IDENTITY_FILE,
    TOWER_HEAD_FILE,
    identity_digest,
    load_identity_encoder,
    save_identity_encoder,
)
from unlearning.identity.trainer import train_identity_encoder

__all__ = [
    "GATE_TOKENS",
    "IDENTITY_FILE",
    "TOWER_HEAD_FILE",
    "IdentityConfig",
    "IdentityEncoder",
    "identification_recall",
    "identity_digest",
    "load_identity_encoder",
    "save_identity_encoder",
    "train_identity_encoder",
]
