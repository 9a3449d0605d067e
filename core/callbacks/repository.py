"""All SQL about callback deliveries."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.callbacks.models import CallbackDelivery
from core.db import fetch_one, utcnow


class CallbackRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def enqueue(self, request_id: str, url: str, payload: dict[str, Any]) -> None:
        self.session.add(CallbackDelivery(request_id=request_id, url=url, payload=payload))
        self.session.flush()

    def claim_next(self, lease: timedelta, now: datetime | None = None) -> CallbackDelivery | None:
        """The oldest due delivery, made not due for `lease` so no other dispatcher sends it meanwhile."""
        now = now or utcnow()
        query = (
            select(CallbackDelivery)
            .where(CallbackDelivery.delivered_at.is_(None), CallbackDelivery.gave_up_at.is_(None))
            .where(CallbackDelivery.next_attempt_at <= now)
            .order_by(CallbackDelivery.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        delivery = self.session.scalars(query).first()
        if delivery is not None:
            delivery.next_attempt_at = now + lease
            self.session.flush()
        return delivery

    def for_request(self, request_id: str) -> list[CallbackDelivery]:
        query = select(CallbackDelivery).where(CallbackDelivery.request_id == request_id).order_by(CallbackDelivery.id)
        return list(self.session.scalars(query).all())

    def record_attempt(self, delivery_id: int, error: str | None, backoff: timedelta, max_attempts: int) -> None:
        """Record one POST of a claimed delivery: delivered, retried after a backoff, or given up."""
        delivery = fetch_one(self.session, CallbackDelivery, delivery_id, "callback delivery", for_update=True)
        if delivery.delivered_at is not None or delivery.gave_up_at is not None:
            return  # another dispatcher finished it after this one's lease ran out
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
