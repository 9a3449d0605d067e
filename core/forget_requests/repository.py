"""All SQL about deletion requests, their jobs and events."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from core.audit.repository import AuditRepository
from core.callbacks.repository import CallbackRepository
from core.crypto import DataKeyError, MasterKey, SealedRequest
from core.db import fetch_one, paginate, utcnow
from core.forget_requests.models import (
    IN_FLIGHT,
    TERMINAL,
    ForgetRequest,
    Job,
    JobEvent,
    JobStatus,
    RequestImage,
    RequestKey,
    RequestStatus,
)


class ForgetRequestRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create(
        self,
        sealed: SealedRequest,
        *,
        method: str,
        params: dict[str, Any],
        qa_sha256: list[str],
        callback_url: str | None,
        status: str,
        n_aliases: int = 0,
    ) -> ForgetRequest:
        """A new request with its uploads sealed under its own data key, and that key wrapped."""
        request = ForgetRequest(
            subject_label=sealed.subject_label,
            subject_ciphertext=sealed.subject,
            method=method,
            params=params,
            qa_ciphertext=sealed.qa_pairs,
            qa_sha256=qa_sha256,
            n_qa_pairs=len(qa_sha256),
            n_aliases=n_aliases,
            callback_url=callback_url,
            status=status,
            images=[
                RequestImage(position=i, media_type=media, sha256=digest, ciphertext=data)
                for i, (media, digest, data) in enumerate(sealed.images)
            ],
            key=RequestKey(wrapped_key=sealed.wrapped_key, master_key_id=sealed.master_key_id),
        )
        self.session.add(request)
        self.session.flush()
        self.add_event(request.id, kind="status", status=status)
        return request

    def get(self, request_id: str, *, for_update: bool = False) -> ForgetRequest:
        return fetch_one(self.session, ForgetRequest, request_id, "forget request", for_update=for_update)

    def page(
        self, *, limit: int, offset: int, status: str | None = None, label: str | None = None
    ) -> tuple[list[ForgetRequest], int]:
        """Newest first; `label` matches the start of `subject_label` (the only handle on a subject lists have)."""
        query = select(ForgetRequest).order_by(ForgetRequest.created_at.desc(), ForgetRequest.id)
        if status is not None:
            query = query.where(ForgetRequest.status == status)
        if label is not None:
            query = query.where(ForgetRequest.subject_label.startswith(label, autoescape=True))
        return paginate(self.session, query, limit, offset)

    def set_status(
        self, request: ForgetRequest, status: RequestStatus, message: str | None = None, job_id: str | None = None
    ) -> None:
        request.status = status
        request.updated_at = utcnow()
        if status not in TERMINAL or status == RequestStatus.ACTIVE:
            # "verifying attempt 1 of 3" read as a failure in `error` while nothing had failed; events keep it.
            request.error = None
        elif message is not None and status != RequestStatus.REVOKED:
            request.error = message
        self.add_event(request.id, kind="status", status=status, message=message, job_id=job_id)
        if status in TERMINAL and request.purged_at is None:
            self.purge(request)

    def purge(self, request: ForgetRequest) -> None:
        """Destroy the request's data key and delete its sealed subject, photos, QA pairs and aliases; hashes stay."""
        # Copies of the ciphertext live on in dead row versions, WAL and backups: the key's deletion is what
        # makes them unreadable, the NULLs only keep the live tables small.
        request.key = None
        request.subject_ciphertext = None
        request.qa_ciphertext = None
        request.commitment_salt_ciphertext = None
        for image in request.images:
            image.ciphertext = None
        request.purged_at = utcnow()
        self.add_event(request.id, kind="status", status=request.status, message="uploaded data purged")
        AuditRepository(self.session).record("system", "forget_request.purge", request.id, status=request.status)

    def add_event(self, request_id: str, **fields: Any) -> JobEvent:
        """An event; a status event is also queued for the request's callback URL, in this transaction."""
        event = JobEvent(request_id=request_id, **fields)
        self.session.add(event)
        self.session.flush()
        request = self.session.get(ForgetRequest, request_id)
        if event.kind == "status" and request is not None and request.callback_url:
            payload = {
                "event": "forget_request.status",
                "request_id": request_id,
                "status": event.status,
                "message": event.message,
                "event_id": event.id,
                "at": event.created_at.isoformat(),
            }
            CallbackRepository(self.session).enqueue(request_id, request.callback_url, payload)
        return event

    def events(self, request_id: str, *, after: int = 0, limit: int = 500) -> list[JobEvent]:
        query = (
            select(JobEvent)
            .where(JobEvent.request_id == request_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit)
        )
        return list(self.session.scalars(query).all())

    def rewrap_keys(self, old: MasterKey, new: MasterKey) -> int:
        """Re-wrap every data key under `new` (payloads untouched); keys already under `new` are skipped."""
        keys = list(self.session.scalars(select(RequestKey).with_for_update()).all())
        foreign = {k.master_key_id for k in keys} - {old.key_id, new.key_id}
        if foreign:
            raise DataKeyError(
                f"data keys wrapped under master key(s) {', '.join(sorted(foreign))}, neither the old "
                f"({old.key_id}) nor the new ({new.key_id}); nothing was re-wrapped"
            )
        moved = [k for k in keys if k.master_key_id == old.key_id and old.key_id != new.key_id]
        for key in moved:
            key.wrapped_key, key.master_key_id = new.wrap(old.unwrap(key.wrapped_key)), new.key_id
        return len(moved)

    # ---- jobs ----------------------------------------------------------------------------------
    def image_hashes(self, statuses: frozenset[str] | set[str]) -> set[str]:
        """sha256 of every photo filed with a request in one of `statuses` (hashes outlive the purged photos)."""
        query = (
            select(RequestImage.sha256)
            .join(ForgetRequest, RequestImage.request_id == ForgetRequest.id)
            .where(ForgetRequest.status.in_([str(s) for s in statuses]))
        )
        return set(self.session.scalars(query).all())

    def create_job(self, request: ForgetRequest) -> Job:
        job = Job(request_id=request.id, status=JobStatus.QUEUED, enqueued_at=utcnow())
        self.session.add(job)
        self.session.flush()
        return job

    def give_up(self, request: ForgetRequest, job: Job, max_deliveries: int) -> None:
        """Fail a job started `max_deliveries` times that never finished, instead of sending it again."""
        job.status, job.finished_at = JobStatus.FAILED, utcnow()
        message = (
            f"the training job was started {job.deliveries} times and never finished (its worker died or went "
            f"silent each time, e.g. killed for memory); it is not sent again (LETHE_MAX_DELIVERIES={max_deliveries})"
        )
        self.set_status(request, RequestStatus.FAILED, message, job_id=job.id)
        AuditRepository(self.session).record("system", "job.give_up", job.id, request_id=request.id)

    def get_job(self, job_id: str, *, for_update: bool = False) -> Job:
        return fetch_one(self.session, Job, job_id, "job", for_update=for_update)

    def latest_job(self, request_id: str) -> Job | None:
        query = select(Job).where(Job.request_id == request_id).order_by(Job.created_at.desc()).limit(1)
        return self.session.scalars(query).first()

    def queue_health(self, seen_since: datetime) -> tuple[dict[str, int], datetime | None, list[Any]]:
        """In-flight jobs by status, when the oldest waiting one was sent, and each worker heard since `seen_since`.

        Workers are the database's view: those that heartbeated a job (an idle worker writes nothing).
        """
        in_flight = (
            select(Job)
            .join(ForgetRequest, Job.request_id == ForgetRequest.id)
            .where(ForgetRequest.status.in_(IN_FLIGHT), Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
            .subquery()
        )
        counts = {
            status: int(n)
            for status, n in self.session.execute(select(in_flight.c.status, func.count()).group_by(in_flight.c.status))
        }
        oldest = self.session.scalar(
            select(func.min(func.coalesce(in_flight.c.enqueued_at, in_flight.c.created_at))).where(
                in_flight.c.status == JobStatus.QUEUED
            )
        )
        workers = self.session.execute(
            select(Job.worker, func.max(Job.heartbeat_at), func.count().filter(Job.status == JobStatus.RUNNING))
            .where(Job.worker.is_not(None), Job.heartbeat_at >= seen_since)
            .group_by(Job.worker)
            .order_by(func.max(Job.heartbeat_at).desc())
        ).all()
        return counts, oldest, list(workers)

    def stale_jobs(self, older_than: timedelta, now: datetime | None = None) -> list[tuple[ForgetRequest, Job]]:
        """In-flight jobs silent for `older_than`: no heartbeat since then, and not (re)sent since then.

        A queued job counts as silent only while no job is running with a fresh heartbeat: behind a busy worker it
        is waiting its turn, not lost, and sending it again every pass would grow the queue with every waiting job.
        """
        cutoff = (now or utcnow()) - older_than
        busy = aliased(Job)
        queue_moving = exists().where(busy.status == JobStatus.RUNNING, busy.heartbeat_at >= cutoff)
        query = (
            select(ForgetRequest, Job)
            .join(Job, Job.request_id == ForgetRequest.id)
            .where(ForgetRequest.status.in_(IN_FLIGHT), Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
            .where(func.coalesce(Job.heartbeat_at, Job.created_at) < cutoff)
            .where(func.coalesce(Job.enqueued_at, Job.created_at) < cutoff)
            .where(or_(Job.status == JobStatus.RUNNING, ~queue_moving))
            .with_for_update(of=Job, skip_locked=True)
        )
        return [(r, j) for r, j in self.session.execute(query).all()]
