"""Fail closed: with an active module's artifact corrupted or missing, or its manifest edited, /readyz is false
and /v1/vqa a 503, never an answer without that module; a restored artifact is served again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.helpers import activate_module, app_client, b64_file, service_settings, wait_for
from unlearning.artifacts import MANIFEST, WEIGHTS
from unlearning.cagul import CagulConfig
from unlearning.cagul.module import CagulModule
from unlearning.world import World


def refusal(client: TestClient) -> Any:
    """/readyz once the background integrity pass has seen the change (never checked on the request path)."""
    return wait_for(lambda: (r := client.get("/readyz")).status_code == 503 and r, 10, 0.05, "the refusal")


def served(client: TestClient) -> None:
    wait_for(lambda: client.get("/readyz").status_code == 200, 10, 0.05, "the set to be served again")


def test_corrupted_or_missing_artifact_fails_closed(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str):
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url, engine_sync_interval_s=0.0)
    with app_client(settings) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        backbone = engine.gate.backbone
        module = CagulModule(CagulConfig(), backbone.n_visual_tokens, backbone.hidden_size, backbone.identity_dim)
        directory = tmp_path / "modules" / "m1"
        version = activate_module(pg_url, tiny_world, client, module, directory)

        vqa = {"image": b64_file(tiny_world, "p003", 0), "question": "what is this person's name?"}
        wait_for(lambda: client.get("/readyz").json()["adapter_set_version"] == version, 10, 0.05, "the new set")
        assert client.post("/v1/vqa", json=vqa).json()["adapter_set_version"] == version

        good = (directory / WEIGHTS).read_bytes()
        (directory / WEIGHTS).write_bytes(good[:-8] + b"tampered")
        ready = refusal(client)
        assert ready.status_code == 503 and "checksum" in ready.json()["detail"]
        refused = client.post("/v1/vqa", json=vqa)
        assert refused.status_code == 503 and refused.json()["error"] == "not_ready"
        assert "checksum" in refused.json()["detail"]

        (directory / WEIGHTS).write_bytes(good)
        served(client)
        assert client.post("/v1/vqa", json=vqa).status_code == 200

        # The manifest carries the config (token rule, share): weights intact, config edited, still refused.
        original = (directory / MANIFEST).read_bytes()
        edited = json.loads(original)
        edited["config"]["token_share"] = 0.5
        (directory / MANIFEST).write_text(json.dumps(edited, indent=1, sort_keys=True))
        ready = refusal(client)
        assert ready.status_code == 503 and "differs from the registry's checksum" in ready.json()["detail"]
        refused = client.post("/v1/vqa", json=vqa)
        assert refused.status_code == 503 and "registry's checksum" in refused.json()["detail"]
        (directory / MANIFEST).write_bytes(original)
        served(client)
        assert client.post("/v1/vqa", json=vqa).status_code == 200

        shutil.move(directory / WEIGHTS, tmp_path / "elsewhere")
        refusal(client)
        missing = client.post("/v1/vqa", json=vqa)
        assert missing.status_code == 503 and "missing" in missing.json()["detail"]
