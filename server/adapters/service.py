"""Adapters: listing, and the state changes that publish a new version of the active set."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from core.adapters.models import Adapter, AdapterState
from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.audit.repository import AuditRepository
from core.certificates.repository import CertificateRepository
from core.db import transaction
from core.errors import ConflictError
from core.forget_requests.models import RequestStatus
from core.forget_requests.repository import ForgetRequestRepository
from server.adapters.schemas import AdapterOut, AdapterSetOut
from server.inference import InferenceEngine


def to_out(adapter: Adapter) -> AdapterOut:
    return AdapterOut.model_validate(adapter, from_attributes=True)


class AdapterService:
    def __init__(self, sessions: sessionmaker[Session], engine: InferenceEngine) -> None:
        self.sessions = sessions
        self.engine = engine

    def page(self, limit: int, offset: int, state: str | None) -> tuple[list[AdapterOut], int]:
        with transaction(self.sessions) as session:
            items, total = AdapterRepository(session).page(limit=limit, offset=offset, state=state)
            return [to_out(a) for a in items], total

    def get(self, adapter_id: str) -> AdapterOut:
        with transaction(self.sessions) as session:
            return to_out(AdapterRepository(session).get(adapter_id))

    def set_active(self, adapter_id: str, active: bool, actor: str) -> AdapterOut:
        with transaction(self.sessions) as session:
            sets = AdapterSetRepository(session)
            sets.lock()  # before reading any state: a publish racing this change must see it, or be seen by it
            adapters = AdapterRepository(session)
            requests = ForgetRequestRepository(session)
            adapter = adapters.get(adapter_id)
            request = requests.get(adapter.request_id, for_update=True)
            on, off = AdapterState.ACTIVE, AdapterState.INACTIVE
            wanted, allowed_from = (on, off) if active else (off, on)
            if adapter.state != allowed_from:
                raise ConflictError(
                    f"adapter {adapter_id} is {adapter.state}; only an {allowed_from} adapter can be set {wanted}"
                )
            if active and any(a.state == AdapterState.ACTIVE for a in adapters.for_request(adapter.request_id)):
                raise ConflictError(f"request {adapter.request_id} already has an active adapter; deactivate it first")
            adapters.set_state(adapter, wanted)
            requests.set_status(
                request, RequestStatus.ACTIVE if active else RequestStatus.REVOKED, f"adapter {adapter_id} {wanted}"
            )
            if active:
                request.adapter_id = adapter.id
            else:
                CertificateRepository(session).revoke(
                    request.id, adapter.id, actor, f"module {adapter_id} deactivated (rolled back) by {actor}"
                )
            version = sets.record(f"adapter {adapter_id} {'activated' if active else 'deactivated'}")
            AuditRepository(session).record(
                actor, f"adapter.{'activate' if active else 'deactivate'}", adapter_id, set_version=version.version
            )
            out = to_out(adapter)
        self.engine.sync()
        return out

    def current_set(self) -> AdapterSetOut:
        with transaction(self.sessions) as session:
            current = AdapterSetRepository(session).current()
        return AdapterSetOut(
            version=current.version if current else 0,
            adapter_ids=list(current.adapter_ids) if current else [],
            served_version=self.engine.served_version,
            ready=self.engine.ready,
        )
