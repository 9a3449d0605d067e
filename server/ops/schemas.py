"""Response bodies of the operations endpoints."""

from __future__ import annotations

from pydantic import BaseModel


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
