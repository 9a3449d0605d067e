"""The distributed process graph without Docker, as docker-compose.yml runs it: PostgreSQL, a Redis server, the API
under uvicorn (real HTTP) and two Celery workers on the train queue, with compose's command lines
(core.processes). Four requests are filed at once: each ends with exactly one adapter, active or rejected, none is
lost or left in flight, and both workers trained some of them."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import create_engine, select

from core.adapters.models import Adapter
from core.forget_requests.models import Job
from core.processes import api_command, python_module, worker_command
from core.queue import make_celery
from tests.helpers import ADMIN_TOKEN, request_body, service_settings, settings_env, wait_for
from tests.system.processes import QUICK, TERMINAL, free_port, ready, spawn, stop
from unlearning.world import World

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Forget and retain people the tiny model reveals (none protected, so none ends `nothing_to_forget` untrained).
SUBJECTS = ("p000", "p001", "p002", "p003")


@pytest.fixture()
def own_redis() -> Iterator[str]:
    """A Redis server of the graph's own, as compose runs one: other tests flush the shared server's test database."""
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), 30, 0.1, "the Redis server")
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(30)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def finished(client: httpx.Client, request_id: str) -> dict | None:
    """The request once it is terminal."""
    request = client.get(f"/v1/forget-requests/{request_id}").json()
    return request if request["status"] in TERMINAL else None


def rows(pg_url: str, request_ids: list[str]) -> tuple[list[Adapter], list[Job]]:
    """The registry's adapters and the jobs of the given requests."""
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        adapters = conn.execute(select(Adapter).where(Adapter.request_id.in_(request_ids))).all()
        jobs = conn.execute(select(Job).where(Job.request_id.in_(request_ids))).all()
    engine.dispose()
    return adapters, jobs  # type: ignore[return-value]


def test_two_workers_share_concurrent_requests_and_lose_none(
    tiny_world: World, tmp_path: Path, pg_url: str, own_redis: str, log_dir: Path
):
    settings = service_settings(tiny_world, tmp_path, pg_url, own_redis, verify_max_attempts=1)
    # Three processes on a small machine: one thread each rather than each thread count fighting the others.
    env = {**settings_env(settings), "OMP_NUM_THREADS": "1"}
    port = free_port()
    names = [f"system-{i}-{uuid.uuid4().hex[:6]}" for i in (1, 2)]
    workers = [spawn(python_module(worker_command(f"{n}@%h")), env, log_dir / f"{n}.log") for n in names]
    api = spawn(python_module(api_command(port=port)), env, log_dir / "api.log")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=AUTH)
    try:
        wait_for(lambda: ready(client), 180, 0.5, "the API")
        # Both workers consume from the train queue before anything is filed, so neither can take all four.
        control = make_celery(settings).control
        wait_for(lambda: {n.split("@")[0] for r in control.ping(timeout=1.0) for n in r} >= set(names), 120, 1)

        def file(subject: str) -> str:
            response = client.post("/v1/forget-requests", json=request_body(tiny_world, subject, params=QUICK))
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        with ThreadPoolExecutor(len(SUBJECTS)) as pool:  # all four in flight at once
            ids = list(pool.map(file, SUBJECTS))
        finals = [wait_for(lambda i=i: finished(client, i), 900, 1.0, f"request {i}") for i in ids]
        assert [f["status"] for f in finals if f["status"] not in ("active", "rejected_verification")] == [], finals

        adapters, jobs = rows(pg_url, ids)
        per_request = {i: [a.id for a in adapters if a.request_id == i] for i in ids}
        assert all(len(found) == 1 for found in per_request.values()), per_request  # exactly one adapter each
        assert {f["adapter_id"] for f in finals} == {a.id for a in adapters}
        # One job per request, delivered once and finished: nothing stuck, nothing redone. (A job queued behind
        # others for longer than LETHE_HEARTBEAT_STALE_S looks silent and is re-sent: two of four were in the first
        # run; the workers drop such copies, so each job still starts once.)
        assert sorted(j.request_id for j in jobs) == sorted(ids)
        assert all(j.status == "finished" and j.deliveries == 1 and j.finished_at for j in jobs), jobs
        # Both worker processes trained (`host:pid` of the solo pool's worker process itself).
        assert {j.worker.rsplit(":", 1)[1] for j in jobs} == {str(w.pid) for w in workers}, [j.worker for j in jobs]
        # The API serves exactly the registry's active modules.
        active = sorted(a.id for a in adapters if a.state == "active")
        assert sorted(client.get("/v1/adapter-set").json()["adapter_ids"]) == active
        worker_of = {j.request_id: j.worker for j in jobs}
        print("system graph:", [(s, f["status"], worker_of[f["id"]]) for s, f in zip(SUBJECTS, finals, strict=True)])
    finally:
        stop(api)
        for worker in workers:
            stop(worker)
