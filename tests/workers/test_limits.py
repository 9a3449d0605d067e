"""Limits the worker enforces itself, in-process on real PostgreSQL: the time budget, the delivery cap, the
operator's refusal text and the allow-list re-checked on rows filed before it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.adapters.repository import AdapterRepository
from core.crypto import master_key
from core.db import make_engine, make_session_factory, transaction, utcnow
from core.errors import InvalidRequestError
from core.forget_requests.repository import ForgetRequestRepository
from core.queue import TrainPayload
from core.settings import Settings
from server.app import create_app
from tests.helpers import ADMIN_TOKEN, request_body, service_settings
from unlearning.backbones import Backbone
from unlearning.world import World
from unlearning.world.requests import WorldRetain
from workers.runtime import Runtime
from workers.training import job_config, run_training_job

pytestmark = pytest.mark.slow


@pytest.fixture()
def make_service(tiny_world: World, backbone: Backbone, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator:
    engine = make_engine(pg_url)
    clients: list[TestClient] = []

    def make(**extra: object) -> tuple[TestClient, Runtime]:
        settings = service_settings(tiny_world, tmp_path, pg_url, redis_url, **extra)
        sessions = make_session_factory(engine)
        rt = Runtime(
            settings, sessions, backbone, backbone.fingerprint(), WorldRetain(tiny_world), master_key(settings)
        )
        client = TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).__enter__()
        clients.append(client)
        return client, rt

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    engine.dispose()  # before pg_url drops the database


def file(client: TestClient, rt: Runtime, body: dict) -> TrainPayload:
    created = client.post("/v1/forget-requests", json=body)
    assert created.status_code == 202, created.text
    with transaction(rt.sessions) as session:
        job = ForgetRequestRepository(session).latest_job(created.json()["id"])
        assert job is not None
        return TrainPayload(request_id=created.json()["id"], job_id=job.id)


def job_row(rt: Runtime, payload: TrainPayload) -> tuple[str, int, int]:
    """(job status, deliveries, adapters recorded for the request)."""
    with transaction(rt.sessions) as session:
        job = ForgetRequestRepository(session).get_job(payload.job_id)
        return job.status, job.deliveries, len(AdapterRepository(session).for_request(payload.request_id))


def test_a_job_over_its_time_budget_fails_and_says_so(make_service, tiny_world: World):
    client, rt = make_service(train_time_limit_s=2, verify_max_attempts=1)
    payload = file(client, rt, request_body(tiny_world, "p000", params={"steps": 2000, "discriminator_steps": 2000}))
    started = time.monotonic()
    assert run_training_job(rt, payload) == "failed"
    # Stopped between steps near its 2 s, not after 4,000 steps (minutes on these cores).
    assert time.monotonic() - started < 60
    final = client.get(f"/v1/forget-requests/{payload.request_id}").json()
    assert final["status"] == "failed"
    assert "time budget of 2 s ran out during" in final["error"] and "LETHE_TRAIN_TIME_LIMIT_S" in final["error"]
    assert job_row(rt, payload) == ("failed", 1, 0)


def test_a_job_at_its_delivery_cap_fails_instead_of_training(make_service, tiny_world: World):
    client, rt = make_service(max_deliveries=2, verify_max_attempts=1)
    payload = file(client, rt, request_body(tiny_world, "p000", params={"steps": 1, "discriminator_steps": 5}))
    with transaction(rt.sessions) as session:  # two workers already died on it (e.g. killed for memory)
        job = ForgetRequestRepository(session).get_job(payload.job_id)
        job.deliveries, job.status = 2, "running"
        job.heartbeat_at = utcnow() - timedelta(hours=1)
    assert run_training_job(rt, payload) == "failed"
    final = client.get(f"/v1/forget-requests/{payload.request_id}").json()
    assert "started 2 times and never finished" in final["error"] and "LETHE_MAX_DELIVERIES=2" in final["error"]
    assert job_row(rt, payload) == ("failed", 2, 0)
    assert run_training_job(rt, payload) == "failed"  # a later copy of the message finds it terminal
    assert job_row(rt, payload)[1] == 2


def test_a_row_filed_with_request_refusal_text_is_failed_not_trained(make_service, tiny_world: World):
    client, rt = make_service(verify_max_attempts=1)
    payload = file(client, rt, request_body(tiny_world, "p000"))
    filed_before_the_allow_list = {"refusal_answer": "she is a fraudster.", "steps": 1, "discriminator_steps": 5}
    with transaction(rt.sessions) as session:
        ForgetRequestRepository(session).get(payload.request_id).params = filed_before_the_allow_list
    assert run_training_job(rt, payload) == "failed"
    final = client.get(f"/v1/forget-requests/{payload.request_id}").json()
    assert final["error"].startswith("the request's parameters are not allowed: params.refusal_answer")
    assert job_row(rt, payload) == ("failed", 0, 0)


def test_the_module_trains_towards_the_operators_refusal():
    assert job_config({"steps": 10}, Settings(refusal_answer="no comment.")).refusal_answer == "no comment."
    assert job_config({}, Settings()).refusal_answer == "i cannot share that."  # the reference world's
    with pytest.raises(InvalidRequestError, match="operator configuration"):
        job_config({"refusal_answer": "she is a fraudster."}, Settings(refusal_answer="no comment."))
