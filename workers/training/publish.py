"""Verification against the set a module joins, and publishing it if the set did not change meanwhile."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.adapters.models import AdapterState
from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.audit.repository import AuditRepository
from core.db import new_id, transaction, utcnow
from core.forget_requests.models import TERMINAL, JobStatus, RequestStatus
from core.forget_requests.repository import ForgetRequestRepository
from unlearning.artifacts import save_module
from unlearning.cagul import CagulModule
from unlearning.cagul.trainer import TrainReport
from unlearning.cagul.verification import PROBES, Baseline, Canaries, Verification, VerifyConfig, probe_inputs, verify
from workers.runtime import Runtime
from workers.training.job import Job
from workers.training.records import attempt_record, discard, record_adapter

log = logging.getLogger(__name__)
# Publishing re-verifies when the active set changed since verification; after this many changes it gives up.
MAX_REVERIFY = 3


def _active_snapshot(rt: Runtime) -> tuple[int, dict[str, tuple[str, str]]]:
    with transaction(rt.sessions) as session:
        current = AdapterSetRepository(session).current()
        ids = list(current.adapter_ids) if current else []
        rows = {a.id: (a.path, a.sha256) for a in AdapterRepository(session).by_ids(ids)}
        return (current.version if current else 0), rows


def verify_and_publish(
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
        probes = {aid: p for aid, (_, p) in parts.items() if p is not None}
        candidate, current = rt.gate(rows, {adapter_id: module}), rt.gate(rows, {})
        if rt.settings.gate_system_fpr > 0:  # as the server calibrates the set it serves
            for gate in (candidate, current):
                gate.calibrate(rt.benign_tokens([]), rt.settings.gate_system_fpr, scale=rt.settings.gate_calibration)
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
    directory = Path(rt.settings.resolved_artifact_root) / adapter_id
    manifest = save_module(
        module,
        directory,
        rt.fingerprint,
        {"request_id": job.request_id},
        tensors={PROBES: probe_inputs(rt.backbone, base, module.config.discriminator_input == "identity")},
    )
    record = attempt_record(len(attempts) + 1, job.config, module.config, train_report, verification)
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
            discard(directory)
            return None
        repo = ForgetRequestRepository(session)
        request = repo.get(job.request_id, for_update=True)
        if request.status in TERMINAL:  # finished by another delivery meanwhile
            discard(directory)
            return str(request.status)
        row = repo.get_job(job.job_id)
        row.status, row.finished_at = JobStatus.FINISHED, utcnow()
        if request.cancel_requested:  # honoured up to the moment of publishing
            discard(directory)
            repo.set_status(request, RequestStatus.CANCELLED, "cancelled before publishing", job_id=job.job_id)
            return RequestStatus.CANCELLED
        record_adapter(session, rt, request, adapter_id, AdapterState.ACTIVE, directory, manifest, train_report, report)
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
        message = _verified_message(verification, len(report["attempts"]))
        repo.set_status(request, RequestStatus.ACTIVE, message, job_id=job.job_id)
        return RequestStatus.ACTIVE


def _verified_message(verification: Verification, attempts: int) -> str:
    figures = "; ".join(
        f"{c.name} {c.module:g}" + (f" (bound {c.bound:g})" if c.bound is not None else "") + f" vs {c.threshold:g}"
        for c in verification.criteria
    )
    return f"verified in attempt {attempts}: {figures}"
