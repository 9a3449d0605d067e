"""All SQL about callback deliveries."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.callbacks.models import CallbackDelivery
from core.db import utcnow


class CallbackRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def enqueue(self, request_id: str, url: str, payload: dict[str, Any]) -> None:
        self.session.add(CallbackDelivery(request_id=request_id, url=url, payload=payload))
        self.session.flush()

    def due(self, limit: int = 50, now: datetime | None = None) -> list[CallbackDelivery]:
        """Undelivered deliveries whose next attempt is due, oldest first, locked against other dispatchers."""
        query = (
            select(CallbackDelivery)
            .where(CallbackDelivery.delivered_at.is_(None), CallbackDelivery.gave_up_at.is_(None))
            .where(CallbackDelivery.next_attempt_at <= (now or utcnow()))
            .order_by(CallbackDelivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(self.session.scalars(query).all())

    def for_request(self, request_id: str) -> list[CallbackDelivery]:
        query = select(CallbackDelivery).where(CallbackDelivery.request_id == request_id).order_by(CallbackDelivery.id)
        return list(self.session.scalars(query).all())

    def record_attempt(
        self, delivery: CallbackDelivery, error: str | None, backoff: timedelta, max_attempts: int
    ) -> None:
        delivery.attempts += 1
        if error is None:
            delivery.delivered_at = utcnow()
            delivery.last_error = None
            return
        delivery.last_error = error[:500]
        if delivery.attempts >= max_attempts:
            delivery.gave_up_at = utcnow()
        else:
            delivery.next_attempt_at = utcnow() + backoff * 2 ** (delivery.attempts - 1)
