"""One training job: reload the request, train its CAGUL module, verify it, publish it or reject it."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from core.adapters.models import ACTIVE as ADAPTER_ACTIVE
from core.adapters.models import REJECTED as ADAPTER_REJECTED
from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.audit.repository import AuditRepository
from core.db import new_id, transaction, utcnow
from core.errors import NotFoundError
from core.forget_requests.models import ACTIVE, CANCELLED, FAILED, REJECTED, TERMINAL, TRAINING, VERIFYING
from core.forget_requests.repository import ForgetRequestRepository
from core.queue import TrainPayload
from unlearning.artifacts import load_module, save_module
from unlearning.cagul import CagulConfig, CagulGate, CagulTrainer
from unlearning.cagul.trainer import TrainingCancelled
from unlearning.data import QA, ForgetData
from unlearning.evaluation.verification import verify
from workers.runtime import Runtime

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 1.0


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

    def should_stop(self) -> bool:
        return self.cancelled


def _finish(rt: Runtime, request_id: str, job_id: str, status: str, message: str | None) -> None:
    with transaction(rt.sessions) as session:
        repo = ForgetRequestRepository(session)
        request = repo.get(request_id, for_update=True)
        job = repo.get_job(job_id)
        job.status = "finished" if status != FAILED else "failed"
        job.finished_at = utcnow()
        if request.status not in TERMINAL:
            repo.set_status(request, status, message, job_id=job_id)


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
            return request.status  # a redelivery after the job finished: nothing to do
        alive_for = (utcnow() - job.heartbeat_at).total_seconds() if job.heartbeat_at else None
        if job.status == "running" and alive_for is not None and alive_for < rt.settings.heartbeat_stale_s:
            return "duplicate"  # a re-sent copy while another worker is alive and on it
        if request.cancel_requested:
            repo.set_status(request, CANCELLED, "cancelled before training started", job_id=job.id)
            job.status = "finished"
            return CANCELLED
        job.deliveries += 1
        job.status = "running"
        job.worker = f"{socket.gethostname()}:{os.getpid()}"
        job.started_at = job.heartbeat_at = utcnow()
        if job.deliveries > 1:
            repo.add_event(request.id, job_id=job.id, kind="status", status=TRAINING, message="redelivered; restarting")
        repo.set_status(request, TRAINING, job_id=job.id)
        sealed = [im.ciphertext for im in request.images]
        if request.qa_ciphertext is None or None in sealed:
            repo.set_status(request, FAILED, "the request's uploaded data was purged before training", job_id=job.id)
            return FAILED
        images = [Image.open(io.BytesIO(rt.cipher.decrypt(c))).convert("RGB") for c in sealed if c is not None]
        qa_pairs = [
            QA(q["question"], q["answer"], q.get("keyword"))
            for q in json.loads(rt.cipher.decrypt(request.qa_ciphertext))
        ]
        forget = ForgetData(subject=request.subject, images=images, qa_pairs=qa_pairs)
        config = CagulConfig.from_dict(dict(request.params))
        active = [(a.id, a.path) for a in AdapterRepository(session).active()]

    with JobReporter(rt, payload.request_id, payload.job_id) as reporter:
        return _train_verify_publish(rt, payload, reporter, forget, config, active)


def _train_verify_publish(
    rt: Runtime,
    payload: TrainPayload,
    reporter: JobReporter,
    forget: ForgetData,
    config: CagulConfig,
    active: list[tuple[str, str]],
) -> str:
    try:
        retain = rt.retain_set(forget.images)
        module, train_report = CagulTrainer(rt.backbone, config, reporter.progress, reporter.should_stop).train(
            forget, retain
        )
        with transaction(rt.sessions) as session:
            ForgetRequestRepository(session).set_status(
                ForgetRequestRepository(session).get(payload.request_id), VERIFYING, job_id=payload.job_id
            )
        modules = {aid: load_module(path, rt.fingerprint, device=rt.settings.device) for aid, path in active}
        adapter_id = new_id()
        gate = CagulGate(rt.backbone, {**modules, adapter_id: module})
        verification = verify(
            gate,
            adapter_id,
            forget,
            retain,
            max_leak=rt.settings.verify_max_leak,
            min_retain_identical=rt.settings.verify_min_retain_identical,
        )
        directory = Path(rt.settings.resolved_artifact_root()) / adapter_id
        manifest = save_module(module, directory, rt.fingerprint, {"request_id": payload.request_id})
    except TrainingCancelled as exc:
        _finish(rt, payload.request_id, payload.job_id, CANCELLED, str(exc))
        return CANCELLED
    except Exception as exc:
        log.exception("training job %s failed", payload.job_id)
        _finish(rt, payload.request_id, payload.job_id, FAILED, f"{type(exc).__name__}: {exc}")
        return FAILED

    report: dict[str, Any] = {"train": train_report.to_dict(), "verification": verification.to_dict()}
    with transaction(rt.sessions) as session:
        repo = ForgetRequestRepository(session)
        request = repo.get(payload.request_id, for_update=True)
        if request.status in TERMINAL:  # cancelled or finished by another delivery meanwhile
            return request.status
        adapters = AdapterRepository(session)
        adapters.create(
            id=adapter_id,
            request_id=request.id,
            method=request.method,
            state=ADAPTER_ACTIVE if verification.passed else ADAPTER_REJECTED,
            path=str(directory),
            sha256=manifest["sha256"],
            base_fingerprint=rt.fingerprint,
            trainable_params=train_report.trainable_params,
            report=report,
            activated_at=utcnow() if verification.passed else None,
        )
        request.report = report
        request.adapter_id = adapter_id
        job = repo.get_job(payload.job_id)
        job.status, job.finished_at = "finished", utcnow()
        AuditRepository(session).record(
            f"worker:{job.worker}",
            "adapter.verified" if verification.passed else "adapter.rejected",
            adapter_id,
            request_id=request.id,
            sha256=manifest["sha256"],
            leak_rate=verification.leak_rate,
            retain_identical=verification.retain_identical,
        )
        if verification.passed:
            AdapterSetRepository(session).record(f"adapter {adapter_id} activated for request {request.id}")
            repo.set_status(request, ACTIVE, job_id=job.id)
            return ACTIVE
        repo.set_status(request, REJECTED, "; ".join(verification.reasons), job_id=job.id)
        return REJECTED
