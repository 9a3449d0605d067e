"""All SQL about the audit log: append and read, nothing else."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.audit.models import ACTOR_LENGTH, AuditEvent
from core.db import paginate


def fitted_actor(actor: str) -> str:
    """`actor` within the column: a longer one (a worker's long host name) keeps its start and a hash of the whole."""
    if len(actor) <= ACTOR_LENGTH:
        return actor
    digest = hashlib.sha256(actor.encode()).hexdigest()[:16]
    return f"{actor[: ACTOR_LENGTH - len(digest) - 1]}~{digest}"


class AuditRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def record(self, actor: str, action: str, target: str | None = None, **detail: Any) -> None:
        self.session.add(AuditEvent(actor=fitted_actor(actor), action=action, target=target, detail=detail))
        self.session.flush()

    def page(self, *, limit: int, offset: int, target: str | None = None) -> tuple[list[AuditEvent], int]:
        query = select(AuditEvent).order_by(AuditEvent.id.desc())
        if target is not None:
            query = query.where(AuditEvent.target == target)
        return paginate(self.session, query, limit, offset)
