"""/v1/audit."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from core.keys.models import ADMIN
from server.audit.schemas import AuditEventOut
from server.audit.service import AuditService
from server.auth import require
from server.dependencies import audit_service
from server.schemas import ERROR_RESPONSES, Limit, Offset, Page

router = APIRouter(prefix="/v1", tags=["audit"], responses=ERROR_RESPONSES, dependencies=[Depends(require(ADMIN))])


@router.get("/audit", response_model=Page[AuditEventOut], summary="The append-only audit log, newest first")
def list_audit_events(
    service: Annotated[AuditService, Depends(audit_service)],
    limit: Limit = 20,
    offset: Offset = 0,
    # Printable characters only: a NUL byte is no id, and PostgreSQL refuses it in text (a 500, not a 422).
    target: Annotated[
        str | None, Query(max_length=64, pattern=r"^[\x20-\x7e]+$", description="Only events about this id.")
    ] = None,
) -> Page[AuditEventOut]:
    items, total = service.page(limit, offset, target)
    return Page[AuditEventOut](items=items, total=total, limit=limit, offset=offset)
