"""/v1/forget-requests: file (JSON with base64 images, or multipart), list, get, events, cancel, report."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.errors import InvalidRequestError
from core.forget_requests.models import STATUSES
from core.keys.models import FORGET_READ, FORGET_WRITE
from server.auth import Principal, require
from server.certificates.schemas import SignedOut
from server.certificates.service import CertificateService
from server.dependencies import certificate_service, forget_request_service
from server.forget_requests.schemas import EventOut, ForgetRequestIn, ForgetRequestOut, ReportOut
from server.forget_requests.service import ForgetRequestService
from server.schemas import ERROR_RESPONSES, Limit, Offset, Page, UUIDPath, check_choice, validation_message

router = APIRouter(prefix="/v1/forget-requests", tags=["forget requests"], responses=ERROR_RESPONSES)
Service = Annotated[ForgetRequestService, Depends(forget_request_service)]
Reader = Annotated[Principal, Depends(require(FORGET_READ))]
Writer = Annotated[Principal, Depends(require(FORGET_WRITE))]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=255,
        description="Makes the create safe to retry: the same key and body return the same request, "
        "the same key with another body is a 409.",
    ),
]

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["request", "images"],
    "properties": {
        "request": {
            "type": "string",
            "description": "The JSON body without `images` (subject, qa_pairs, aliases, ...).",
        },
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
    },
}


async def _parse_body(request: Request, service: ForgetRequestService) -> tuple[ForgetRequestIn, list[bytes] | None]:
    # The body's size is limited as it arrives (server.body_limit), before this parses it.
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=service.settings.max_images + 1, max_fields=10)
            if not isinstance(form.get("request"), str):
                raise InvalidRequestError("multipart body needs a `request` field holding the JSON fields")
            fields = json.loads(str(form["request"]))
            if not isinstance(fields, dict) or "images" in fields:
                raise InvalidRequestError("the `request` field must be a JSON object without `images`")
            files = [f for f in form.getlist("images") if isinstance(f, UploadFile)]
            body = ForgetRequestIn.model_validate({**fields, "images": ["-"] * max(1, len(files))})
            return body, [await f.read() for f in files]
        if not content_type.startswith("application/json"):
            raise InvalidRequestError("send application/json (base64 images) or multipart/form-data")
        return ForgetRequestIn.model_validate_json(await request.body()), None
    except ValidationError as exc:
        raise InvalidRequestError(validation_message(exc)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the body is not valid JSON: {exc}") from None


@router.post(
    "",
    status_code=202,
    response_model=ForgetRequestOut,
    summary="File a deletion request",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ForgetRequestIn"}},
                "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            },
        }
    },
)
async def create_forget_request(
    request: Request,
    response: Response,
    service: Service,
    principal: Writer,
    idempotency_key: IdempotencyKey = None,
) -> ForgetRequestOut:
    body, files = await _parse_body(request, service)
    created, replayed = await run_in_threadpool(service.create, body, files, principal.key_id, idempotency_key)
    response.headers["Location"] = f"/v1/forget-requests/{created.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return created


@router.get("", response_model=Page[ForgetRequestOut], summary="List deletion requests, newest first")
def list_forget_requests(
    service: Service,
    _: Reader,
    limit: Limit = 20,
    offset: Offset = 0,
    status: Annotated[str | None, Query(description=f"One of {', '.join(STATUSES)}")] = None,
    label: Annotated[
        str | None,
        Query(
            min_length=4,
            max_length=64,
            pattern="^[0-9a-f]+$",
            description="Only requests whose `subject_label` starts with this (4 to 64 lowercase hex digits).",
        ),
    ] = None,
) -> Page[ForgetRequestOut]:
    items, total = service.page(limit, offset, check_choice("status", status, STATUSES), label)
    return Page[ForgetRequestOut](items=items, total=total, limit=limit, offset=offset)


@router.get("/{request_id}", response_model=ForgetRequestOut, summary="One deletion request")
def get_forget_request(request_id: UUIDPath, service: Service, principal: Reader) -> ForgetRequestOut:
    return service.get(str(request_id), principal.key_id)


@router.get("/{request_id}/events", response_model=list[EventOut], summary="Status changes and training progress")
def list_events(
    request_id: UUIDPath,
    service: Service,
    _: Reader,
    after: Annotated[int, Query(ge=0, description="Only events with a larger id (for polling).")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> list[EventOut]:
    return [EventOut.model_validate(e, from_attributes=True) for e in service.events(str(request_id), after, limit)]


@router.post("/{request_id}/cancel", response_model=ForgetRequestOut, summary="Cancel (honoured between steps)")
def cancel_forget_request(request_id: UUIDPath, service: Service, principal: Writer) -> ForgetRequestOut:
    return service.cancel(str(request_id), principal.actor)


@router.get("/{request_id}/report", response_model=ReportOut, summary="Training and verification report")
def get_report(request_id: UUIDPath, service: Service, _: Reader) -> ReportOut:
    status, report = service.report(str(request_id))
    return ReportOut(id=str(request_id), status=status, report=report)


@router.get(
    "/{request_id}/certificate",
    response_model=SignedOut,
    summary="Signed record of erasure with its status (active or revoked) and expiry (Ed25519; public key at "
    "/.well-known/lethe-signing-key)",
)
def get_certificate(
    request_id: UUIDPath, service: Annotated[CertificateService, Depends(certificate_service)], _: Reader
) -> SignedOut:
    return SignedOut(**service.certificate(str(request_id)))
