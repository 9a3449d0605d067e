"""The console's page, its headers and static files, /docs offline, and the read endpoints it added (/v1/me,
/v1/operations, the label search), in-process on real PostgreSQL and Redis with no model loaded."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.db import make_engine, make_session_factory, transaction, utcnow
from core.forget_requests.models import RequestStatus
from core.forget_requests.repository import ForgetRequestRepository
from core.keys.repository import ApiKeyRepository
from core.settings import Settings
from server.app import create_app
from server.console.router import HERE
from tests.helpers import ADMIN_TOKEN, request_row

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture()
def client(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=pg_url,
        broker_url=redis_url,
        bootstrap_admin_key=ADMIN_TOKEN,  # type: ignore[arg-type]
        master_key_file=tmp_path / "config" / "master.key",
    )
    with TestClient(create_app(settings, load_model=False)) as c:
        yield c


def key_with(client: TestClient, *scopes: str) -> dict[str, str]:
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        _, token = ApiKeyRepository(session).create("reader", list(scopes))
    return {"Authorization": f"Bearer {token}"}


def test_the_page_is_a_shell_under_a_strict_csp(client: TestClient):
    page = client.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"
    html = page.text
    # Nothing inline for the CSP to have to allow: no script bodies, no style elements or attributes, no handlers.
    assert re.findall(r"<script[^>]*>([^<]+)</script>", html) == []
    assert "<style" not in html and " style=" not in html and not re.search(r"\son[a-z]+=", html)
    assets = re.findall(r'(?:src|href)="(/console/static/[^"]+)"', html)
    assert {a.rsplit("/", 1)[1] for a in assets} == {"console.js", "console.css"}
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200 and response.headers["content-security-policy"] == csp
    script = (HERE / "static" / "console.js").read_text()
    # Text only: every API string goes in through textContent, and the key only into sessionStorage and a header.
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", script)
    assert "localStorage" not in script and "document.cookie" not in script
    # A query string is as unknown on /console as on the API.
    assert client.get("/console?key=x").status_code == 422


def test_docs_and_redoc_load_only_assets_shipped_with_the_project(client: TestClient):
    for path in ("/docs", "/redoc"):
        html = client.get(path).text
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
        assert urls and not [u for u in urls if "//" in u], urls  # no CDN, no other host
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200 and len(response.content) > 1000, url


def test_me_tells_a_key_its_scopes(client: TestClient):
    assert client.get("/v1/me", headers=AUTH).json()["scopes"] == ["admin"]
    reader = client.get("/v1/me", headers=key_with(client, "forget:read", "vqa")).json()
    assert reader["name"] == "reader" and reader["scopes"] == ["forget:read", "vqa"]
    assert client.get("/v1/me").status_code == 401
    assert client.get("/v1/me", headers={"Authorization": "Bearer lethe_0123456789ab_wrong"}).status_code == 401


def test_label_search_matches_the_start_of_the_label(client: TestClient):
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        labels = [request_row(session, RequestStatus.QUEUED).subject_label for _ in range(3)]
    found = client.get("/v1/forget-requests", params={"label": labels[1][:8]}, headers=AUTH).json()
    assert [r["subject_label"] for r in found["items"]] == [labels[1]] and found["total"] == 1
    assert client.get("/v1/forget-requests", params={"label": labels[2]}, headers=AUTH).json()["total"] == 1
    for bad in (XSS, "ABCD", "abc", "%_"):
        response = client.get("/v1/forget-requests", params={"label": bad}, headers=AUTH)
        assert response.status_code == 422 and "label" in response.json()["detail"], response.text
    reader = key_with(client, "forget:read")
    assert client.get("/v1/forget-requests", params={"label": labels[0][:4]}, headers=reader).status_code == 200


def test_operations_shows_the_queue_workers_and_gate_fires(client: TestClient):
    sessions = make_session_factory(make_engine(str(client.app.state.settings.database_url)))  # type: ignore[attr-defined]
    with transaction(sessions) as session:
        repo = ForgetRequestRepository(session)
        waiting = request_row(session, RequestStatus.QUEUED)
        repo.create_job(waiting).enqueued_at = utcnow() - timedelta(seconds=30)
        running = repo.create_job(request_row(session, RequestStatus.TRAINING))
        running.status, running.worker, running.heartbeat_at = "running", "gpu-1:42", utcnow()
        old = repo.create_job(request_row(session, "failed"))
        old.status, old.worker, old.heartbeat_at = "failed", "gpu-2:7", utcnow() - timedelta(hours=1)
        repo.create_job(request_row(session, "cancelled"))  # a queued job of an ended request waits for nothing
    client.app.state.metrics.record_gate(["a1", None, "a1", "b2"])  # type: ignore[attr-defined]
    ops = client.get("/v1/operations", headers=AUTH).json()
    assert ops["queue"]["waiting"] == 1 and ops["queue"]["running"] == 1
    assert 29 <= ops["queue"]["oldest_waiting_s"] < 120
    workers = {w["name"]: w for w in ops["workers"]}
    assert workers["gpu-1:42"]["alive"] and workers["gpu-1:42"]["running_jobs"] == 1
    assert not workers["gpu-2:7"]["alive"] and workers["gpu-2:7"]["running_jobs"] == 0
    assert ops["gate"] == {"images": 4, "fires": [{"adapter_id": "a1", "fires": 2}, {"adapter_id": "b2", "fires": 1}]}
    assert ops["readiness"]["ready"] is False  # no model loaded here
    assert client.get("/v1/operations", headers=key_with(client, "forget:read")).status_code == 403
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'lethe_gate_fires_total{adapter_id="a1"} 2.0' in metrics and "lethe_gate_images_total 4.0" in metrics
