"""One training job: reload the request, train its CAGUL module, verify it against the set it joins, publish it.

A failed verification is retried with a stronger configuration within `verify_max_attempts`; every attempt is
an event and a line of the report.
"""

from __future__ import annotations

import io
import logging
import os
import socket
from typing import Any

from PIL import Image

from core.db import transaction, utcnow
from core.errors import LetheError, NotFoundError
from core.forget_requests.models import IN_FLIGHT, TERMINAL, JobStatus, RequestStatus
from core.forget_requests.repository import ForgetRequestRepository
from core.forget_requests.sealed_text import unpack_text
from core.queue import TrainPayload
from unlearning.cagul import CagulGate, CagulModule, CagulTrainer
from unlearning.cagul.trainer import TrainingCancelled, TrainReport
from unlearning.cagul.verification import (
    Outcome,
    Verification,
    baseline,
    build_cases,
    heldout_photos,
    heldout_split,
    named_cases,
    nothing_to_forget,
)
from unlearning.data import QA, ForgetData, pixels_sha256
from unlearning.deadline import Deadline
from unlearning.errors import TimeBudgetExceeded, UnlearningError
from workers.runtime import Runtime
from workers.training.job import Job, job_config
from workers.training.publish import verify_and_publish
from workers.training.records import attempt_record, reject, strengthening
from workers.training.reporter import JobReporter

log = logging.getLogger(__name__)


def _finish(rt: Runtime, job: Job, status: RequestStatus, message: str | None, report: dict | None = None) -> str:
    with transaction(rt.sessions) as session:
        repo = ForgetRequestRepository(session)
        request = repo.get(job.request_id, for_update=True)
        row = repo.get_job(job.job_id)
        row.status = JobStatus.FINISHED if status != RequestStatus.FAILED else JobStatus.FAILED
        row.finished_at = utcnow()
        if request.status in TERMINAL:
            return str(request.status)
        if report is not None:
            request.report = report
        repo.set_status(request, status, message, job_id=job.job_id)
        return status


def run_training_job(rt: Runtime, payload: TrainPayload) -> str:
    """Run one delivery of a training task; returns the request's status afterwards. Safe to redeliver."""
    with transaction(rt.sessions) as session:
        repo = ForgetRequestRepository(session)
        try:
            request = repo.get(payload.request_id, for_update=True)
            job = repo.get_job(payload.job_id, for_update=True)
        except NotFoundError:
            log.warning("task for unknown request %s / job %s dropped", payload.request_id, payload.job_id)
            return "unknown"
        if request.status in TERMINAL:
            return str(request.status)  # a redelivery after the job finished: nothing to do
        alive_for = (utcnow() - job.heartbeat_at).total_seconds() if job.heartbeat_at else None
        if job.status == JobStatus.RUNNING and alive_for is not None and alive_for < rt.settings.heartbeat_stale_s:
            return "duplicate"  # a re-sent copy while another worker is alive and on it
        if request.cancel_requested:
            repo.set_status(request, RequestStatus.CANCELLED, "cancelled before training started", job_id=job.id)
            job.status = JobStatus.FINISHED
            return RequestStatus.CANCELLED
        if job.deliveries >= rt.settings.max_deliveries:  # every earlier start died: this request kills workers
            repo.give_up(request, job, rt.settings.max_deliveries)
            return RequestStatus.FAILED
        try:
            bb = rt.backbone
            tokens = None if bb.identity is not None else (bb.n_visual_tokens, bb.hidden_size)
            config = job_config(dict(request.params), rt.settings, tokens)
        except (LetheError, UnlearningError) as exc:  # filed under other bounds, or before they existed
            job.status, job.finished_at = JobStatus.FAILED, utcnow()
            detail = exc.detail if isinstance(exc, LetheError) else str(exc)
            repo.set_status(
                request, RequestStatus.FAILED, f"the request's parameters are not allowed: {detail}", job_id=job.id
            )
            return RequestStatus.FAILED
        job.deliveries += 1
        job.status = JobStatus.RUNNING
        job.worker = f"{socket.gethostname()}:{os.getpid()}"
        job.started_at = job.heartbeat_at = utcnow()
        if job.deliveries > 1:
            repo.add_event(
                request.id,
                job_id=job.id,
                kind="status",
                status=RequestStatus.TRAINING,
                message="redelivered; restarting",
            )
        repo.set_status(request, RequestStatus.TRAINING, job_id=job.id)
        sealed = [im.ciphertext for im in request.images]
        if request.key is None or request.qa_ciphertext is None or request.subject_ciphertext is None or None in sealed:
            repo.set_status(
                request, RequestStatus.FAILED, "the request's uploaded data was purged before training", job_id=job.id
            )
            return RequestStatus.FAILED
        cipher = rt.master_key.open(request.key.wrapped_key)
        images = [Image.open(io.BytesIO(cipher.decrypt(c))).convert("RGB") for c in sealed if c is not None]
        sealed_pairs, aliases = unpack_text(cipher.decrypt(request.qa_ciphertext))
        qa_pairs = [QA(q["question"], q["answer"], q.get("keyword")) for q in sealed_pairs]
        subject = cipher.decrypt(request.subject_ciphertext).decode()
        # People filed for deletion (active or in flight, this request included) are never retain data or canaries.
        own = {pixels_sha256(im) for im in images}
        filed = repo.image_hashes(IN_FLIGHT | {RequestStatus.ACTIVE}) | own
        work = Job(
            request.id,
            job.id,
            ForgetData(subject=subject, images=images, qa_pairs=qa_pairs, aliases=aliases),
            config,
            rt.people_in(filed),
            rt.people_in(own),
            Deadline(rt.settings.train_time_limit_s),
        )

    with JobReporter(rt, payload.request_id, payload.job_id) as reporter:
        try:
            return _run(rt, work, reporter)
        except TrainingCancelled as exc:
            return _finish(rt, work, RequestStatus.CANCELLED, str(exc))
        except TimeBudgetExceeded as exc:
            return _finish(rt, work, RequestStatus.FAILED, f"the job stopped: {exc} (LETHE_TRAIN_TIME_LIMIT_S)")
        except Exception as exc:
            log.exception("training job %s failed", payload.job_id)
            return _finish(rt, work, RequestStatus.FAILED, f"{type(exc).__name__}: {exc}")


def _run(rt: Runtime, job: Job, reporter: JobReporter) -> str:
    vcfg = rt.verify_config()
    train_pairs, verify_pairs = heldout_split(job.forget.qa_pairs)
    train_photos, verify_photos = heldout_photos(job.forget.images, vcfg)
    cases = build_cases(verify_photos, verify_pairs, vcfg, unseen_photos=len(train_photos) < len(job.forget.images))
    canaries = rt.canaries(job.filed_people)
    if job.forget.aliases:  # asked by name too, with no photo and with a canary's
        cases += named_cases(verify_pairs, job.forget.aliases, canaries.images, vcfg)
    base = baseline(CagulGate(rt.backbone), cases, vcfg, job.deadline)
    early = nothing_to_forget(base, vcfg)
    if early is not None:  # decided before any training: the reference model itself does not reveal enough
        status = (
            RequestStatus.NOTHING_TO_FORGET if early.outcome == Outcome.NOTHING_TO_FORGET else RequestStatus.REJECTED
        )
        return _finish(rt, job, status, "; ".join(early.reasons), {"attempts": [], "verification": early.to_dict()})
    reporter.poll_cancel("the reference baseline")
    train_data = ForgetData(job.forget.subject, train_photos, train_pairs, aliases=job.forget.aliases)
    retain = rt.retain_set(job.filed_people, job.own_people)
    reporter.poll_cancel("loading the retain set")
    job.deadline.check("loading the retain set")
    attempts: list[dict[str, Any]] = []
    max_attempts = max(1, rt.settings.verify_max_attempts)
    module: CagulModule | None = None
    verification: Verification | None = None
    train_report: TrainReport | None = None
    config = job.config
    for attempt in range(1, max_attempts + 1):
        if verification is not None:  # the remedy answers what failed, not a blanket "more of everything"
            config = config.strengthened(verification.causes)
            reporter.status(
                RequestStatus.TRAINING,
                f"attempt {attempt} of {max_attempts} after {', '.join(verification.failed)} failed "
                f"({verification.leaks_past_gate} of {verification.leaks} leaks past the gate): "
                f"{strengthening(job.config, config)}",
            )
        trainer = CagulTrainer(rt.backbone, config, reporter.progress, reporter.should_stop, job.deadline)
        module, train_report = trainer.train(train_data, retain)
        reporter.status(RequestStatus.VERIFYING, f"verifying attempt {attempt} of {max_attempts}")
        published, verification = verify_and_publish(rt, job, module, train_report, base, canaries, vcfg, attempts)
        attempts.append(attempt_record(attempt, job.config, config, train_report, verification))
        if published is not None:
            return published
        reporter.raise_if_cancelled("verification")
    assert module is not None and verification is not None and train_report is not None
    return reject(rt, job, module, train_report, verification, attempts)
