"""Re-send jobs that went silent: a lost broker message or a dead worker must never lose a request.

Duplicates are harmless: a worker skips a job that is finished or that another live worker holds.
"""

from __future__ import annotations

import logging
import threading
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
    """One pass: send every silent in-flight job again; how many were sent."""
    sent = 0
    with transaction(sessions) as session:
        repo = ForgetRequestRepository(session)
        for request, job in repo.stale_jobs(timedelta(seconds=settings.heartbeat_stale_s)):
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


class Reconciler:
    """A daemon thread running `resend_silent_jobs` every `reconcile_interval_s`."""

    def __init__(self, sessions: sessionmaker[Session], celery: Celery, settings: Settings) -> None:
        self.sessions, self.celery, self.settings = sessions, celery, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.reconcile_interval_s):
            try:
                resend_silent_jobs(self.sessions, self.celery, self.settings)
            except Exception:
                log.exception("reconciler pass failed")
