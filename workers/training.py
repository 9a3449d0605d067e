"""One training job: reload the request, train its CAGUL module, verify it against the set it joins, publish it.

A failed verification is retried with a stronger configuration within `verify_max_attempts`; every attempt is
an event and a line of the report.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session

from core.adapters.models import ACTIVE as ADAPTER_ACTIVE
from core.adapters.models import REJECTED as ADAPTER_REJECTED
from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.audit.repository import AuditRepository
from core.db import new_id, transaction, utcnow
from core.errors import LetheError, NotFoundError
from core.forget_requests.models import (
    ACTIVE,
    CANCELLED,
    FAILED,
    IN_FLIGHT,
    NOTHING_TO_FORGET,
    REJECTED,
    TERMINAL,
    TRAINING,
    VERIFYING,
    ForgetRequest,
)
from core.forget_requests.params import check_params
from core.forget_requests.repository import ForgetRequestRepository
from core.queue import TrainPayload
from core.settings import Settings
from unlearning.artifacts import save_module
from unlearning.cagul import CagulConfig, CagulGate, CagulModule, CagulTrainer
from unlearning.cagul.config import token_discriminator_input
from unlearning.cagul.trainer import TrainingCancelled, TrainReport
from unlearning.cagul.verification import (
    Baseline,
    Canaries,
    Outcome,
    Verification,
    VerifyConfig,
    baseline,
    build_cases,
    heldout_photos,
    heldout_split,
    nothing_to_forget,
    probe_tokens,
    verify,
)
from unlearning.data import QA, ForgetData, pixels_sha256
from unlearning.deadline import Deadline
from unlearning.errors import TimeBudgetExceeded, UnlearningError
from workers.runtime import PROBES, Runtime

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 1.0
# Publishing re-verifies when the active set changed since verification; after this many changes it gives up.
MAX_REVERIFY = 3


class JobReporter:
    """Progress events and cancellation checks (at most once a second), and a heartbeat while the job runs."""

    def __init__(self, rt: Runtime, request_id: str, job_id: str) -> None:
        self.rt = rt
        self.request_id = request_id
        self.job_id = job_id
        self.last_write = 0.0
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
        self.phase_started.setdefault(phase, now)
        if now - self.last_write < PROGRESS_INTERVAL_S and step not in (1, total):
            return
        self.last_write = now
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

    def status(self, status: str, message: str) -> None:
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
        with transaction(self.rt.sessions) as session:
            self.cancelled = ForgetRequestRepository(session).get(self.request_id).cancel_requested
        self.raise_if_cancelled(phase)

    def raise_if_cancelled(self, phase: str) -> None:
        if self.cancelled:
            raise TrainingCancelled(f"cancelled during {phase}")

    def should_stop(self) -> bool:
        return self.cancelled


@dataclass
class Job:
    """Everything one delivery works on, decrypted from the request."""

    request_id: str
    job_id: str
    forget: ForgetData
    config: CagulConfig
    filed_people: list[str]
    own_people: list[str]
    deadline: Deadline


def _finish(rt: Runtime, job: Job, status: str, message: str | None, report: dict | None = None) -> str:
    with transaction(rt.sessions) as session:
        repo = ForgetRequestRepository(session)
        request = repo.get(job.request_id, for_update=True)
        row = repo.get_job(job.job_id)
        row.status = "finished" if status != FAILED else "failed"
        row.finished_at = utcnow()
        if request.status in TERMINAL:
            return str(request.status)
        if report is not None:
            request.report = report
        repo.set_status(request, status, message, job_id=job.job_id)
        return status


def job_config(params: dict[str, Any], settings: Settings, token_shape: tuple[int, int] | None = None) -> CagulConfig:
    """The request's parameters, checked again against today's bounds, with the operator's refusal text and answer
    length; `token_shape` (gate tokens, hidden size) for a base model without an identity encoder, whose modules
    discriminate on the tokens themselves."""
    config = check_params(params, settings)
    if settings.refusal_answer is not None:
        config["refusal_answer"] = settings.refusal_answer
    config["max_answer_tokens"] = settings.train_max_answer_tokens
    config["micro_batch_size"] = settings.train_micro_batch
    if token_shape is not None:
        # A checkpoint from elsewhere has no identity encoder beside it (the reference world trains one). Such modules
        # carry no prototype, so the gate runs them all (exhaustive), not through the two-stage index.
        config.setdefault("discriminator_input", token_discriminator_input(*token_shape))
    return CagulConfig.from_dict(config)


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
        if job.status == "running" and alive_for is not None and alive_for < rt.settings.heartbeat_stale_s:
            return "duplicate"  # a re-sent copy while another worker is alive and on it
        if request.cancel_requested:
            repo.set_status(request, CANCELLED, "cancelled before training started", job_id=job.id)
            job.status = "finished"
            return CANCELLED
        if job.deliveries >= rt.settings.max_deliveries:  # every earlier start died: this request kills workers
            repo.give_up(request, job, rt.settings.max_deliveries)
            return FAILED
        try:
            bb = rt.backbone
            tokens = None if bb.identity is not None else (bb.n_visual_tokens, bb.hidden_size)
            config = job_config(dict(request.params), rt.settings, tokens)
        except (LetheError, UnlearningError) as exc:  # filed under other bounds, or before they existed
            job.status, job.finished_at = "failed", utcnow()
            detail = exc.detail if isinstance(exc, LetheError) else str(exc)
            repo.set_status(request, FAILED, f"the request's parameters are not allowed: {detail}", job_id=job.id)
            return FAILED
        job.deliveries += 1
        job.status = "running"
        job.worker = f"{socket.gethostname()}:{os.getpid()}"
        job.started_at = job.heartbeat_at = utcnow()
        if job.deliveries > 1:
            repo.add_event(request.id, job_id=job.id, kind="status", status=TRAINING, message="redelivered; restarting")
        repo.set_status(request, TRAINING, job_id=job.id)
        sealed = [im.ciphertext for im in request.images]
        if request.key is None or request.qa_ciphertext is None or request.subject_ciphertext is None or None in sealed:
            repo.set_status(request, FAILED, "the request's uploaded data was purged before training", job_id=job.id)
            return FAILED
        cipher = rt.master_key.open(request.key.wrapped_key)
        images = [Image.open(io.BytesIO(cipher.decrypt(c))).convert("RGB") for c in sealed if c is not None]
        qa_pairs = [
            QA(q["question"], q["answer"], q.get("keyword")) for q in json.loads(cipher.decrypt(request.qa_ciphertext))
        ]
        subject = cipher.decrypt(request.subject_ciphertext).decode()
        # People filed for deletion (active or in flight, this request included) are never retain data or canaries.
        own = {pixels_sha256(im) for im in images}
        filed = repo.image_hashes(IN_FLIGHT | {ACTIVE}) | own
        work = Job(
            request.id,
            job.id,
            ForgetData(subject=subject, images=images, qa_pairs=qa_pairs),
            config,
            rt.people_in(filed),
            rt.people_in(own),
            Deadline(rt.settings.train_time_limit_s),
        )

    with JobReporter(rt, payload.request_id, payload.job_id) as reporter:
        try:
            return _run(rt, work, reporter)
        except TrainingCancelled as exc:
            return _finish(rt, work, CANCELLED, str(exc))
        except TimeBudgetExceeded as exc:
            return _finish(rt, work, FAILED, f"the job stopped: {exc} (LETHE_TRAIN_TIME_LIMIT_S)")
        except Exception as exc:
            log.exception("training job %s failed", payload.job_id)
            return _finish(rt, work, FAILED, f"{type(exc).__name__}: {exc}")


def _run(rt: Runtime, job: Job, reporter: JobReporter) -> str:
    vcfg = rt.verify_config()
    train_pairs, verify_pairs = heldout_split(job.forget.qa_pairs)
    train_photos, verify_photos = heldout_photos(job.forget.images, vcfg)
    cases = build_cases(verify_photos, verify_pairs, vcfg, unseen_photos=len(train_photos) < len(job.forget.images))
    base = baseline(CagulGate(rt.backbone), cases, vcfg, job.deadline)
    early = nothing_to_forget(base, vcfg)
    if early is not None:  # decided before any training: the reference model itself does not reveal enough
        status = NOTHING_TO_FORGET if early.outcome == Outcome.NOTHING_TO_FORGET else REJECTED
        return _finish(rt, job, status, "; ".join(early.reasons), {"attempts": [], "verification": early.to_dict()})
    reporter.poll_cancel("the reference baseline")
    train_data = ForgetData(job.forget.subject, train_photos, train_pairs)
    retain = rt.retain_set(job.filed_people, job.own_people)
    canaries = rt.canaries(job.filed_people)
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
                TRAINING,
                f"attempt {attempt} of {max_attempts} after {', '.join(verification.failed)} failed "
                f"({verification.leaks_past_gate} of {verification.leaks} leaks past the gate): "
                f"{_strengthening(job.config, config)}",
            )
        trainer = CagulTrainer(rt.backbone, config, reporter.progress, reporter.should_stop, job.deadline)
        module, train_report = trainer.train(train_data, retain)
        reporter.status(VERIFYING, f"verifying attempt {attempt} of {max_attempts}")
        published, verification = _verify_and_publish(rt, job, module, train_report, base, canaries, vcfg, attempts)
        attempts.append(_attempt_record(attempt, job.config, config, train_report, verification))
        if published is not None:
            return published
        reporter.raise_if_cancelled("verification")
    assert module is not None and verification is not None and train_report is not None
    return _reject(rt, job, module, train_report, verification, attempts)


def _strengthening(base: CagulConfig, config: CagulConfig) -> str:
    before = base.to_dict()
    changed = {k: v for k, v in config.to_dict().items() if v != before[k]}
    return ", ".join(f"{k} {v if k != 'probe_questions' else len(v)}" for k, v in changed.items())


def _attempt_record(
    attempt: int, base: CagulConfig, config: CagulConfig, train: TrainReport, verification: Verification
) -> dict[str, Any]:
    return {
        "attempt": attempt,
        "passed": verification.passed,
        "reasons": verification.reasons,
        "strengthened": _strengthening(base, config) or "the request's configuration",
        "config": config.to_dict(),
        "train": train.to_dict(),
        "verification": verification.to_dict(),
    }


def _active_snapshot(rt: Runtime) -> tuple[int, dict[str, tuple[str, str]]]:
    with transaction(rt.sessions) as session:
        current = AdapterSetRepository(session).current()
        ids = list(current.adapter_ids) if current else []
        rows = {a.id: (a.path, a.sha256) for a in AdapterRepository(session).by_ids(ids)}
        return (current.version if current else 0), rows


def _verify_and_publish(
    rt: Runtime,
    job: Job,
    module: CagulModule,
    train_report: TrainReport,
    base: Baseline,
    canaries: Canaries,
    vcfg: VerifyConfig,
    attempts: list[dict[str, Any]],
) -> tuple[str | None, Verification]:
    """Verify against the set the module joins; publish if it passed and the set did not change meanwhile."""
    adapter_id = new_id()
    for _ in range(MAX_REVERIFY):
        version, rows = _active_snapshot(rt)
        parts = {aid: rt.gate_part(path, digest) for aid, (path, digest) in rows.items()}
        probes = {aid: p for aid, (_, _, p) in parts.items() if p is not None}
        candidate, current = rt.gate(rows, {adapter_id: module}), rt.gate(rows, {})
        if rt.settings.gate_system_fpr > 0:  # as the server calibrates the set it serves
            for gate in (candidate, current):
                gate.calibrate(rt.benign_tokens([]), rt.settings.gate_system_fpr)
        verification = verify(
            candidate,
            current,
            adapter_id,
            base,
            canaries,
            probes,
            rt.benign_tokens(job.filed_people),
            vcfg,
            job.deadline,
        )
        if not verification.passed:
            return None, verification
        published = _publish(rt, job, adapter_id, module, train_report, verification, base, attempts, version)
        if published is not None:
            return published, verification
        log.info("active set changed during verification of %s: verifying again", job.request_id)
    raise RuntimeError(f"the active set changed {MAX_REVERIFY} times during verification; the job will be re-sent")


def _publish(
    rt: Runtime,
    job: Job,
    adapter_id: str,
    module: CagulModule,
    train_report: TrainReport,
    verification: Verification,
    base: Baseline,
    attempts: list[dict[str, Any]],
    verified_version: int,
) -> str | None:
    """Activate the module under the set lock; None when the set is no longer the one it was verified against."""
    directory = Path(rt.settings.resolved_artifact_root()) / adapter_id
    manifest = save_module(
        module,
        directory,
        rt.fingerprint,
        {"request_id": job.request_id},
        tensors={PROBES: {"tokens": probe_tokens(rt.backbone, base).contiguous()}},
    )
    record = _attempt_record(len(attempts) + 1, job.config, module.config, train_report, verification)
    report: dict[str, Any] = {
        "attempts": [*attempts, record],
        "train": train_report.to_dict(),
        "verification": verification.to_dict(),
    }
    with transaction(rt.sessions) as session:
        sets = AdapterSetRepository(session)
        sets.lock()
        current = sets.current()
        if (current.version if current else 0) != verified_version:
            _discard(directory)
            return None
        repo = ForgetRequestRepository(session)
        request = repo.get(job.request_id, for_update=True)
        if request.status in TERMINAL:  # finished by another delivery meanwhile
            _discard(directory)
            return str(request.status)
        row = repo.get_job(job.job_id)
        row.status, row.finished_at = "finished", utcnow()
        if request.cancel_requested:  # honoured up to the moment of publishing
            _discard(directory)
            repo.set_status(request, CANCELLED, "cancelled before publishing", job_id=job.job_id)
            return CANCELLED
        _record_adapter(session, rt, request, adapter_id, ADAPTER_ACTIVE, directory, manifest, train_report, report)
        AuditRepository(session).record(
            f"worker:{row.worker}",
            "adapter.verified",
            adapter_id,
            request_id=request.id,
            sha256=manifest["digest"],
            attempts=len(report["attempts"]),
            leak=verification.figure("leak"),
            retain_identical=verification.figure("retain_identical"),
        )
        sets.record(f"adapter {adapter_id} activated for request {request.id}")
        repo.set_status(request, ACTIVE, _verified_message(verification, len(report["attempts"])), job_id=job.job_id)
        return ACTIVE


def _verified_message(verification: Verification, attempts: int) -> str:
    figures = "; ".join(
        f"{c.name} {c.module:g}" + (f" (bound {c.bound:g})" if c.bound is not None else "") + f" vs {c.threshold:g}"
        for c in verification.criteria
    )
    return f"verified in attempt {attempts}: {figures}"


def _reject(
    rt: Runtime,
    job: Job,
    module: CagulModule,
    train_report: TrainReport,
    verification: Verification,
    attempts: list[dict[str, Any]],
) -> str:
    """Every attempt failed: record the last module (rejected, its weights deleted) and say what the operator can do."""
    adapter_id = new_id()
    directory = Path(rt.settings.resolved_artifact_root()) / adapter_id
    # Saved only for the registry's checksum: a rejected module's weights still encode the subject, never served.
    try:
        manifest = save_module(module, directory, rt.fingerprint, {"request_id": job.request_id})
        return _record_rejection(rt, job, adapter_id, directory, manifest, train_report, verification, attempts)
    finally:
        _discard(directory)


def _record_rejection(
    rt: Runtime,
    job: Job,
    adapter_id: str,
    directory: Path,
    manifest: dict[str, Any],
    train_report: TrainReport,
    verification: Verification,
    attempts: list[dict[str, Any]],
) -> str:
    """The rejected module's registry row and the request's final status, in one transaction."""
    advice = (
        f"verification failed in all {len(attempts)} attempts ({attempts[-1]['strengthened']} at the last); "
        "raise LETHE_VERIFY_MAX_ATTEMPTS, or file more photos and question phrasings of the subject"
    )
    report = {"attempts": attempts, "train": train_report.to_dict(), "verification": verification.to_dict()}
    with transaction(rt.sessions) as session:
        repo = ForgetRequestRepository(session)
        request = repo.get(job.request_id, for_update=True)
        if request.status in TERMINAL:
            return str(request.status)
        row = repo.get_job(job.job_id)
        row.status, row.finished_at = "finished", utcnow()
        _record_adapter(session, rt, request, adapter_id, ADAPTER_REJECTED, directory, manifest, train_report, report)
        AuditRepository(session).record(
            f"worker:{row.worker}", "adapter.rejected", adapter_id, request_id=request.id, attempts=len(attempts)
        )
        repo.set_status(request, REJECTED, "; ".join([*verification.reasons, advice]), job_id=job.job_id)
        return REJECTED


def _record_adapter(
    session: Session,
    rt: Runtime,
    request: ForgetRequest,
    adapter_id: str,
    state: str,
    directory: Path,
    manifest: dict[str, Any],
    train_report: TrainReport,
    report: dict[str, Any],
) -> None:
    """The registry row of a trained module (active or rejected), and the request pointing at it."""
    AdapterRepository(session).create(
        id=adapter_id,
        request_id=request.id,
        method=request.method,
        state=state,
        path=str(directory),
        sha256=manifest["digest"],
        base_fingerprint=rt.fingerprint,
        trainable_params=train_report.trainable_params,
        report=report,
        activated_at=utcnow() if state == ADAPTER_ACTIVE else None,
    )
    request.report = report
    request.adapter_id = adapter_id


def _discard(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
