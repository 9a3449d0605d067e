"""/v1/vqa."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from core.errors import InvalidRequestError
from core.keys.models import VQA
from server.auth import require
from server.dependencies import vqa_service
from server.schemas import ERROR_RESPONSES, validation_message
from server.vqa.schemas import VQAIn, VQAOut
from server.vqa.service import VQAService

router = APIRouter(prefix="/v1", tags=["vqa"], responses=ERROR_RESPONSES, dependencies=[Depends(require(VQA))])


async def _parse_body(request: Request) -> VQAIn:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise InvalidRequestError("send application/json: {question, image (optional): base64 PNG or JPEG}")
    try:
        return VQAIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise InvalidRequestError(validation_message(exc)) from None


@router.post(
    "/vqa",
    response_model=VQAOut,
    summary="Answer a question, about an image or none, active modules applied",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VQAIn"}}},
        }
    },
)
async def vqa(request: Request, service: Annotated[VQAService, Depends(vqa_service)]) -> VQAOut:
    # The body is read here, after the router's key check: an unauthenticated upload is never read, let alone parsed.
    body = await _parse_body(request)
    return await run_in_threadpool(service.answer, body)
