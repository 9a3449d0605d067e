"""The shape of an API key token: `lethe_<12 hex prefix>_<secret>`; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "lethe"
TOKEN_FORMAT = f"{TOKEN_PREFIX}_<12 hex>_<secret of 16+ characters>"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return f"{TOKEN_PREFIX}_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def split_token(token: str) -> str | None:
    """The prefix of a well-formed token, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(parts[1]) != 12 or len(parts[2]) < 16:
        return None
    return parts[1]
