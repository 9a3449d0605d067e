"""ORM model of a withdrawn certificate: one row each time a certified module stops being served."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, utcnow


class CertificateRevocation(Base):
    __tablename__ = "certificate_revocations"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id", ondelete="CASCADE"), index=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id"), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    revoked_at: Mapped[datetime] = mapped_column(default=utcnow)
