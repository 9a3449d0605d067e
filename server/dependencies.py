"""FastAPI dependencies: the services, built from what the app holds in its state."""

from __future__ import annotations

from fastapi import Request

from server.adapters.service import AdapterService
from server.audit.service import AuditService
from server.certificates.service import CertificateService
from server.forget_requests.service import ForgetRequestService
from server.ops.service import OpsService
from server.vqa.service import VQAService


def forget_request_service(request: Request) -> ForgetRequestService:
    state = request.app.state
    return ForgetRequestService(state.sessions, state.settings, state.celery, state.engine, state.master_key)


def certificate_service(request: Request) -> CertificateService:
    state = request.app.state
    return CertificateService(state.sessions, state.settings, state.signer)


def adapter_service(request: Request) -> AdapterService:
    return AdapterService(request.app.state.sessions, request.app.state.engine)


def vqa_service(request: Request) -> VQAService:
    return VQAService(request.app.state.settings, request.app.state.engine)


def ops_service(request: Request) -> OpsService:
    state = request.app.state
    return OpsService(state.sessions, state.engine, state.metrics, state.signer)


def audit_service(request: Request) -> AuditService:
    return AuditService(request.app.state.sessions)
