"""Pages of the audit log, newest first."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from core.audit.repository import AuditRepository
from core.db import transaction
from server.audit.schemas import AuditEventOut


class AuditService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def page(self, limit: int, offset: int, target: str | None) -> tuple[list[AuditEventOut], int]:
        with transaction(self.sessions) as session:
            items, total = AuditRepository(session).page(limit=limit, offset=offset, target=target)
            return [AuditEventOut.model_validate(e, from_attributes=True) for e in items], total
