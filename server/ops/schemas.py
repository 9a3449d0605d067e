"""Response bodies of the operations endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    ready: bool
    detail: str
    adapter_set_version: int | None


class SigningKeyOut(BaseModel):
    algorithm: str
    key_id: str
    public_key: str


class QueueOut(BaseModel):
    waiting: int = Field(description="Jobs of in-flight requests sent to the train queue and not yet started.")
    running: int = Field(description="Jobs a worker is training or verifying.")
    oldest_waiting_s: float | None = Field(description="How long the oldest waiting job has waited.")


class WorkerOut(BaseModel):
    name: str = Field(description="host:pid of a worker that heartbeated a job in the last day.")
    last_heartbeat: datetime
    running_jobs: int
    alive: bool = Field(description="Heard from within LETHE_HEARTBEAT_STALE_S.")


class GateFiresOut(BaseModel):
    adapter_id: str
    fires: int


class GateActivityOut(BaseModel):
    images: int = Field(description="Images /v1/vqa ran through the gate since this server started.")
    fires: list[GateFiresOut] = Field(description="Per module, how many of them it claimed; most first.")


class OperationsOut(BaseModel):
    readiness: ReadyOut
    queue: QueueOut
    workers: list[WorkerOut]
    gate: GateActivityOut


class KeyOut(BaseModel):
    id: str
    name: str
    scopes: list[str] = Field(description="What this key may do; `admin` holds every scope.")
