"""ORM models of API keys and of idempotency records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, new_id, utcnow

FORGET_WRITE, FORGET_READ, VQA, ADMIN = "forget:write", "forget:read", "vqa", "admin"
SCOPES = (FORGET_WRITE, FORGET_READ, VQA, ADMIN)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # The token is `lethe_<prefix>_<secret>`: the prefix finds the row, only the token's sha256 is kept.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(Text)
    scopes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class IdempotencyRecord(Base):
    """One `Idempotency-Key` of one API key: the body it came with and the request it created."""

    __tablename__ = "idempotency_records"

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
