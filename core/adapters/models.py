"""ORM models of a trained module and of the versioned active set the servers apply."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, new_id, utcnow


class AdapterState(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    INACTIVE = "inactive"
    REJECTED = "rejected"


STATES = tuple(str(s) for s in AdapterState)


class Adapter(Base):
    __tablename__ = "adapters"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id"), index=True)
    # Lineage: a retrained module for the same request is the next version and names the one it replaces.
    version: Mapped[int] = mapped_column(default=1)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("adapters.id"))
    method: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    base_fingerprint: Mapped[str] = mapped_column(String(64))
    trainable_params: Mapped[int]
    report: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None]
    deactivated_at: Mapped[datetime | None]


class AdapterSetVersion(Base):
    """Every change of the active set is a new version; servers report the version they served with."""

    __tablename__ = "adapter_set_versions"

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    adapter_ids: Mapped[list[Any]]
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
