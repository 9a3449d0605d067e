"""What a relying party checks: salted commitments, the signature against a pinned key, status and expiry."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.crypto import canonical_json, verify_certificate
from core.db import utcnow

CERTIFICATE_TYPE = "lethe.erasure-certificate/v2"
STATUS_TYPE = "lethe.certificate-status/v1"
# commitment = hex HMAC-SHA256(key=salt, message=value): without the salt a dictionary of names cannot be tried.
COMMITMENT_SCHEME = "hmac-sha256"
SALT_BYTES = 32


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def commitment(salt: bytes, value: bytes) -> str:
    return hmac.new(salt, value, hashlib.sha256).hexdigest()


def request_commitments(
    salt: bytes,
    subject: str,
    qa_pairs: Sequence[dict[str, Any]],
    images: Sequence[bytes],
    aliases: Sequence[str] = (),
) -> dict[str, Any]:
    """Commitments to what a request filed: the subject (UTF-8), each QA pair (canonical JSON), each image file and
    each name the subject goes by (UTF-8, as stored)."""
    return {
        "scheme": COMMITMENT_SCHEME,
        "subject": commitment(salt, subject.encode()),
        "qa_pairs": [commitment(salt, canonical_json(dict(pair))) for pair in qa_pairs],
        "images": [commitment(salt, data) for data in images],
        "aliases": [commitment(salt, alias.encode()) for alias in aliases],
    }


def load_public_key(text: str) -> str:
    """The base64 raw Ed25519 key in a pinned key file: PEM, the JSON of /.well-known/lethe-signing-key, or base64."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("the PEM key is not an Ed25519 public key")
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            if text.startswith("{"):
                published = json.loads(text)
                if published.get("algorithm", "Ed25519") != "Ed25519":
                    raise ValueError(f"the key is for {published['algorithm']}, not Ed25519")
                text = published["public_key"]
            raw = base64.b64decode(text, validate=True)
            Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
        raise ValueError(
            f"not an Ed25519 public key ({exc}): give a PEM file, the JSON of /.well-known/lethe-signing-key, "
            "or the base64 raw key"
        ) from None
    return base64.b64encode(raw).decode()


class Verdict(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    message: str


def _invalid(why: str) -> Check:
    return Check(Verdict.INVALID, f"INVALID: {why}")


def _judge(document: dict[str, Any], now: datetime) -> Check:
    """Revoked before expired: a revocation is final, an expired active certificate only needs renewing."""
    status = document.get("status")
    if status == "revoked":
        reason = document.get("revocation_reason") or "no reason given"
        return Check(Verdict.REVOKED, f"REVOKED at {document.get('revoked_at')}: {reason}")
    if status != "active":
        return _invalid(f"unknown status {status!r}")
    try:
        expires_at = datetime.fromisoformat(str(document["expires_at"]))
    except (KeyError, ValueError):
        return _invalid("the certificate carries no valid expires_at")
    if expires_at.tzinfo is None:
        return _invalid("expires_at has no time zone")
    if now >= expires_at:
        return Check(Verdict.EXPIRED, f"EXPIRED at {expires_at.isoformat()}: fetch a fresh certificate")
    return Check(Verdict.VALID, f"valid until {expires_at.isoformat()}")


def check_certificate(signed: Any, public_key: str, now: datetime | None = None) -> Check:
    """The verdict on a certificate (as returned by GET .../certificate) against the pinned `public_key`."""
    if not isinstance(signed, dict) or not verify_certificate(signed, public_key):
        return _invalid("the signature does not match this certificate and key")
    document = signed["certificate"]
    if not isinstance(document, dict) or document.get("type") != CERTIFICATE_TYPE:
        return _invalid(f"not a {CERTIFICATE_TYPE} document")
    return _judge(document, now or utcnow())


def check_status(
    signed: Any, certificate: dict[str, Any], public_key: str, nonce: str, now: datetime | None = None
) -> Check:
    """The verdict on a live status answer for `certificate`, fetched with `nonce` (so no old answer replays)."""
    if not isinstance(signed, dict) or not verify_certificate(signed, public_key):
        return _invalid("the status answer is not signed by the pinned key")
    document = signed["certificate"]
    if not isinstance(document, dict) or document.get("type") != STATUS_TYPE:
        return _invalid(f"the status answer is not a {STATUS_TYPE} document")
    for field in ("request_id", "adapter_id"):
        if document.get(field) != certificate.get(field):
            return _invalid(f"the status answer is about another {field} ({document.get(field)})")
    if document.get("nonce") != nonce:
        return _invalid("the status answer does not echo this check's nonce (a replayed answer?)")
    return _judge(document, now or utcnow())
