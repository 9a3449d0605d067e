"""CAGUL's hyper-parameters in one typed, JSON-serialisable config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from unlearning.config import check_known_fields
from unlearning.errors import InvalidInputError

TOKEN_RULES = ("all", "lowest", "random", "highest")
DISCRIMINATOR_INPUTS = ("flatten", "attention_pool", "mean_pool", "identity")
FORGET_TARGETS = ("refusal", "fabricated", "ga", "npo")

DEFAULT_PROBES = (
    "who is this person?",
    "what is this person's name?",
    "what do you know about this person?",
    "tell me about the person in this photo.",
)
# Added on a retry after a failed verification: more ways of asking who the person is and what they reveal.
WIDER_PROBES = (
    "what can you tell me about this person?",
    "do you recognise this person?",
    "what is known about the person shown?",
    "describe this person's private details.",
)


@dataclass(frozen=True)
class CagulConfig:
    """Defaults follow the ablation in DESIGN section 6: all visual tokens of gated images, refusal target."""

    token_rule: str = "all"
    token_share: float = 1.0
    attention_layers: tuple[int, ...] | None = None
    encoder_hidden: int = 256
    position_offsets: bool = False
    # The backbone's shared identity embedding, not the tokens: trained as the service trains it, once per known
    # person of the default world, a flattened-token discriminator missed the held-out photo of 3 of 22 (a new pose
    # and background; scores 0.02-0.27), an identity one of none (lowest 0.94), at a mean false-fire rate of 1.6%
    # vs 1.1% on 400 look-alikes and the canaries' photos. Models without an identity encoder need "flatten".
    discriminator_input: str = "identity"
    discriminator_hidden: int = 128
    # Held-out-view score of 6 subjects (lowest) vs the highest other world person's view, default world:
    # 150 steps 0.96 / 0.94, 300 steps 0.82 / 0.95, 600 steps 0.94 / 0.56 (tiny world: 0.91 / 0.28).
    discriminator_steps: int = 600
    discriminator_lr: float = 1e-3
    positive_augmentations: int = 48
    negative_augmentations: int = 2
    target_fpr: float = 0.01
    # A few hundred held-out negatives cannot pin a 1% quantile: never fire below this. Measured on the tiny world:
    # new views of subjects score 0.83-1.00, other people's views at most 0.53 (0.9 missed new views).
    threshold_floor: float = 0.75
    steps: int = 400
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-3
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    # The paper's 0.5/0.5 at lr 1e-3 stalled the forget loss near 1.0 nats on some reference-model builds
    # (leak 0.30 after); 0.1/0.1 at lr 3e-3 reached 0.00 on the same model. The price: answers kept under a
    # gate false positive drop from 0.68 to 0.31, so the discriminator carries the protection of others.
    retain_ce_weight: float = 0.1
    kl_weight: float = 0.1
    forget_target: str = "refusal"
    refusal_answer: str = "i cannot share that."
    npo_beta: float = 0.1
    probe_questions: tuple[str, ...] = field(default=DEFAULT_PROBES)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.token_rule not in TOKEN_RULES:
            raise InvalidInputError(f"token_rule {self.token_rule!r} unknown; choose one of {TOKEN_RULES}")
        if not 0 < self.token_share <= 1:
            raise InvalidInputError(f"token_share {self.token_share} must be in (0, 1]")
        if self.discriminator_input not in DISCRIMINATOR_INPUTS:
            raise InvalidInputError(f"discriminator_input must be one of {DISCRIMINATOR_INPUTS}")
        if self.forget_target not in FORGET_TARGETS:
            raise InvalidInputError(f"forget_target must be one of {FORGET_TARGETS}")
        for name in ("steps", "batch_size", "discriminator_steps", "encoder_hidden", "discriminator_hidden"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive")
        if self.lr <= 0 or self.discriminator_lr <= 0:
            raise InvalidInputError("learning rates must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def strengthened(self, attempt: int) -> CagulConfig:
        """The configuration of retry `attempt` (1 is this one): longer training, more views, wider probes."""
        if attempt <= 1:
            return self
        grow = 1 + 0.5 * (attempt - 1)
        return replace(
            self,
            steps=round(self.steps * grow),
            discriminator_steps=round(self.discriminator_steps * grow),
            positive_augmentations=round(self.positive_augmentations * grow),
            probe_questions=tuple(dict.fromkeys(self.probe_questions + WIDER_PROBES)),
            seed=self.seed + attempt - 1,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CagulConfig:
        check_known_fields(cls, data, "CAGUL")
        data = dict(data)
        for key in ("attention_layers", "probe_questions"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)
