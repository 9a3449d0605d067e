"""CAGUL: cross-modal attention guided unlearning with an external discriminator and token encoder."""

from unlearning.cagul.config import CagulConfig
from unlearning.cagul.discriminator import Discriminator, StackedDiscriminators
from unlearning.cagul.encoder import TokenEncoder
from unlearning.cagul.gate import CagulGate, GateAnswer
from unlearning.cagul.module import CagulModule
from unlearning.cagul.selection import apply_encoder, select_tokens
from unlearning.cagul.trainer import CagulTrainer, TrainingCancelled, TrainReport

__all__ = [
    "CagulConfig",
    "CagulGate",
    "CagulModule",
    "CagulTrainer",
    "Discriminator",
    "GateAnswer",
    "StackedDiscriminators",
    "TokenEncoder",
    "TrainReport",
    "TrainingCancelled",
    "apply_encoder",
    "select_tokens",
]
