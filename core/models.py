"""Every ORM model, imported once so that `Base.metadata` holds all tables (Alembic, tests)."""

from __future__ import annotations

from core.adapters.models import Adapter, AdapterSetVersion
from core.audit.models import AuditEvent
from core.callbacks.models import CallbackDelivery
from core.certificates.models import CertificateRevocation
from core.db import Base
from core.forget_requests.models import ForgetRequest, Job, JobEvent, RequestImage
from core.keys.models import ApiKey, IdempotencyRecord

__all__ = [
    "Adapter",
    "AdapterSetVersion",
    "ApiKey",
    "AuditEvent",
    "Base",
    "CallbackDelivery",
    "CertificateRevocation",
    "ForgetRequest",
    "IdempotencyRecord",
    "Job",
    "JobEvent",
    "RequestImage",
]
