"""All SQL about trained modules and the versioned active set."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from core.adapters.models import Adapter, AdapterSetVersion, AdapterState
from core.db import fetch_one, paginate, utcnow


class AdapterRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create(self, **fields: Any) -> Adapter:
        if "version" not in fields:
            fields["version"] = 1 + int(
                self.session.scalar(select(func.max(Adapter.version)).where(Adapter.request_id == fields["request_id"]))
                or 0
            )
        adapter = Adapter(**fields)
        self.session.add(adapter)
        self.session.flush()
        return adapter

    def get(self, adapter_id: str) -> Adapter:
        return fetch_one(self.session, Adapter, adapter_id, "adapter")

    def page(self, *, limit: int, offset: int, state: str | None = None) -> tuple[list[Adapter], int]:
        query = select(Adapter).order_by(Adapter.created_at.desc(), Adapter.id)
        if state is not None:
            query = query.where(Adapter.state == state)
        return paginate(self.session, query, limit, offset)

    def for_request(self, request_id: str) -> list[Adapter]:
        return list(self.session.scalars(select(Adapter).where(Adapter.request_id == request_id)).all())

    def by_ids(self, ids: list[str]) -> list[Adapter]:
        return list(self.session.scalars(select(Adapter).where(Adapter.id.in_(ids))).all())

    def active(self) -> list[Adapter]:
        return list(
            self.session.scalars(select(Adapter).where(Adapter.state == AdapterState.ACTIVE).order_by(Adapter.id)).all()
        )

    def active_ids(self) -> list[str]:
        """The ids of the ACTIVE rows, sorted (the order `AdapterSetRepository.record` stores)."""
        return list(
            self.session.scalars(select(Adapter.id).where(Adapter.state == AdapterState.ACTIVE).order_by(Adapter.id))
        )

    def set_state(self, adapter: Adapter, state: AdapterState) -> None:
        adapter.state = state
        if state == AdapterState.ACTIVE:
            adapter.activated_at = utcnow()
        else:
            adapter.deactivated_at = utcnow()


# Any fixed bigint: the PostgreSQL advisory lock that every change of the active set takes.
ACTIVE_SET_LOCK = 0x1E7E_5E7
# A seqlock read retries while publishes keep landing between its reads; more is a database in trouble.
SNAPSHOT_TRIES = 5


class AdapterSetRepository:
    """The versioned active set. Every change of adapter state: `lock()`, change, `record(reason)`, commit."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def current(self) -> AdapterSetVersion | None:
        query = select(AdapterSetVersion).order_by(AdapterSetVersion.version.desc()).limit(1)
        return self.session.scalars(query).first()

    def lock(self) -> None:
        """Serialise changes of the active set until this transaction ends; call before reading adapter state."""
        transaction = self.session.get_transaction()
        if transaction is not None and self.session.info.get(_LOCKED_BY) is transaction:
            return
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ACTIVE_SET_LOCK})
        else:
            # SQLite serialises writers on the file lock, but a transaction only takes it at its first write:
            # a no-op write takes it now, so the reads that follow cannot be overtaken by another writer.
            self.session.execute(text("UPDATE adapter_set_versions SET reason = reason WHERE 0 = 1"))
        self.session.info[_LOCKED_BY] = self.session.get_transaction()

    def record(self, reason: str) -> AdapterSetVersion:
        """A new version holding the adapters active now (takes `lock()` first if the caller has not)."""
        self.lock()
        version = AdapterSetVersion(adapter_ids=AdapterRepository(self.session).active_ids(), reason=reason)
        self.session.add(version)
        self.session.flush()
        return version

    def snapshot(self) -> tuple[AdapterSetVersion | None, list[str]]:
        """The newest version and the ACTIVE ids as of one moment, without taking the lock."""
        adapters = AdapterRepository(self.session)
        for _ in range(SNAPSHOT_TRIES):
            # A seqlock: each set change commits its rows and its version together, so an unchanged newest
            # version around the read of the rows means both were read between the same two changes.
            current = self.current()
            ids = adapters.active_ids()
            if self.session.scalar(select(func.max(AdapterSetVersion.version))) == (current and current.version):
                break
        return current, ids


_LOCKED_BY = "lethe.active_set_locked_by"
