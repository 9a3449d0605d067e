"""How the shared identity encoder is shaped and trained, in one typed config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from unlearning.config import check_known_fields
from unlearning.errors import InvalidInputError


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

    def __post_init__(self) -> None:
        for name in ("identities", "width", "dim", "steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"identity {name} must be positive")
        if self.views < 2:
            raise InvalidInputError("identity views must be at least 2: positives are two photos of one person")
        if self.batch_size > self.identities:
            raise InvalidInputError("identity batch_size cannot exceed the number of identities")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdentityConfig:
        check_known_fields(cls, data, "identity")
        return cls(**data)
