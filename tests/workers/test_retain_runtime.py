"""A real checkpoint served with the operator's retain folder: the tiny world's model loaded as if it came from
elsewhere (LETHE_MODEL_PATH) and a folder `lethe retain init` wrote; no world in the data dir at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.db import transaction
from core.forget_requests.repository import ForgetRequestRepository
from core.queue import TrainPayload
from core.settings import Settings
from server.app import create_app
from tests.helpers import ADMIN_TOKEN, request_body
from unlearning.cagul.config import TOKEN_GATE_THRESHOLD_FLOOR
from unlearning.data import pixels_sha256
from unlearning.retain import RetainFolder
from unlearning.world import World
from unlearning.world.requests import canary_people, write_retain_folder
from workers import runtime as runtime_module
from workers.training import job_config, run_training_job


def test_checkpoints_without_an_identity_encoder_train_token_gates_with_the_answer_length():
    settings = Settings(train_max_answer_tokens=7)
    assert job_config({}, settings).discriminator_input == "identity"
    config = job_config({"steps": 3}, settings, token_shape=(576, 4096))  # LLaVA-1.5-7B: flattened, 300M parameters
    assert config.discriminator_input == "attention_pool" and config.max_answer_tokens == 7 and config.steps == 3
    # Qwen2-VL-7B's gate reads a pooled 4x4 grid: flattened is 7.3M parameters, and false-fires less.
    qwen = job_config({}, settings, token_shape=(16, 3584))
    assert qwen.discriminator_input == "flatten"
    # Token gates start at the floor a retry for a missed subject reaches; the identity gate keeps its own.
    assert qwen.threshold_floor == TOKEN_GATE_THRESHOLD_FLOOR < job_config({}, settings).threshold_floor


@pytest.fixture()
def checkpoint_env(
    tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    retain = tmp_path / "retain"
    write_retain_folder(tiny_world, retain)
    env = {
        "DATA_DIR": tmp_path / "data",  # empty: nothing may come from a world
        "WORLD": "tiny",
        "MODEL_PATH": tiny_world.reference_model_dir,
        "RETAIN_DIR": retain,
        "DATABASE_URL": pg_url,
        "BROKER_URL": redis_url,
        "ARTIFACT_ROOT": tmp_path / "modules",
        "BOOTSTRAP_ADMIN_KEY": ADMIN_TOKEN,
        "MASTER_KEY_FILE": tmp_path / "config" / "master.key",
        "VERIFY_MAX_BENIGN_FIRE": 0.06,  # the tiny world's identity encoder, as in tests.helpers
        "VERIFY_MAX_ATTEMPTS": 1,
    }
    for name, value in env.items():
        monkeypatch.setenv(f"LETHE_{name}", str(value))
    runtime_module.runtime.cache_clear()
    yield retain
    runtime_module.runtime.cache_clear()
    runtime_module._retain_source.cache_clear()


@pytest.mark.slow
def test_a_request_trains_and_verifies_against_the_retain_folder(tiny_world: World, checkpoint_env: Path):
    rt = runtime_module.runtime()
    assert isinstance(rt.source, RetainFolder) and rt.source.root == checkpoint_env
    canary = canary_people(tiny_world)[0].id
    assert rt.people_in([pixels_sha256(tiny_world.image(canary, 0))]) == [canary]  # by photo, against the folder
    with TestClient(create_app(rt.settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        created = client.post("/v1/forget-requests", json=request_body(tiny_world, "p000"))
        assert created.status_code == 202, created.text
        request_id = created.json()["id"]
        with transaction(rt.sessions) as session:
            job = ForgetRequestRepository(session).latest_job(request_id)
            assert job is not None
        status = run_training_job(rt, TrainPayload(request_id=request_id, job_id=job.id))
        final = client.get(f"/v1/forget-requests/{request_id}").json()
        report = client.get(f"/v1/forget-requests/{request_id}/report").json()["report"]
    assert status == "active", final
    criteria = {c["name"]: c for c in report["verification"]["criteria"]}
    assert criteria["leak"]["passed"] and criteria["retain_identical"]["passed"]
    assert report["train"]["heldout_tpr"] > 0.5
    assert not (Path(rt.settings.data_dir) / "worlds").exists()
