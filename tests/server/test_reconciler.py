"""The reconciler on real PostgreSQL and a real Redis broker: a silent job is sent again until its delivery cap,
then failed with the reason and never queued again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import redis

from core.db import make_engine, make_session_factory, transaction, utcnow
from core.forget_requests.models import RequestStatus
from core.forget_requests.repository import ForgetRequestRepository
from core.queue import make_celery
from core.settings import Settings
from server.reconciler import resend_silent_jobs
from tests.helpers import request_row


def silent_job(sessions, deliveries: int) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A request in training whose worker died `deliveries` starts in, an hour ago."""
    with transaction(sessions) as session:
        repo = ForgetRequestRepository(session)
        request = request_row(session, RequestStatus.TRAINING)
        job = repo.create_job(request)
        an_hour_ago = utcnow() - timedelta(hours=1)
        job.status, job.deliveries, job.heartbeat_at, job.enqueued_at = "running", deliveries, an_hour_ago, an_hour_ago
        job.created_at = an_hour_ago
        return request.id, job.id


def test_a_crash_looping_job_is_failed_at_its_delivery_cap_not_resent(tmp_path: Path, pg_url: str, redis_url: str):
    settings = Settings(data_dir=tmp_path, database_url=pg_url, broker_url=redis_url, max_deliveries=3)
    engine = make_engine(pg_url)
    sessions = make_session_factory(engine)
    broker = redis.Redis.from_url(redis_url)
    try:
        looping = silent_job(sessions, deliveries=3)
        lost = silent_job(sessions, deliveries=2)
        assert resend_silent_jobs(sessions, make_celery(settings), settings) == 1
        assert broker.llen("train") == 1  # the job under its cap, only
        with transaction(sessions) as session:
            repo = ForgetRequestRepository(session)
            request, job = repo.get(looping[0]), repo.get_job(looping[1])
            assert request.status == "failed" and job.status == "failed" and job.deliveries == 3
            assert "started 3 times and never finished" in (request.error or "")
            assert "LETHE_MAX_DELIVERIES=3" in (request.error or "")
            assert request.purged_at is not None and request.qa_ciphertext is None and request.key is None
            assert repo.get(lost[0]).status == "training" and repo.get_job(lost[1]).status == "running"
        # Later passes leave the failed job alone: nothing more is queued for it.
        with transaction(sessions) as session:
            ForgetRequestRepository(session).get_job(lost[1]).deliveries = 3
            ForgetRequestRepository(session).get_job(lost[1]).enqueued_at = utcnow() - timedelta(hours=1)
        assert resend_silent_jobs(sessions, make_celery(settings), settings) == 0
        assert broker.llen("train") == 1
        with transaction(sessions) as session:
            assert ForgetRequestRepository(session).get(lost[0]).status == "failed"
    finally:
        engine.dispose()
