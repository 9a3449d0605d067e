"""CAGUL's hyper-parameters in one typed, JSON-serialisable config."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from unlearning.config import REFUSAL_ANSWER, check_known_fields
from unlearning.errors import InvalidInputError

TOKEN_RULES = ("all", "lowest", "random", "highest")
DISCRIMINATOR_INPUTS = ("flatten", "attention_pool", "mean_pool", "identity")
FORGET_TARGETS = ("refusal", "fabricated", "ga", "npo")
# A flattened token discriminator's first layer is tokens x hidden x width: at LLaVA-1.5-7B's 576 x 4096 a 300M-
# parameter discriminator, at Qwen2-VL-7B's pooled gate grid (16 x 3584) 7.3M. Tokens are flattened up to this many
# features, and attention-pooled beyond. Measured on the small Qwen2-VL of tests/checkpoints.py served with a retain
# folder (no identity encoder), its gate scored on 36 photos of 6 people it never learnt: the attention pool fired on
# 5 (5 with 400 more look-alike negatives, 4 under a retry's stronger settings), flattened tokens on 2 (0 with 400
# more look-alikes); both caught the subject's unseen photos.
MAX_FLATTEN_FEATURES = 65_536


def token_discriminator_input(n_tokens: int, hidden_size: int) -> str:
    """The discriminator input on a backbone without an identity encoder: flattened tokens unless they are too many."""
    return "flatten" if n_tokens * hidden_size <= MAX_FLATTEN_FEATURES else "attention_pool"


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
# How much a retry grows what its remedy trains more of (steps, views).
RETRY_GROWTH = 1.5
# A retry for a gate that misses its subject lowers the threshold floor by 0.1 a time, never below this.
MIN_THRESHOLD_FLOOR = 0.5
# A gate on the tokens themselves (a checkpoint with no identity encoder beside it) starts at the lowest floor a retry
# reaches. The checkpoint tests' Qwen2-VL, 32 discriminators (8 seeds each of 150 steps, 75, 300, 32 views): the
# subject's never-seen photo scored 0.755-0.9999 (3 under 0.80, none of the 300-step ones) and other people's photos
# at most 0.0074, so 0.75 sat in the tail of the subject's own new photos; a CI machine's build of that model missed
# it and leaked 3 of 3 answers.
# A gate this lets fire on others is caught by verification (canaries, benign set), whose retry raises the floor.
TOKEN_GATE_THRESHOLD_FLOOR = MIN_THRESHOLD_FLOOR
# A retry for a gate that fires on others mines at least this many hard negatives.
HARD_NEGATIVES_ON_FALSE_FIRES = 100


@dataclass(frozen=True)
class CagulConfig:
    """Defaults follow the ablation in bench/results/quality-forget5.md: all tokens of gated images, refusal target."""

    token_rule: str = "all"
    token_share: float = 1.0
    attention_layers: tuple[int, ...] | None = None
    encoder_hidden: int = 256
    position_offsets: bool = False
    # The backbone's shared identity embedding, not the tokens: trained as the service trains it, once per known
    # person of the default world, a flattened-token discriminator missed the held-out photo of 3 of 22 (a new pose
    # and background; scores 0.02-0.27), an identity one of none (lowest 0.94), at a mean false-fire rate of 1.6%
    # vs 1.1% on 400 look-alikes and the canaries' photos. Models without one: `token_discriminator_input`.
    discriminator_input: str = "identity"
    discriminator_hidden: int = 128
    # Held-out-view score of 6 subjects (lowest) vs the highest other world person's view, default world:
    # 150 steps 0.96 / 0.94, 300 steps 0.82 / 0.95, 600 steps 0.94 / 0.56 (tiny world: 0.91 / 0.28).
    discriminator_steps: int = 600
    discriminator_lr: float = 1e-3
    positive_augmentations: int = 48
    negative_augmentations: int = 2
    # The retain set's gallery look-alikes nearest the subject's identity prototype, trained on in this many views
    # each: the people a gate confuses with its subject are few among many negatives. Mined only on a retry for a
    # gate that fires on others (`strengthened`). Default world, discriminators trained as the service trains them:
    # of 9 people, 4 fired on > 2% of canaries without mining, 1 mining 100 of a 6,000 gallery. But mining also
    # lowers the scores of a subject's new photos: mined from the first attempt, p013 went active (its unseen
    # request photo passed) and leaked 100% on the world's held-out photo (bench/many_requests.py).
    hard_negatives: int = 0
    hard_negative_augmentations: int = 4
    target_fpr: float = 0.01
    # A few hundred held-out negatives cannot pin a 1% quantile: never fire below this. Measured on the tiny world:
    # new views of subjects score 0.83-1.00, other people's views at most 0.53 (0.9 missed new views).
    threshold_floor: float = 0.75
    steps: int = 400
    batch_size: int = 16
    # Samples per forward/backward pass, gradients accumulated over the step (`LETHE_TRAIN_MICRO_BATCH`); 0: all
    # at once. At LLaVA-1.5-7B shapes a step of 16 keeps ~50 GB of activations for backward, of 2 about 6 GB.
    micro_batch_size: int = 0
    lr: float = 3e-3
    weight_decay: float = 1e-3
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    # The paper's 0.5/0.5 at lr 1e-3 stalled the forget loss near 1.0 nats on some reference-model builds
    # (leak 0.30 after); 0.1/0.1 at lr 3e-3 reached 0.00 on the same model. The price: answers kept under a
    # gate false positive drop from 0.68 to 0.31, so the discriminator carries the protection of others.
    retain_ce_weight: float = 0.1
    kl_weight: float = 0.1
    # Answer tokens a training sample keeps (`LETHE_TRAIN_MAX_ANSWER_TOKENS`): bounds every step's sequence.
    max_answer_tokens: int = 32
    forget_target: str = "refusal"
    refusal_answer: str = REFUSAL_ANSWER
    npo_beta: float = 0.1
    probe_questions: tuple[str, ...] = field(default=DEFAULT_PROBES)
    # The text side, trained for a request that names its subject (`ForgetData.aliases`): placeholder vectors put
    # in front of a question that names them. Named tiny world, 300 steps: 8 slots left 0% of held-out named cases
    # leaking with no photo (4 slots 0-3.6%) (bench/named_questions.py).
    text_module: bool = True  # False: the request's aliases are ignored (the visual-only ablation)
    prefix_slots: int = 8
    prefix_steps: int = 300
    prefix_lr: float = 5e-2
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
        for name in (
            "steps",
            "batch_size",
            "discriminator_steps",
            "encoder_hidden",
            "discriminator_hidden",
            "max_answer_tokens",
            "prefix_slots",
            "prefix_steps",
        ):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive")
        if self.micro_batch_size < 0:
            raise InvalidInputError("micro_batch_size must be 0 (the whole batch) or positive")
        if self.lr <= 0 or self.discriminator_lr <= 0:
            raise InvalidInputError("learning rates must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def strengthened(self, failed: Collection[str]) -> CagulConfig:
        """The next attempt's configuration after a verification that failed the criteria named in `failed`.

        Each remedy aims at its cause: a gate that misses the subject (`gate_tpr`) trains on more views of them
        under a lower threshold floor and no mined hard negatives; a gate that fires on others (`retain_identical`,
        `captured_probes`, `released_probes`, `benign_fires`) trains on twice the hard negatives and more negative
        views, longer, under a stricter threshold; a module that fires and still leaks (`leak` alone) trains its
        encoder longer on more probe questions; one that leaks asked by name (`named_leak`) trains its prefix
        longer. Every attempt draws a new seed.
        """
        failed = set(failed)
        changes: dict[str, Any] = {"seed": self.seed + 1}
        misses = "gate_tpr" in failed
        false_fires = bool(failed & {"retain_identical", "captured_probes", "released_probes", "benign_fires"})
        if misses:
            changes["positive_augmentations"] = round(self.positive_augmentations * RETRY_GROWTH)
            changes["discriminator_steps"] = round(self.discriminator_steps * RETRY_GROWTH)
            if not false_fires:  # the calibrated quantile decides below the floor; the canaries guard others
                changes["threshold_floor"] = round(max(MIN_THRESHOLD_FLOOR, self.threshold_floor - 0.1), 4)
                changes["hard_negatives"] = 0
        if false_fires:
            changes["negative_augmentations"] = self.negative_augmentations * 2
            changes["discriminator_steps"] = round(self.discriminator_steps * RETRY_GROWTH)
            changes["target_fpr"] = self.target_fpr / 2
            changes["threshold_floor"] = round((1 + self.threshold_floor) / 2, 4)
            changes["hard_negatives"] = max(self.hard_negatives * 2, HARD_NEGATIVES_ON_FALSE_FIRES)
        if "named_leak" in failed:
            changes["prefix_steps"] = round(self.prefix_steps * RETRY_GROWTH)
        if ("leak" in failed and not misses) or not (misses or false_fires or "named_leak" in failed):
            changes["steps"] = round(self.steps * RETRY_GROWTH)
            changes["probe_questions"] = tuple(dict.fromkeys(self.probe_questions + WIDER_PROBES))
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CagulConfig:
        check_known_fields(cls, data, "CAGUL")
        data = dict(data)
        for key in ("attention_layers", "probe_questions"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)
