"""Erasure certificates: Ed25519-signed, verifiable with the published key (library and CLI), tamper-evident."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from core.adapters.models import ACTIVE
from core.adapters.repository import AdapterRepository
from core.crypto import verify_certificate
from core.db import make_engine, make_session_factory, transaction
from core.forget_requests.repository import ForgetRequestRepository
from lethe.cli import app as cli
from server.app import create_app
from tests.service.helpers import ADMIN_TOKEN, request_body, service_settings, wait_for
from unlearning.world import World


def test_certificate_is_signed_and_tamper_evident(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str):
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, 60, what="the engine to load")
        body = request_body(tiny_world, "p000")
        request_id = client.post("/v1/forget-requests", json=body).json()["id"]
        not_yet = client.get(f"/v1/forget-requests/{request_id}/certificate")
        assert not_yet.status_code == 409 and "only an active erasure" in not_yet.json()["detail"]

        # The signing mechanics; a module that really went through verification is certified in the
        # end-to-end flows (tests/service/test_end_to_end.py::check_certificate).
        criteria = [{"name": "leak", "reference": 0.9, "module": 0.0, "bound": 0.03, "threshold": 0.05}]
        certified = {"outcome": "passed", "passed": True, "criteria": criteria}
        verification = {**certified, "leaking_cases": [{"question": "q"}], "config": {"max_leak": 0.05}}
        with transaction(make_session_factory(make_engine(pg_url))) as session:
            requests = ForgetRequestRepository(session)
            request = requests.get(request_id)
            adapter = AdapterRepository(session).create(
                request_id=request_id,
                method="cagul",
                state=ACTIVE,
                path="/nowhere",
                sha256="a" * 64,
                base_fingerprint="b" * 64,
                trainable_params=1,
                report={},
            )
            request.adapter_id, request.report = adapter.id, {"verification": verification}
            requests.set_status(request, "active")

        signed = client.get(f"/v1/forget-requests/{request_id}/certificate").json()
        key = client.get("/.well-known/lethe-signing-key").json()
        assert key["algorithm"] == signed["algorithm"] == "Ed25519" and key["key_id"] == signed["key_id"]
        doc = signed["certificate"]
        assert doc["request_id"] == request_id and doc["adapter_sha256"] == "a" * 64
        assert doc["base_model_fingerprint"] == "b" * 64 and doc["verification"] == certified
        assert len(doc["image_sha256"]) == len(body["images"]) and doc["uploads_purged_at"]
        assert body["subject"] not in json.dumps(signed)  # hashes only
        assert verify_certificate(signed, key["public_key"])
        tampered = copy.deepcopy(signed)
        tampered["certificate"]["adapter_sha256"] = "c" * 64
        assert not verify_certificate(tampered, key["public_key"])

    runner = CliRunner()
    good, bad = tmp_path / "cert.json", tmp_path / "tampered.json"
    good.write_text(json.dumps(signed))
    bad.write_text(json.dumps(tampered))
    ok = runner.invoke(cli, ["verify-certificate", str(good), "--public-key", key["public_key"]])
    assert ok.exit_code == 0 and request_id in ok.stdout
    assert runner.invoke(cli, ["verify-certificate", str(bad), "--public-key", key["public_key"]]).exit_code == 1
