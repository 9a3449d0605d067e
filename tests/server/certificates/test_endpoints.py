"""Erasure certificates over real HTTP: signed status and expiry, revocation on rollback, salted commitments
shown only to the filing key, and `lethe verify-certificate` against a pinned key and the live status."""

from __future__ import annotations

import copy
import json
import socket
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from typer.testing import CliRunner

from core.adapters.models import AdapterState
from core.adapters.repository import AdapterRepository
from core.certificates.models import CertificateRevocation
from core.certificates.verify import commitment
from core.crypto import CertificateSigner, verify_certificate
from core.db import make_engine, make_session_factory, transaction
from core.forget_requests.models import RequestStatus
from core.forget_requests.repository import ForgetRequestRepository
from core.keys.repository import ApiKeyRepository
from lethe.cli import app as cli
from server.app import create_app
from tests.helpers import ADMIN_TOKEN, request_body, service_settings, wait_for
from unlearning.world import World

VALIDITY_S = 3600


@pytest.fixture()
def base_url(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[str]:
    """The API served by uvicorn on a local port: the CLI reaches it as a relying party would."""
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url, certificate_validity_s=VALIDITY_S)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 120, what="the engine to load")
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz").status_code == 200
    except httpx.TransportError:
        return False


def _activate(pg_url: str, request_id: str) -> str:
    """Mark the request erased by a (stand-in) module, as the worker's publish does after verification."""
    criteria = [{"name": "leak", "reference": 0.9, "module": 0.0, "bound": 0.03, "threshold": 0.05}]
    verification = {"outcome": "passed", "passed": True, "criteria": criteria, "leaking_cases": [{"question": "q"}]}
    with transaction(make_session_factory(make_engine(pg_url))) as session:
        requests = ForgetRequestRepository(session)
        request = requests.get(request_id)
        adapter = AdapterRepository(session).create(
            request_id=request_id,
            method="cagul",
            state=AdapterState.ACTIVE,
            path="/nowhere",
            sha256="a" * 64,
            base_fingerprint="b" * 64,
            trainable_params=1,
            report={},
        )
        request.adapter_id, request.report = adapter.id, {"verification": verification}
        requests.set_status(request, RequestStatus.ACTIVE)
        return adapter.id


def _verify(tmp_path: Path, signed: dict[str, Any], key_file: Path, *extra: str) -> tuple[int, str]:
    cert = tmp_path / f"cert-{len(list(tmp_path.glob('cert-*')))}.json"
    cert.write_text(json.dumps(signed))
    result = CliRunner().invoke(cli, ["verify-certificate", str(cert), "--public-key", str(key_file), *extra])
    return result.exit_code, result.output


def test_certificate_status_expiry_revocation_and_salted_commitments(
    tiny_world: World, tmp_path: Path, pg_url: str, base_url: str
):
    admin = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
    with transaction(make_session_factory(make_engine(pg_url))) as session:
        other_token = ApiKeyRepository(session).create("auditor", ["forget:read"])[1]
    other = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {other_token}"}, timeout=60)
    anonymous = httpx.Client(base_url=base_url, timeout=60)

    name = tiny_world.person("p000").name
    body = request_body(tiny_world, "p000", aliases=[name, name.split()[-1]])
    filed = [admin.post("/v1/forget-requests", json=body).json() for _ in range(2)]
    salts = [bytes.fromhex(f["commitment_salt"]) for f in filed]
    request_id = filed[0]["id"]
    assert len(salts[0]) == 32 and salts[0] != salts[1]
    # The salt goes to the key that filed the request, never to another key.
    assert admin.get(f"/v1/forget-requests/{request_id}").json()["commitment_salt"] == salts[0].hex()
    assert other.get(f"/v1/forget-requests/{request_id}").json()["commitment_salt"] is None
    assert salts[0].hex() not in other.get("/v1/forget-requests").text
    not_yet = admin.get(f"/v1/forget-requests/{request_id}/certificate")
    assert not_yet.status_code == 409 and "only an erasure whose module was activated" in not_yet.json()["detail"]
    assert anonymous.get(f"/v1/certificate-status/{request_id}").status_code == 404

    adapter_ids = [_activate(pg_url, f["id"]) for f in filed]
    # The service's copy of the salt goes with the uploads: only the requester can open the commitments now.
    assert admin.get(f"/v1/forget-requests/{request_id}").json()["commitment_salt"] is None
    certificates = [admin.get(f"/v1/forget-requests/{f['id']}/certificate").json() for f in filed]
    signed, doc = certificates[0], certificates[0]["certificate"]
    assert doc["status"] == "active" and doc["revoked_at"] is None and doc["adapter_id"] == adapter_ids[0]
    issued, expires = datetime.fromisoformat(doc["issued_at"]), datetime.fromisoformat(doc["expires_at"])
    assert (expires - issued).total_seconds() == VALIDITY_S  # the operator's setting
    assert doc["verification"] == {k: v for k, v in doc["verification"].items() if k != "leaking_cases"}
    commitments = doc["commitments"]
    assert commitments["subject"] == commitment(salts[0], body["subject"].encode())
    assert certificates[1]["certificate"]["commitments"]["subject"] == commitment(salts[1], body["subject"].encode())
    assert commitments["subject"] != certificates[1]["certificate"]["commitments"]["subject"]  # unlinkable
    assert len(commitments["qa_pairs"]) == len(body["qa_pairs"]) and len(commitments["images"]) == len(body["images"])
    raw_image = tiny_world.image_path("p000", tiny_world.train_views()[0]).read_bytes()
    assert commitments["images"][0] == commitment(salts[0], raw_image)
    assert commitments["aliases"] == [commitment(salts[0], alias.encode()) for alias in body["aliases"]]
    seen_by_other = other.get(f"/v1/forget-requests/{request_id}/certificate").text
    for text in (seen_by_other, json.dumps(signed), anonymous.get(f"/v1/certificate-status/{request_id}").text):
        assert salts[0].hex() not in text and body["subject"] not in text and "subject_sha256" not in text
        assert not any(f'"{alias}"' in text for alias in body["aliases"])

    published = anonymous.get("/.well-known/lethe-signing-key").json()
    assert published["key_id"] == signed["key_id"] and verify_certificate(signed, published["public_key"])
    pinned = tmp_path / "lethe-key.json"  # fetched once, over a channel the relying party trusts
    pinned.write_text(json.dumps(published))
    opened = [
        "--salt",
        salts[0].hex(),
        "--subject",
        body["subject"],
        *[a for x in body["aliases"] for a in ("--alias", x)],
    ]
    code, out = _verify(tmp_path, signed, pinned, "--server", base_url, *opened)
    assert code == 0 and request_id in out and f"status confirmed by {base_url}" in out and "subject matches" in out
    assert "every alias given matches" in out
    code, out = _verify(tmp_path, signed, pinned, *opened[:4], "--alias", name.upper())
    assert code == 1 and f"the alias {name.upper()!r} is not among" in out
    code, out = _verify(tmp_path, signed, pinned, "--salt", salts[1].hex(), "--subject", body["subject"])
    assert code == 1 and "does not match the certificate's commitment" in out
    tampered = copy.deepcopy(signed)
    tampered["certificate"]["adapter_sha256"] = "c" * 64
    assert not verify_certificate(tampered, published["public_key"])
    assert _verify(tmp_path, tampered, pinned)[0] == 1
    # A certificate signed by any other key fails against the pinned one, even if it is otherwise genuine.
    forged = CertificateSigner(Ed25519PrivateKey.generate()).sign(doc)
    code, out = _verify(tmp_path, forged, pinned)
    assert code == 1 and "INVALID" in out

    # Rolling the module back revokes its certificate: a revocation record, a revoked certificate, a revoked status.
    assert admin.post(f"/v1/adapters/{adapter_ids[0]}/deactivate").json()["state"] == "inactive"
    with make_session_factory(make_engine(pg_url))() as session:
        records = session.scalars(select(CertificateRevocation).where(CertificateRevocation.request_id == request_id))
        assert [(r.adapter_id, r.actor) for r in records] == [(adapter_ids[0], "key:" + _admin_key_id(pg_url))]
    revoked = admin.get(f"/v1/forget-requests/{request_id}/certificate").json()
    assert revoked["certificate"]["status"] == "revoked" and revoked["certificate"]["revoked_at"]
    assert "deactivated" in revoked["certificate"]["revocation_reason"]
    code, out = _verify(tmp_path, revoked, pinned)
    assert code == 3 and "REVOKED" in out
    # The certificate issued before the rollback still carries a good signature: only the live status tells.
    assert _verify(tmp_path, signed, pinned)[0] == 0
    code, out = _verify(tmp_path, signed, pinned, "--server", base_url)
    assert code == 3 and "REVOKED" in out
    status = anonymous.get(f"/v1/certificate-status/{request_id}", params={"adapter_id": adapter_ids[0]}).json()
    assert status["certificate"]["status"] == "revoked" and verify_certificate(status, published["public_key"])
    # Served again: the same module's certificate holds again; the revocation stays on record.
    assert admin.post(f"/v1/adapters/{adapter_ids[0]}/activate").json()["state"] == "active"
    assert _verify(tmp_path, signed, pinned, "--server", base_url)[0] == 0
    # A status answer signed by another key than the pinned one is refused.
    impostor = CertificateSigner(Ed25519PrivateKey.generate())
    impostor_pin = tmp_path / "impostor.b64"
    impostor_pin.write_text(impostor.public_key)
    code, out = _verify(tmp_path, impostor.sign(doc), impostor_pin, "--server", base_url)
    assert code == 1 and "not signed by the pinned key" in out


def _admin_key_id(pg_url: str) -> str:
    with make_session_factory(make_engine(pg_url))() as session:
        key = ApiKeyRepository(session).authenticate(ADMIN_TOKEN)
        assert key is not None
        return key.id
