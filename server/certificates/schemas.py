"""Response bodies of certificates and status answers: a signed document, as core.crypto signs it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class SignedOut(BaseModel):
    certificate: dict[str, Any]
    algorithm: str
    key_id: str
    signature: str
