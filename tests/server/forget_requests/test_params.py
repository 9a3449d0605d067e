"""A request's `params` against the operator's allow-list, over HTTP on real PostgreSQL and Redis: cost within
bounds, no text the model would say, and nothing stored or queued on rejection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from server.app import create_app
from tests.helpers import ADMIN_TOKEN, assert_error, request_body, service_settings, stored_requests, wait_for
from unlearning.world import World

# What a review found a forget:write key could send, and what the 422 must name.
OVER_BOUNDS: list[tuple[dict[str, Any], str]] = [
    ({"steps": 10**9}, "params.steps is 1000000000; it must be a whole number from 1 to 2000"),
    ({"discriminator_steps": 10**9}, "params.discriminator_steps is 1000000000; it must be a whole number from 1 to"),
    ({"batch_size": 10**9}, "params.batch_size is 1000000000; it must be a whole number from 1 to 64"),
    ({"encoder_hidden": 10**9}, "params.encoder_hidden is 1000000000; it must be a whole number from 1 to 1024"),
    ({"steps": 0}, "from 1 to 2000"),
    ({"steps": 2.5}, "whole number"),
    ({"steps": True}, "whole number"),
    ({"steps": "many"}, "whole number"),
    ({"lr": 50.0}, "params.lr is 50.0; it must be a number from 1e-05 to 0.1"),
    ({"token_rule": "lowest"}, "params.token_rule cannot be set by a request; it may set batch_size (1 to 64)"),
    ({"forget_target": "fabricated"}, "params.forget_target cannot be set by a request"),
    ({"stepz": 10}, "params.stepz cannot be set by a request"),
    ({"probe_questions": [f"who is {i}?" for i in range(17)]}, "has 17 questions; it must have 1 to 16"),
    ({"probe_questions": ["who? " * 300]}, "params.probe_questions[0] has 1499 characters; it must have 1 to 1000"),
    ({"probe_questions": ["   "]}, "params.probe_questions[0] has 0 characters"),
    ({"probe_questions": "who is this?"}, "must be a list of questions"),
]
OPERATOR_TEXT = (
    "params.refusal_answer: the text the model answers with is operator configuration (LETHE_REFUSAL_ANSWER)"
)


@pytest.fixture()
def make_client(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator:
    clients: list[TestClient] = []

    def make(**settings: Any) -> TestClient:
        app = create_app(service_settings(tiny_world, tmp_path, pg_url, redis_url, **settings))
        client = TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).__enter__()
        clients.append(client)
        wait_for(lambda: client.get("/readyz").status_code == 200, 60, what="the engine to load")
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def queued(redis_url: str) -> int:
    return int(redis.Redis.from_url(redis_url).llen("train"))


def test_params_past_the_default_bounds_are_a_422_that_names_them(make_client, tiny_world, pg_url, redis_url):
    client = make_client()
    for params, fragment in OVER_BOUNDS:
        response = client.post("/v1/forget-requests", json=request_body(tiny_world, "p002", params=params))
        assert_error(response, 422, "invalid_request", fragment)
    assert stored_requests(pg_url) == 0 and queued(redis_url) == 0


def test_the_refusal_text_is_not_request_input(make_client, tiny_world, pg_url, redis_url):
    client = make_client()
    for params in (
        {"refusal_answer": "this person is a convicted fraudster."},
        {"refusal_answer": "i cannot share that."},
    ):
        response = client.post("/v1/forget-requests", json=request_body(tiny_world, "p002", params=params))
        assert_error(response, 422, "invalid_request", OPERATOR_TEXT)
    assert stored_requests(pg_url) == 0 and queued(redis_url) == 0


def test_params_within_bounds_are_stored(make_client, tiny_world, pg_url, redis_url):
    client = make_client()
    params = {"steps": 2000, "batch_size": 64, "lr": 0.01, "probe_questions": ["who is she?"] * 16}
    response = client.post("/v1/forget-requests", json=request_body(tiny_world, "p002", params=params))
    assert response.status_code == 202, response.text
    assert client.get(f"/v1/forget-requests/{response.json()['id']}").json()["params"] == params
    assert stored_requests(pg_url) == 1 and queued(redis_url) == 1


def test_the_operator_sets_the_bounds(make_client, tiny_world, pg_url, redis_url):
    client = make_client(request_param_bounds={"steps": (1, 10)}, max_probe_questions=0)
    for params, fragment in [
        ({"steps": 11}, "params.steps is 11; it must be a whole number from 1 to 10"),
        ({"batch_size": 8}, "params.batch_size cannot be set by a request; it may set steps (1 to 10) "),
        ({"probe_questions": ["who?"]}, "LETHE_MAX_PROBE_QUESTIONS=0"),
    ]:
        body = request_body(tiny_world, "p002", params=params)
        assert_error(client.post("/v1/forget-requests", json=body), 422, "invalid_request", fragment)
    assert stored_requests(pg_url) == 0
    ok = client.post("/v1/forget-requests", json=request_body(tiny_world, "p002", params={"steps": 10}))
    assert ok.status_code == 202, ok.text
