"""All SQL about trained modules and the versioned active set."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.adapters.models import ACTIVE, Adapter, AdapterSetVersion
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
        return list(self.session.scalars(select(Adapter).where(Adapter.state == ACTIVE).order_by(Adapter.id)).all())

    def set_state(self, adapter: Adapter, state: str) -> None:
        adapter.state = state
        if state == ACTIVE:
            adapter.activated_at = utcnow()
        else:
            adapter.deactivated_at = utcnow()


class AdapterSetRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def current(self) -> AdapterSetVersion | None:
        query = select(AdapterSetVersion).order_by(AdapterSetVersion.version.desc()).limit(1)
        return self.session.scalars(query).first()

    def record(self, reason: str) -> AdapterSetVersion:
        """A new version holding the adapters active now."""
        ids = [a.id for a in AdapterRepository(self.session).active()]
        version = AdapterSetVersion(adapter_ids=ids, reason=reason)
        self.session.add(version)
        self.session.flush()
        return version
