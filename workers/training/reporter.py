"""What a running job tells the database: progress events, status changes, cancellation checks, a heartbeat."""

from __future__ import annotations

import logging
import threading
import time

from core.db import transaction, utcnow
from core.forget_requests.models import TERMINAL, RequestStatus
from core.forget_requests.repository import ForgetRequestRepository
from unlearning.cagul.trainer import TrainingCancelled
from workers.runtime import Runtime

log = logging.getLogger(__name__)
# How often a running job reads its cancellation flag: a cancel is honoured within about this.
CANCEL_POLL_S = 1.0


class JobReporter:
    """Progress events (`progress_event_interval_s`), cancellation checks (each second), a heartbeat while it runs."""

    def __init__(self, rt: Runtime, request_id: str, job_id: str) -> None:
        self.rt = rt
        self.request_id = request_id
        self.job_id = job_id
        self.last_event = 0.0
        self.last_poll = 0.0
        self.phase_started: dict[str, float] = {}
        self.cancelled = False
        self._done = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> JobReporter:
        self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._heartbeat.join(timeout=10)

    def _beat(self) -> None:
        # Beats through every phase (retain set, training, verification): silence means the worker is gone.
        interval = max(0.5, self.rt.settings.heartbeat_stale_s / 4)
        while not self._done.wait(interval):
            try:
                with transaction(self.rt.sessions) as session:
                    ForgetRequestRepository(session).get_job(self.job_id).heartbeat_at = utcnow()
            except Exception:
                log.exception("heartbeat of job %s failed", self.job_id)

    def progress(self, phase: str, step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if step <= 1 or phase not in self.phase_started:  # a retry's phase starts again: its eta counts it alone
            self.phase_started[phase] = now
        # One row a second made 2,000+ rows of a 40-min job; operators read a bar and a loss curve, not every step.
        store = step in (1, total) or now - self.last_event >= self.rt.settings.progress_event_interval_s
        if not store:
            if now - self.last_poll >= CANCEL_POLL_S:
                self.last_poll = now
                self._read_cancel()
            return
        self.last_event = self.last_poll = now
        elapsed = now - self.phase_started[phase]
        eta = elapsed / step * (total - step) if step else None
        with transaction(self.rt.sessions) as session:
            repo = ForgetRequestRepository(session)
            repo.add_event(
                self.request_id,
                job_id=self.job_id,
                kind="progress",
                phase=phase,
                step=step,
                total=total,
                loss=round(loss, 5),
                eta_seconds=None if eta is None else round(eta, 1),
            )
            self.cancelled = repo.get(self.request_id).cancel_requested

    def status(self, status: RequestStatus, message: str) -> None:
        """A status event (the request's status changes too) and a fresh look at cancellation."""
        with transaction(self.rt.sessions) as session:
            repo = ForgetRequestRepository(session)
            request = repo.get(self.request_id, for_update=True)
            self.cancelled = request.cancel_requested
            if request.status not in TERMINAL:
                repo.set_status(request, status, message, job_id=self.job_id)
        self.raise_if_cancelled(status)

    def poll_cancel(self, phase: str) -> None:
        """Read the cancellation flag now (between phases that report no progress) and stop if it is set."""
        self._read_cancel()
        self.raise_if_cancelled(phase)

    def _read_cancel(self) -> None:
        with transaction(self.rt.sessions) as session:
            self.cancelled = ForgetRequestRepository(session).get(self.request_id).cancel_requested

    def raise_if_cancelled(self, phase: str) -> None:
        if self.cancelled:
            raise TrainingCancelled(f"cancelled during {phase}")

    def should_stop(self) -> bool:
        return self.cancelled
