"""What every method's config shares: the default refusal, and refusing parameters it does not know."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from unlearning.errors import InvalidInputError

# What a module trains the model to answer about its subject by default: the refusal the reference world teaches.
REFUSAL_ANSWER = "i cannot share that."


def check_known_fields(cls: type, data: dict[str, Any], label: str) -> None:
    """Raise a typed error naming the unknown keys of `data` and the ones `cls` knows."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInputError(f"unknown {label} parameters {unknown}; known: {sorted(known)}")
