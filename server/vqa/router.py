"""/v1/vqa."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from core.keys.models import VQA
from server.auth import require
from server.dependencies import vqa_service
from server.schemas import ERROR_RESPONSES
from server.vqa.schemas import VQAIn, VQAOut
from server.vqa.service import VQAService

router = APIRouter(prefix="/v1", tags=["vqa"], responses=ERROR_RESPONSES, dependencies=[Depends(require(VQA))])


@router.post("/vqa", response_model=VQAOut, summary="Answer a question about an image, active modules applied")
def vqa(body: VQAIn, service: Annotated[VQAService, Depends(vqa_service)]) -> VQAOut:
    return service.answer(body)
