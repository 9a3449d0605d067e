"""Response bodies of /v1/adapters and /v1/adapter-set."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class AdapterOut(BaseModel):
    id: str
    request_id: str
    version: int
    parent_id: str | None
    method: str
    state: str
    sha256: str
    base_fingerprint: str
    trainable_params: int
    report: dict[str, Any]
    created_at: datetime
    activated_at: datetime | None
    deactivated_at: datetime | None


class AdapterSetOut(BaseModel):
    version: int
    adapter_ids: list[str]
    served_version: int | None
    ready: bool
