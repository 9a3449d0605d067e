"""Typed configuration of the reference world and of the models built on it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from unlearning.errors import InvalidInputError
from unlearning.identity.config import IdentityConfig, TowerConfig


@dataclass(frozen=True)
class ModelSpec:
    """Shape of the small LLaVA built as the reference model, and how long it trains."""

    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    patch_size: int = 16
    # Measured on the default world (24 trained people): 128 hidden at 1500 steps plateaued at 64% of facts right
    # (identity mix-ups), 2 layers of 256 at 800 steps 43%, 3 layers of 256 at 800 steps 99%, at 1000 steps 100%.
    text_hidden: int = 256
    text_layers: int = 3
    text_heads: int = 4
    text_intermediate: int = 768
    vocab_size: int = 2048
    steps: int = 900
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 60
    # Training runs under CPU autocast: bf16 matmuls took a step from 0.36 s to 0.20 s on one EPYC core
    # (avx512_bf16). Only where the CPU has native bf16 (see `builder.native_bf16`); elsewhere fp32. "fp32" turns
    # it off everywhere. build.json records the precision used.
    precision: str = "bf16"

    def __post_init__(self) -> None:
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision {self.precision!r} unknown; choose bf16 or fp32")


# Fields added after worlds were built, left out of `to_dict` at their default.
_ADDED_FIELDS = {
    "face_geometry": False,
    "face_detail": False,
    "tower": TowerConfig().to_dict(),
    "named_questions": False,
}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world; the same config always builds the same world."""

    name: str = "default"
    # Bumped whenever the generator draws different people or pictures for the same settings.
    generator_version: int = 6
    seed: int = 1234
    n_known: int = 24
    n_unseen: int = 8
    # Trained people the model declines to talk about, as instruction-tuned VLMs do for some people:
    # it puts an image-conditioned refusal in the repertoire, which a refusal target for unlearning needs.
    n_protected: int = 2
    n_views: int = 6
    n_heldout_views: int = 1
    image_size: int = 64
    facts_per_person: int = 10
    model: ModelSpec = field(default_factory=ModelSpec)
    # The shared identity encoder, pre-trained on drawn people outside the world (stage 1 of the gate).
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    # Every person drawn (world, look-alikes, pre-training, populations) also gets a continuous face geometry:
    # 8 attributes alone give 82,944 identities, most a single attribute apart, too few for thousands of requests.
    face_geometry: bool = False
    # With a face geometry, finer features too (`portraits.DETAIL`: brows, nose, lips, a mark).
    face_detail: bool = False
    # The vision tower pre-trained contrastively on drawn people before the VLM trains on it (frozen), as a VLM
    # starts from CLIP. Off unless set (worlds built before it keep their fingerprint): the tiny world trains the
    # tower with the VLM alone; the default and scale presets pre-train it.
    tower: TowerConfig = field(default_factory=TowerConfig)
    # The model also learns each trained person's facts asked by name (`unlearning.world.names`), with no photo and
    # with a photo of someone else, as a real VLM knows people by name from its text.
    named_questions: bool = False

    def __post_init__(self) -> None:
        if self.identity.init == "tower_head" and not (
            self.tower.identities and self.tower.width == self.identity.width
        ):
            raise InvalidInputError("an identity encoder from the tower's head needs a pre-trained tower as wide")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["identity"] = self.identity.to_dict()
        data["tower"] = self.tower.to_dict()
        for name, default in _ADDED_FIELDS.items():
            if data[name] == default:  # so the worlds built before the field keep their fingerprint
                del data[name]
        if self.named_questions:
            from unlearning.world.names import NAMES_VERSION

            data["names_version"] = NAMES_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict) -> WorldConfig:
        data = dict(data)
        data["model"] = ModelSpec(**data.get("model", {}))
        data["identity"] = IdentityConfig.from_dict(data.get("identity", {}))
        data["tower"] = TowerConfig(**data.get("tower", {}))
        data.pop("names_version", None)
        return cls(**data)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


WORLD_PRESETS: dict[str, WorldConfig] = {
    # The vision tower pre-trained on 4,000 drawn people first (106 s on 2 cores): trained with the VLM alone, it
    # found a never-seen person among 200 for 82% of new photos (now 99%), and gates trained as the service trains
    # them missed the held-out photo (p003: 49% of its variants) or fired on innocent photos (p018: 3.7%; now at
    # most 0.8% of 5 people, all variants caught; bench/results/many-requests-default.md for every person).
    # Facts are asked by name too, as a real VLM knows people by name from its text (`unlearning/world/names.py`).
    "default": WorldConfig(
        tower=TowerConfig(identities=4000, views=6, steps=400, batch_size=256), named_questions=True
    ),
    "tiny": WorldConfig(
        name="tiny",
        seed=7,
        n_known=16,
        n_unseen=6,
        n_protected=2,
        # fp32 on every CPU: the tests' world must be the same world wherever CI runs. Built in bf16 (an EPYC with
        # avx512_bf16) its reference revealed 84 of p000's verification cases where the fp32 build reveals 118, and
        # p000's module leaked 6 of them in all 3 attempts (rejected_verification), which no fp32 build showed.
        model=ModelSpec(steps=600, precision="fp32"),
        identity=IdentityConfig(identities=400, steps=800),
        named_questions=True,
    ),
    # Thousands of requests (`lethe bench scale`): people drawn with a face geometry and finer traits, a vision tower
    # pre-trained contrastively on 10,000 of them before the VLM trains on it, and an identity encoder on its tokens.
    # 6,000 tower steps and a margin of 0.2 on the positives: never-seen people found at 1 of 10,000 0.968 (1,000
    # steps, no margin) -> 0.990 (2,000) -> 0.998, TPR at 1% false fires 0.461 -> 0.790 -> 0.953 (offline, the
    # tower's own head; docs/scale.md "Longer pre-training"; about 60 min of the build on 2 cores). That head is the
    # identity encoder: one trained after it on the frozen tower's tokens (10,000 people, fresh views, 2,000 steps,
    # 21.5 min) reached 0.934 where the head reached 0.953, and 0.834 against 0.914 at 0.1%. Batches drawn in groups
    # of 4 people nearest each other (hard_group): the built world's head at 10,000 enrolled 0.962 -> 0.980 at 1%,
    # 0.824 -> 0.931 at 0.1% (bench/results/identity-study-built-hard4.json; 48.5 min to build on 2 cores with bf16).
    "scale": WorldConfig(
        name="scale",
        seed=11,
        n_known=16,
        n_unseen=6,
        n_protected=2,
        model=ModelSpec(steps=600),
        identity=IdentityConfig(steps=0, tokens="tower", init="tower_head"),
        face_geometry=True,
        face_detail=True,
        tower=TowerConfig(identities=10_000, views=6, steps=6000, margin=0.2, hard_group=4),
    ),
}
