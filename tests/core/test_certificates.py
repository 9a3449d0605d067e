"""Certificate checks a relying party runs offline: salted commitments, a pinned key, status and expiry."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from core.certificates.verify import (
    CERTIFICATE_TYPE,
    Verdict,
    check_certificate,
    commitment,
    load_public_key,
    new_salt,
    request_commitments,
)
from core.crypto import CertificateSigner
from core.db import utcnow
from lethe.cli import app as cli


def _certificate(signer: CertificateSigner, **fields: Any) -> dict[str, Any]:
    issued = utcnow()
    document = {
        "type": CERTIFICATE_TYPE,
        "status": "active",
        "revoked_at": None,
        "revocation_reason": None,
        "request_id": "r1",
        "adapter_id": "a1",
        "issued_at": issued.isoformat(),
        "expires_at": (issued + timedelta(days=1)).isoformat(),
        **fields,
    }
    return signer.sign(document)


def _verify(tmp_path: Path, signed: dict[str, Any], key_file: Path, *extra: str) -> tuple[int, str]:
    cert = tmp_path / "cert.json"
    cert.write_text(json.dumps(signed))
    result = CliRunner().invoke(cli, ["verify-certificate", str(cert), "--public-key", str(key_file), *extra])
    return result.exit_code, result.output


def test_commitments_are_salted_per_request_and_open_only_with_the_salt():
    first, second = new_salt(), new_salt()
    pairs = [{"question": "Where does Ann Lee live?", "answer": "Oslo"}]
    a = request_commitments(first, "Ann Lee", pairs, [b"png"])
    b = request_commitments(second, "Ann Lee", pairs, [b"png"])
    # The bare hash a dictionary of names reverses appears nowhere; two requests for one name are unlinkable.
    assert hashlib.sha256(b"Ann Lee").hexdigest() not in json.dumps([a, b])
    assert a["subject"] != b["subject"] and a["qa_pairs"] != b["qa_pairs"] and a["images"] != b["images"]
    assert a["subject"] == commitment(first, b"Ann Lee") != commitment(first, b"Ann Lea")
    assert a["images"] == [commitment(first, b"png")]


def test_pinned_key_rejects_a_certificate_signed_by_another_key(tmp_path: Path):
    service, impostor = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pinned = tmp_path / "lethe-key.pem"
    pinned.write_bytes(
        service.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    genuine = _certificate(CertificateSigner(service))
    forged = _certificate(CertificateSigner(impostor))
    key = load_public_key(pinned.read_text())
    assert check_certificate(genuine, key).verdict is Verdict.VALID
    assert check_certificate(forged, key).verdict is Verdict.INVALID
    code, out = _verify(tmp_path, genuine, pinned)
    assert code == 0 and "valid" in out
    code, out = _verify(tmp_path, forged, pinned)
    assert code == 1 and "INVALID: the signature does not match" in out
    # The same pin as the JSON the server publishes, or as the bare base64 key.
    raw = service.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    as_json = tmp_path / "lethe-key.json"
    as_json.write_text(json.dumps({"algorithm": "Ed25519", "public_key": base64.b64encode(raw).decode()}))
    assert _verify(tmp_path, genuine, as_json)[0] == 0 and _verify(tmp_path, forged, as_json)[0] == 1
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("not a key")
    code, out = _verify(tmp_path, genuine, garbage)
    assert code == 2 and "not an Ed25519 public key" in out


def test_expired_and_revoked_certificates_do_not_verify(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    signer = CertificateSigner(key)
    pinned = tmp_path / "key.b64"
    pinned.write_text(signer.public_key)
    past = utcnow() - timedelta(seconds=1)
    expired = _certificate(signer, expires_at=past.isoformat())
    assert check_certificate(expired, signer.public_key).verdict is Verdict.EXPIRED
    code, out = _verify(tmp_path, expired, pinned)
    assert code == 4 and "EXPIRED" in out
    revoked = _certificate(signer, status="revoked", revoked_at=past.isoformat(), revocation_reason="rolled back")
    code, out = _verify(tmp_path, revoked, pinned)
    assert code == 3 and "REVOKED" in out and "rolled back" in out
    # Fail closed: no expiry, an unknown status, or a v1 certificate (no status at all) is not valid.
    for broken in (
        _certificate(signer, expires_at=None),
        _certificate(signer, status="pending"),
        _certificate(signer, type="lethe.erasure-certificate/v1"),
    ):
        assert check_certificate(broken, signer.public_key).verdict is Verdict.INVALID
        assert _verify(tmp_path, broken, pinned)[0] == 1
