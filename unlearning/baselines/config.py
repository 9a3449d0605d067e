"""Fine-tuning baselines' hyper-parameters: one typed, JSON-serialisable config (LoRA via PEFT)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from unlearning.config import REFUSAL_ANSWER, check_known_fields
from unlearning.errors import InvalidInputError

BASELINE_METHODS = ("ga", "gd", "kl", "idk", "npo")
# The language model's projections only: the vision tower and projector stay as the reference built them.
DEFAULT_TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass(frozen=True)
class BaselineConfig:
    """GA, GD, KL, IDK and NPO as in open-unlearning: a forget loss plus (except GA) a retain loss."""

    method: str = "gd"
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: str = DEFAULT_TARGET_MODULES
    steps: int = 150
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    retain_weight: float = 1.0
    npo_beta: float = 0.1
    refusal_answer: str = REFUSAL_ANSWER
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in BASELINE_METHODS:
            raise InvalidInputError(f"method {self.method!r} unknown; choose one of {BASELINE_METHODS}")
        for name in ("lora_r", "lora_alpha", "steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive")
        if self.lr <= 0:
            raise InvalidInputError("lr must be positive")
        if self.retain_weight < 0:
            raise InvalidInputError("retain_weight must not be negative")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineConfig:
        check_known_fields(cls, data, "baseline")
        return cls(**data)
