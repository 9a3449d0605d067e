"""/v1/certificate-status: the public, signed live status of an erasure certificate."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from server.certificates.schemas import SignedOut
from server.certificates.service import CertificateService
from server.dependencies import certificate_service
from server.schemas import ERROR_RESPONSES, UUIDPath

router = APIRouter(prefix="/v1/certificate-status", tags=["certificates"], responses=ERROR_RESPONSES)
Service = Annotated[CertificateService, Depends(certificate_service)]


@router.get(
    "/{request_id}",
    response_model=SignedOut,
    summary="Whether a certificate still holds (signed; no API key: for anyone relying on a certificate)",
)
def get_certificate_status(
    request_id: UUIDPath,
    service: Service,
    adapter_id: Annotated[
        uuid.UUID | None, Query(description="The certificate's adapter_id (default: the request's latest module).")
    ] = None,
    nonce: Annotated[
        str | None,
        Query(
            min_length=16,
            max_length=128,
            pattern=r"^[A-Za-z0-9_-]+$",
            description="A fresh random value, echoed in the signed answer so that an old answer cannot be replayed.",
        ),
    ] = None,
) -> SignedOut:
    return SignedOut(**service.status(str(request_id), str(adapter_id) if adapter_id else None, nonce))
