"""Faults with real processes: a worker SIGKILLed mid-training and a Redis restart that drops the queue.
Nothing is lost: the reconciler re-sends silent jobs, and each request ends with exactly one adapter; a request
whose worker dies every time fails at the delivery cap instead of being re-sent forever."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from bench.many_requests import request_events
from core.adapters.models import Adapter
from core.forget_requests.models import Job
from core.processes import api_command, python_module, worker_command
from tests.helpers import ADMIN_TOKEN, request_body, service_settings, settings_env, wait_for
from tests.system.processes import QUICK, TERMINAL, free_port, ready, spawn, stop
from unlearning.world import World

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    return spawn(python_module(worker_command(f"fault-{uuid.uuid4().hex[:6]}@%h")), env, log)


def start_api(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    return spawn(python_module(api_command(port=port)), env, log)


def outcome(pg_url: str, request_id: str) -> tuple[int, int]:
    """(adapters recorded for the request, deliveries of its job)."""
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        adapters = len(conn.execute(select(Adapter.id).where(Adapter.request_id == request_id)).all())
        deliveries = conn.execute(select(Job.deliveries).where(Job.request_id == request_id)).scalar_one()
    engine.dispose()
    return adapters, int(deliveries)


def fault_settings_env(tiny_world: World, tmp_path: Path, pg_url: str, broker: str, **extra: object) -> dict[str, str]:
    settings = service_settings(
        tiny_world, tmp_path, pg_url, broker, heartbeat_stale_s=6.0, reconcile_interval_s=1.0, **extra
    )
    return settings_env(settings)


def encoder_event_after(client: httpx.Client, request_id: str, after: int) -> int | None:
    """The id of the newest encoder progress event past event `after`, if any."""
    ids = [e["id"] for e in request_events(client, request_id, after) if e["phase"] == "encoder"]
    return max(ids) if ids else None


def test_worker_killed_mid_training_is_redone_once(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str):
    env = fault_settings_env(tiny_world, tmp_path, pg_url, redis_url)
    port = free_port()
    api = start_api(env, port, tmp_path / "api.log")
    first = start_worker(env, tmp_path / "worker-1.log")
    second = None
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=AUTH)
    try:
        wait_for(lambda: ready(client), 180, 0.5, "the API")
        request_id = client.post("/v1/forget-requests", json=request_body(tiny_world, "p000", params=QUICK)).json()[
            "id"
        ]
        url = f"/v1/forget-requests/{request_id}"
        wait_for(lambda: any(e["phase"] == "encoder" for e in request_events(client, request_id)), 180, 0.2, "training")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        second = start_worker(env, tmp_path / "worker-2.log")
        final = wait_for(lambda: (r := client.get(url).json())["status"] in TERMINAL and r, 300, 0.5, "the redo")
        assert final["status"] in ("active", "rejected_verification"), final
        assert outcome(pg_url, request_id) == (1, 2)  # exactly one adapter; delivered twice
        messages = [e["message"] or "" for e in request_events(client, request_id)]
        assert any(m.startswith("re-sent") for m in messages) and "redelivered; restarting" in messages
        if final["status"] == "active":
            assert client.get("/v1/adapter-set").json()["adapter_ids"] == [final["adapter_id"]]
    finally:
        stop(api)
        for worker in (first, second):
            if worker is not None:
                stop(worker)


def test_redis_restart_loses_no_queued_job(tiny_world: World, tmp_path: Path, pg_url: str):
    redis_port = free_port()
    redis_args = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL)
    env = fault_settings_env(tiny_world, tmp_path, pg_url, f"redis://127.0.0.1:{redis_port}/0")
    port = free_port()
    api = start_api(env, port, tmp_path / "api.log")
    worker = None
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=AUTH)
    try:
        wait_for(lambda: ready(client), 180, 0.5, "the API")
        ids = [
            client.post("/v1/forget-requests", json=request_body(tiny_world, pid, params=QUICK)).json()["id"]
            for pid in ("p001", "p002")
        ]
        redis.send_signal(signal.SIGTERM)  # no persistence: the queued messages are gone
        redis.wait(30)
        redis = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL)
        worker = start_worker(env, tmp_path / "worker.log")
        for request_id in ids:
            url = f"/v1/forget-requests/{request_id}"
            final = wait_for(lambda u=url: (r := client.get(u).json())["status"] in TERMINAL and r, 300, 0.5, "jobs")
            assert final["status"] in ("active", "rejected_verification"), final
            assert outcome(pg_url, request_id)[0] == 1
            assert any((e["message"] or "").startswith("re-sent") for e in request_events(client, request_id))
    finally:
        stop(api)
        if worker is not None:
            stop(worker)
        redis.kill()
        redis.wait()


def test_a_request_that_kills_its_worker_every_time_fails_at_the_delivery_cap(
    tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str
):
    env = fault_settings_env(tiny_world, tmp_path, pg_url, redis_url, max_deliveries=2)
    port = free_port()
    api = start_api(env, port, tmp_path / "api.log")
    workers: list[subprocess.Popen] = []  # type: ignore[type-arg]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=AUTH)
    try:
        wait_for(lambda: ready(client), 180, 0.5, "the API")
        # Long enough in the encoder to be killed there, as a worker killed for memory would be.
        params = {**QUICK, "steps": 2000}
        request_id = client.post("/v1/forget-requests", json=request_body(tiny_world, "p000", params=params)).json()[
            "id"
        ]
        url = f"/v1/forget-requests/{request_id}"
        seen = 0
        for delivery in (1, 2):
            workers.append(start_worker(env, tmp_path / f"worker-{delivery}.log"))
            seen = wait_for(lambda s=seen: encoder_event_after(client, request_id, s), 300, 0.2, f"delivery {delivery}")
            os.kill(workers[-1].pid, signal.SIGKILL)
            workers[-1].wait()
        final = wait_for(lambda: (r := client.get(url).json())["status"] in TERMINAL and r, 120, 0.5, "the give-up")
        assert final["status"] == "failed", final
        assert "started 2 times and never finished" in final["error"] and "LETHE_MAX_DELIVERIES=2" in final["error"]
        time.sleep(3)  # three reconciler passes: none sends it again
        assert outcome(pg_url, request_id) == (0, 2)
        events = request_events(client, request_id)
        gave_up = next(e["id"] for e in events if e["status"] == "failed")
        assert [e for e in events if (e["message"] or "").startswith("re-sent") and e["id"] > gave_up] == []
        assert client.get(url).json()["status"] == "failed"
    finally:
        stop(api)
        for worker in workers:
            stop(worker)
