"""Readiness (model and whole active set loaded, database reachable) and the Prometheus registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from core.crypto import CertificateSigner
from server.inference import InferenceEngine
from server.ops.schemas import ReadyOut


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
