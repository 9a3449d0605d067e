"""The records a job leaves: each attempt's line of the report, a module's registry row, a rejection."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.adapters.models import AdapterState
from core.adapters.repository import AdapterRepository
from core.audit.repository import AuditRepository
from core.db import new_id, transaction, utcnow
from core.forget_requests.models import TERMINAL, ForgetRequest, JobStatus, RequestStatus
from core.forget_requests.repository import ForgetRequestRepository
from unlearning.artifacts import save_module
from unlearning.cagul import CagulConfig, CagulModule
from unlearning.cagul.trainer import TrainReport
from unlearning.cagul.verification import Verification
from workers.runtime import Runtime
from workers.training.job import Job


def strengthening(base: CagulConfig, config: CagulConfig) -> str:
    """What `config` changed from the request's own configuration `base`, as the report and events say it."""
    before = base.to_dict()
    changed = {k: v for k, v in config.to_dict().items() if v != before[k]}
    return ", ".join(f"{k} {v if k != 'probe_questions' else len(v)}" for k, v in changed.items())


def attempt_record(
    attempt: int, base: CagulConfig, config: CagulConfig, train: TrainReport, verification: Verification
) -> dict[str, Any]:
    """One attempt's line of the report."""
    return {
        "attempt": attempt,
        "passed": verification.passed,
        "reasons": verification.reasons,
        "strengthened": strengthening(base, config) or "the request's configuration",
        "config": config.to_dict(),
        "train": train.to_dict(),
        "verification": verification.to_dict(),
    }


def reject(
    rt: Runtime,
    job: Job,
    module: CagulModule,
    train_report: TrainReport,
    verification: Verification,
    attempts: list[dict[str, Any]],
) -> str:
    """Every attempt failed: record the last module (rejected, its weights deleted) and say what the operator can do."""
    adapter_id = new_id()
    directory = Path(rt.settings.resolved_artifact_root) / adapter_id
    # Saved only for the registry's checksum: a rejected module's weights still encode the subject, never served.
    try:
        manifest = save_module(module, directory, rt.fingerprint, {"request_id": job.request_id})
        return _record_rejection(rt, job, adapter_id, directory, manifest, train_report, verification, attempts)
    finally:
        discard(directory)


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
        row.status, row.finished_at = JobStatus.FINISHED, utcnow()
        record_adapter(
            session, rt, request, adapter_id, AdapterState.REJECTED, directory, manifest, train_report, report
        )
        AuditRepository(session).record(
            f"worker:{row.worker}", "adapter.rejected", adapter_id, request_id=request.id, attempts=len(attempts)
        )
        repo.set_status(request, RequestStatus.REJECTED, "; ".join([*verification.reasons, advice]), job_id=job.job_id)
        return RequestStatus.REJECTED


def record_adapter(
    session: Session,
    rt: Runtime,
    request: ForgetRequest,
    adapter_id: str,
    state: AdapterState,
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
        activated_at=utcnow() if state == AdapterState.ACTIVE else None,
    )
    request.report = report
    request.adapter_id = adapter_id


def discard(directory: Path) -> None:
    """Delete a module's artifact folder (one that will never be served)."""
    shutil.rmtree(directory, ignore_errors=True)
