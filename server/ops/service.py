"""Readiness (model and whole active set loaded, database reachable) and the Prometheus registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from core.crypto import CertificateSigner
from core.db import transaction, utcnow
from core.forget_requests.models import JobStatus
from core.forget_requests.repository import ForgetRequestRepository
from server.inference import InferenceEngine
from server.ops.schemas import GateActivityOut, GateFiresOut, OperationsOut, QueueOut, ReadyOut, WorkerOut


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lethe_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "lethe_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry
        )
        self.served_version = Gauge(
            "lethe_adapter_set_served_version", "Adapter set version being served", registry=self.registry
        )
        self.ready = Gauge(
            "lethe_ready", "1 when the model and the whole active set are loaded", registry=self.registry
        )
        self.jobs_waiting = Gauge("lethe_jobs_waiting", "Training jobs sent and not started", registry=self.registry)
        self.jobs_running = Gauge("lethe_jobs_running", "Training jobs a worker holds", registry=self.registry)
        self.workers_alive = Gauge(
            "lethe_workers_alive", "Workers heard from within LETHE_HEARTBEAT_STALE_S", registry=self.registry
        )
        self.gate_images = Counter("lethe_gate_images", "Images /v1/vqa ran through the gate", registry=self.registry)
        # One series per module that ever fired in this process: bounded by the modules that see traffic.
        self.gate_fires = Counter(
            "lethe_gate_fires", "Images routed to a module (its gate fired)", ["adapter_id"], registry=self.registry
        )

    def record_gate(self, routed: list[str | None]) -> None:
        """Count one answered batch: every image, and each one a module's gate claimed."""
        self.gate_images.inc(len(routed))
        for adapter_id in routed:
            if adapter_id is not None:
                self.gate_fires.labels(adapter_id).inc()

    def gate_activity(self) -> tuple[int, dict[str, int]]:
        """Images gated and fires per module since this process started, read back from the counters."""
        images = sum(s.value for m in self.gate_images.collect() for s in m.samples if s.name.endswith("_total"))
        fires = {
            s.labels["adapter_id"]: int(s.value)
            for m in self.gate_fires.collect()
            for s in m.samples
            if s.name.endswith("_total")
        }
        return int(images), fires


class OpsService:
    def __init__(
        self, sessions: sessionmaker[Session], engine: InferenceEngine, metrics: Metrics, signer: CertificateSigner
    ) -> None:
        self.sessions = sessions
        self.engine = engine
        self.metrics = metrics
        self.signer = signer

    def readiness(self, detailed: bool = True) -> ReadyOut:
        try:
            with self.sessions() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            return ReadyOut(ready=False, detail=f"database unreachable: {type(exc).__name__}", adapter_set_version=None)
        ready = self.engine.ready
        self.metrics.ready.set(1 if ready else 0)
        if self.engine.served_version is not None:
            self.metrics.served_version.set(self.engine.served_version)
        detail = self.engine.status() if detailed else self.engine.public_status()
        return ReadyOut(ready=ready, detail=detail, adapter_set_version=self.engine.served_version)

    def operations(self, stale_after_s: float, seen_within_s: float = 86_400) -> OperationsOut:
        """Readiness, the training queue, workers heard from in the last day, and the gate's fires (the queue's
        figures are also set on their gauges, for /metrics)."""
        now = utcnow()
        with transaction(self.sessions) as session:
            counts, oldest, workers = ForgetRequestRepository(session).queue_health(
                now - timedelta(seconds=seen_within_s)
            )
        images, fires = self.metrics.gate_activity()
        ops = OperationsOut(
            readiness=self.readiness(),
            queue=QueueOut(
                waiting=counts.get(JobStatus.QUEUED, 0),
                running=counts.get(JobStatus.RUNNING, 0),
                oldest_waiting_s=None if oldest is None else round((now - _aware(oldest)).total_seconds(), 1),
            ),
            workers=[
                WorkerOut(
                    name=name,
                    last_heartbeat=_aware(beat),
                    running_jobs=int(running),
                    alive=(now - _aware(beat)).total_seconds() < stale_after_s,
                )
                for name, beat, running in workers
            ],
            gate=GateActivityOut(
                images=images,
                fires=[GateFiresOut(adapter_id=a, fires=n) for a, n in sorted(fires.items(), key=lambda f: -f[1])],
            ),
        )
        self.metrics.jobs_waiting.set(ops.queue.waiting)
        self.metrics.jobs_running.set(ops.queue.running)
        self.metrics.workers_alive.set(sum(w.alive for w in ops.workers))
        return ops


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
