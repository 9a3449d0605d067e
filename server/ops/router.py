"""/healthz, /readyz, /metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.keys.models import ADMIN
from server.auth import Principal, authenticated, optional_admin, require
from server.dependencies import ops_service
from server.ops.schemas import HealthOut, KeyOut, OperationsOut, ReadyOut, SigningKeyOut
from server.ops.service import OpsService
from server.schemas import ERROR_RESPONSES

router = APIRouter(tags=["operations"])
Service = Annotated[OpsService, Depends(ops_service)]


@router.get("/healthz", response_model=HealthOut, summary="The process is up")
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "Not ready"}},
    summary="Ready only when the model and the whole active set are loaded",
)
def readyz(service: Service, admin: Annotated[bool, Depends(optional_admin)]) -> JSONResponse:
    # Anonymous probes learn the state; why it failed (file paths, exception text) only an admin key sees.
    result = service.readiness(detailed=admin)
    return JSONResponse(result.model_dump(), status_code=200 if result.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(require(ADMIN))],
    responses={code: ERROR_RESPONSES[code] for code in (401, 403)},
)
def metrics(service: Service, request: Request) -> Response:
    service.operations(request.app.state.settings.heartbeat_stale_s)  # readiness and queue gauges, read now
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/operations",
    response_model=OperationsOut,
    summary="Readiness, the training queue, workers seen and the gate's fires per module (the console's health page)",
    dependencies=[Depends(require(ADMIN))],
    responses={code: ERROR_RESPONSES[code] for code in (401, 403)},
)
def operations(service: Service, request: Request) -> OperationsOut:
    return service.operations(request.app.state.settings.heartbeat_stale_s)


@router.get(
    "/v1/me",
    response_model=KeyOut,
    summary="The calling API key: its id, name and scopes (what a client may offer it)",
    responses={401: ERROR_RESPONSES[401]},
)
def me(principal: Annotated[Principal, Depends(authenticated)]) -> KeyOut:
    return KeyOut(id=principal.key_id, name=principal.name, scopes=list(principal.scopes))


@router.get(
    "/.well-known/lethe-signing-key",
    response_model=SigningKeyOut,
    summary="Public key that verifies erasure certificates (base64 raw Ed25519)",
)
def signing_key(service: Service) -> SigningKeyOut:
    return SigningKeyOut(algorithm="Ed25519", key_id=service.signer.key_id, public_key=service.signer.public_key)
