"""Re-send jobs that went silent: a lost broker message or a dead worker must never lose a request.

Duplicates are harmless: a worker skips a job that is finished or that another live worker holds. A job whose
workers keep dying (`max_deliveries` starts) fails instead: a request that crashes its worker is not re-sent forever.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from core.audit.repository import AuditRepository
from core.db import transaction, utcnow
from core.forget_requests.repository import ForgetRequestRepository
from core.queue import TrainPayload, enqueue_training
from core.settings import Settings

log = logging.getLogger(__name__)


def resend_silent_jobs(sessions: sessionmaker[Session], celery: Celery, settings: Settings) -> int:
    """One pass: send every silent in-flight job again, or fail it past the delivery cap; how many were sent."""
    sent = 0
    with transaction(sessions) as session:
        repo = ForgetRequestRepository(session)
        for request, job in repo.stale_jobs(timedelta(seconds=settings.heartbeat_stale_s)):
            if job.deliveries >= settings.max_deliveries:
                repo.give_up(request, job, settings.max_deliveries)
                continue
            try:
                enqueue_training(celery, TrainPayload(request_id=request.id, job_id=job.id))
            except Exception as exc:
                log.warning("could not re-send job %s: %s", job.id, exc)
                continue
            job.enqueued_at = utcnow()
            message = f"re-sent: no heartbeat for {settings.heartbeat_stale_s:.0f} s"
            repo.add_event(request.id, job_id=job.id, kind="status", status=request.status, message=message)
            AuditRepository(session).record("system", "job.resend", job.id, request_id=request.id)
            sent += 1
    return sent
