"""Access and idempotency: every endpoint x every scope (401 vs 403), keys hashed and revocable, and
`Idempotency-Key` replays, conflicts and races, on a real PostgreSQL and Redis."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from core.db import make_engine, make_session_factory, transaction
from core.forget_requests.models import ForgetRequest
from core.keys.models import SCOPES, ApiKey
from core.keys.repository import ApiKeyRepository
from server.app import create_app
from tests.helpers import ADMIN_TOKEN, request_body, service_settings, wait_for
from unlearning.world import World

ID = "00000000-0000-4000-8000-000000000000"
# (method, path, scope it needs); None: open to anyone (probes).
ENDPOINTS = [
    ("POST", "/v1/forget-requests", "forget:write"),
    ("GET", "/v1/forget-requests", "forget:read"),
    ("GET", f"/v1/forget-requests/{ID}", "forget:read"),
    ("GET", f"/v1/forget-requests/{ID}/events", "forget:read"),
    ("POST", f"/v1/forget-requests/{ID}/cancel", "forget:write"),
    ("GET", f"/v1/forget-requests/{ID}/report", "forget:read"),
    ("GET", "/v1/adapters", "forget:read"),
    ("GET", f"/v1/adapters/{ID}", "forget:read"),
    ("POST", f"/v1/adapters/{ID}/activate", "admin"),
    ("POST", f"/v1/adapters/{ID}/deactivate", "admin"),
    ("GET", "/v1/adapter-set", "forget:read"),
    ("POST", "/v1/vqa", "vqa"),
    ("GET", "/metrics", "admin"),
    ("GET", "/v1/audit", "admin"),
    ("GET", "/v1/operations", "admin"),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
]


@pytest.fixture()
def app_and_db(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[tuple[TestClient, str]]:
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url)
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, 60, what="the engine to load")
        yield client, pg_url


def test_every_endpoint_checks_its_scope(app_and_db: tuple[TestClient, str]):
    client, pg_url = app_and_db
    sessions = make_session_factory(make_engine(pg_url))
    with transaction(sessions) as session:
        repo = ApiKeyRepository(session)
        tokens = {scope: repo.create(f"only {scope}", [scope])[1] for scope in SCOPES}
        revoked_key, revoked = repo.create("revoked", ["admin"])
        repo.revoke(revoked_key.id)
        stored = {k.token_sha256 for k in session.scalars(select(ApiKey))}
    # Only hashes are stored.
    assert all(hashlib.sha256(t.encode()).hexdigest() in stored for t in tokens.values())
    assert not any(t in stored for t in tokens.values())

    checked = 0
    for method, path, needed in ENDPOINTS:
        anonymous = client.request(method, path)
        if needed is None:
            assert anonymous.status_code not in (401, 403), path
            continue
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert anonymous.json()["error"] == "unauthorized"
        for bad in (revoked, "lethe_0123456789ab_wrong-secret-wrong-secret", "not-a-key"):
            assert client.request(method, path, headers={"Authorization": f"Bearer {bad}"}).status_code == 401
        for scope, token in tokens.items():
            response = client.request(method, path, headers={"Authorization": f"Bearer {token}"})
            if scope == needed or scope == "admin":
                assert response.status_code not in (401, 403), (method, path, scope, response.text)
            else:
                assert response.status_code == 403, (method, path, scope, response.text)
                assert response.json() == {"error": "forbidden", "detail": f"this API key lacks the {needed!r} scope"}
            checked += 1
    assert checked == 15 * len(SCOPES)


def _count(pg_url: str) -> int:
    with make_session_factory(make_engine(pg_url))() as session:
        return int(session.scalar(select(func.count()).select_from(ForgetRequest)) or 0)


def test_idempotency_key_replays_conflicts_and_races(app_and_db: tuple[TestClient, str], tiny_world: World):
    client, pg_url = app_and_db
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = request_body(tiny_world, "p000")
    first = client.post("/v1/forget-requests", json=body, headers={**auth, "Idempotency-Key": "k1"})
    again = client.post("/v1/forget-requests", json=body, headers={**auth, "Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = client.post("/v1/forget-requests", json={**body, "subject": "x"}, headers={**auth, "Idempotency-Key": "k1"})
    assert other.status_code == 409 and other.json()["error"] == "conflict"
    assert _count(pg_url) == 1

    race_body = request_body(tiny_world, "p001")

    def post(_: int) -> tuple[int, str]:
        r = client.post("/v1/forget-requests", json=race_body, headers={**auth, "Idempotency-Key": "race"})
        return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(post, range(20)))
    assert {status for status, _ in results} == {202}
    assert len({rid for _, rid in results}) == 1
    assert _count(pg_url) == 2
