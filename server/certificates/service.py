"""Certificates: what was forgotten (salted commitments), by which module, verified how, valid until when."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.certificates.repository import CertificateRepository, CertificateState
from core.certificates.verify import CERTIFICATE_TYPE, STATUS_TYPE
from core.crypto import CertificateSigner
from core.db import transaction, utcnow
from core.errors import ConflictError, NotFoundError
from core.settings import Settings


class CertificateService:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings, signer: CertificateSigner) -> None:
        self.sessions = sessions
        self.settings = settings
        self.signer = signer

    def _validity(self) -> dict[str, str]:
        issued_at = utcnow()
        expires_at = issued_at + timedelta(seconds=self.settings.certificate_validity_s)
        return {"issued_at": issued_at.isoformat(), "expires_at": expires_at.isoformat()}

    def certificate(self, request_id: str) -> dict[str, Any]:
        """The signed certificate of the request's latest served module, active or revoked."""
        with transaction(self.sessions) as session:
            state = CertificateRepository(session).state(request_id)
            request, adapter = state.request, state.adapter
            document = {
                "type": CERTIFICATE_TYPE,
                **_status_fields(state),
                "request_id": request.id,
                # Salted: the salt went only to the requester, so nobody else can try a dictionary of names.
                "commitments": request.commitments,
                "method": request.method,
                "adapter_id": adapter.id,
                "adapter_sha256": adapter.sha256,
                "base_model_fingerprint": adapter.base_fingerprint,
                "verification": _certified_verification((request.report or {}).get("verification")),
                "filed_at": request.created_at.isoformat(),
                "activated_at": adapter.activated_at.isoformat() if adapter.activated_at else None,
                "uploads_purged_at": request.purged_at.isoformat() if request.purged_at else None,
                **self._validity(),
            }
        return self.signer.sign(document)

    def status(self, request_id: str, adapter_id: str | None, nonce: str | None) -> dict[str, Any]:
        """The signed live status of a certificate, for a relying party that holds one; no commitments."""
        try:
            with transaction(self.sessions) as session:
                state = CertificateRepository(session).state(request_id, adapter_id)
                document = {
                    "type": STATUS_TYPE,
                    "request_id": state.request.id,
                    "adapter_id": state.adapter.id,
                    **_status_fields(state),
                    "nonce": nonce,
                    **self._validity(),
                }
        except (NotFoundError, ConflictError):
            # One answer for "no such request" and "never certified": the endpoint is public.
            raise NotFoundError(f"no certificate was issued for request {request_id}") from None
        return self.signer.sign(document)


def _status_fields(state: CertificateState) -> dict[str, Any]:
    return {
        "status": str(state.status),
        "revoked_at": state.revoked_at.isoformat() if state.revoked_at else None,
        "revocation_reason": state.reason,
    }


def _certified_verification(verification: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a certificate states about verification: the outcome and each criterion's figures, no case text."""
    if not verification:
        return verification
    keep = ("outcome", "passed", "criteria")
    return {k: verification[k] for k in keep if k in verification} or verification
