"""How the shared identity encoder is shaped and trained, in one typed config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from unlearning.config import check_known_fields
from unlearning.errors import InvalidInputError

AUGMENTATIONS = ("fixed", "fresh")
# What the identity encoder (and so the whole gate) reads: the projector's output, in the language model's space,
# or its input, the vision tower's own patch tokens (families that expose them: `Backbone.gate_shapes`).
GATE_TOKENS = ("projected", "tower")
# Where the encoder starts: fresh weights, or the projection head of the vision tower's own contrastive pre-training
# (`TowerConfig`), which reads the tower's tokens and is `TOWER_HEAD_DIM` wide.
INITS = ("random", "tower_head")
TOWER_HEAD_DIM = 128


@dataclass(frozen=True)
class IdentityConfig:
    """Contrastive pre-training on many drawn identities, none of them a person of the world."""

    identities: int = 1000
    views: int = 5
    width: int = 512
    dim: int = 128
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    temperature: float = 0.07
    seed: int = 0
    # "fixed": each photo as drawn, once strongly and once mildly changed, encoded once before training. "fresh":
    # each step a new mild view of one photo against another photo as drawn, as the vision tower is pre-trained.
    augmentation: str = "fixed"
    # As `TowerConfig.margin`: taken off each positive pair's cosine (0 unless set, so fingerprints are kept).
    margin: float = 0.0
    # The projector is trained on a world's 22 people and may drop what tells strangers apart. On the scale world, TPR
    # at 1% false fires among 1,000 / 10,000 enrolled: projected tokens, fixed views 0.807 / 0.350; fresh views (batch
    # 512) 0.921 / 0.557; the tower's tokens with them 0.975 / 0.803 (docs/scale.md): both changes count.
    tokens: str = "projected"
    # "tower_head": on the scale world the tower's head found the held-out photo among 10,000 enrolled at 1% false
    # fires for 0.953 of people, an encoder trained after it on the frozen tower's tokens for 0.934 (docs/scale.md).
    # `steps` then fine-tunes it; 0 keeps it as pre-trained.
    init: str = "random"

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise InvalidInputError("identity margin must be in [0, 1): it is taken off a cosine")
        if self.init not in INITS:
            raise InvalidInputError(f"identity init must be one of {INITS}")
        if self.init == "tower_head" and (self.tokens != "tower" or self.dim != TOWER_HEAD_DIM):
            raise InvalidInputError(f"the tower's head reads the tower's tokens into {TOWER_HEAD_DIM} dimensions")
        if self.steps < 0 or (self.steps == 0 and self.init == "random"):
            raise InvalidInputError("identity steps must be positive (0 only to keep the tower's head as it is)")
        if self.tokens not in GATE_TOKENS:
            raise InvalidInputError(f"identity tokens must be one of {GATE_TOKENS}")
        if self.augmentation not in AUGMENTATIONS:
            raise InvalidInputError(f"identity augmentation must be one of {AUGMENTATIONS}")
        for name in ("identities", "width", "dim", "batch_size"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"identity {name} must be positive")
        if self.views < 2:
            raise InvalidInputError("identity views must be at least 2: positives are two photos of one person")
        if self.batch_size > self.identities:
            raise InvalidInputError("identity batch_size cannot exceed the number of identities")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name, default in (("augmentation", "fixed"), ("margin", 0.0), ("tokens", "projected"), ("init", "random")):
            if data[name] == default:  # added later: configs from before keep their fingerprint
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdentityConfig:
        check_known_fields(cls, data, "identity")
        return cls(**data)


@dataclass(frozen=True)
class TowerConfig:
    """Contrastive pre-training of the vision tower itself, before the VLM trains on it with the tower frozen.

    As real VLMs start from a face-separating CLIP tower. 0 identities: the tower trains with the VLM only, on the
    world's people, and keeps little that tells apart people it never saw (measured in docs/scale.md).
    """

    identities: int = 0
    views: int = 6
    steps: int = 1200
    batch_size: int = 512
    width: int = 512
    lr: float = 1e-3
    temperature: float = 0.07
    seed: int = 2  # identity pre-training draws with seed 0 and its check with 1: other people
    # Subtracted from each positive pair's cosine (as CosFace does for its classes): one person's photos must be
    # nearer each other by this much than to anyone else's, whatever the number of identities. 0.2 on the scale
    # world lifted TPR at 1% false fires from 0.461 to 0.599 among 10,000 enrolled (docs/scale.md).
    margin: float = 0.0
    # Batches drawn in groups of this many people nearest each other under the tower as it is (0: at random),
    # refreshed every `hard_refresh` steps: look-alikes must meet in a batch for the loss to tell them apart.
    hard_group: int = 0
    hard_refresh: int = 200

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise InvalidInputError("tower margin must be in [0, 1): it is taken off a cosine")
        if self.hard_group < 0 or self.hard_group == 1 or self.hard_refresh <= 0:
            raise InvalidInputError("tower hard_group must be 0 (random batches) or at least 2; hard_refresh positive")
        if self.identities < 0:
            raise InvalidInputError("tower identities must be 0 (no pre-training) or positive")
        if self.identities and self.views < 2:
            raise InvalidInputError("tower views must be at least 2: positives are two photos of one person")
        if self.identities and not 0 < self.batch_size <= self.identities:
            raise InvalidInputError("tower batch_size must be positive and at most the number of identities")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name, default in (("margin", 0.0), ("hard_group", 0), ("hard_refresh", 200)):
            if data[name] == default:  # added later: configs from before keep their fingerprint
                del data[name]
        return data
