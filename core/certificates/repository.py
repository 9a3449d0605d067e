"""All SQL about certificates: revocation records and the status of one module's certificate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.adapters.models import Adapter, AdapterState
from core.certificates.models import CertificateRevocation
from core.db import fetch_one
from core.errors import ConflictError
from core.forget_requests.models import ForgetRequest, RequestStatus


class CertificateStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True)
class CertificateState:
    request: ForgetRequest
    adapter: Adapter
    status: CertificateStatus
    revoked_at: datetime | None = None
    reason: str | None = None


class CertificateRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def revoke(self, request_id: str, adapter_id: str, actor: str, reason: str) -> CertificateRevocation:
        """Record that the certificate of `adapter_id` no longer holds (its module stopped being served)."""
        revocation = CertificateRevocation(request_id=request_id, adapter_id=adapter_id, actor=actor, reason=reason)
        self.session.add(revocation)
        self.session.flush()
        return revocation

    def latest_revocation(self, adapter_id: str) -> CertificateRevocation | None:
        query = (
            select(CertificateRevocation)
            .where(CertificateRevocation.adapter_id == adapter_id)
            .order_by(CertificateRevocation.id.desc())
            .limit(1)
        )
        return self.session.scalars(query).first()

    def state(self, request_id: str, adapter_id: str | None = None) -> CertificateState:
        """The status of the certificate of `adapter_id` (default: the request's latest module)."""
        request = fetch_one(self.session, ForgetRequest, request_id, "forget request")
        adapter = self.session.get(Adapter, adapter_id or request.adapter_id or "")
        # Only a module that was served (active now, or inactive after a deactivation) was ever certified.
        if (
            adapter is None
            or adapter.request_id != request.id
            or adapter.state not in (AdapterState.ACTIVE, AdapterState.INACTIVE)
        ):
            raise ConflictError(
                f"request {request_id} is {request.status}: only an erasure whose module was activated is certified"
            )
        if (
            adapter.state == AdapterState.ACTIVE
            and request.status == RequestStatus.ACTIVE
            and request.adapter_id == adapter.id
        ):
            return CertificateState(request, adapter, CertificateStatus.ACTIVE)
        revocation = self.latest_revocation(adapter.id)
        if revocation is not None:
            return CertificateState(
                request, adapter, CertificateStatus.REVOKED, revocation.revoked_at, revocation.reason
            )
        # No record (a row from before revocations were recorded, or a module superseded): revoked all the same.
        revoked_at = adapter.deactivated_at or request.updated_at
        return CertificateState(request, adapter, CertificateStatus.REVOKED, revoked_at, "the module is not served")
