"""The whole product over HTTP with real processes: file a request, a Celery worker trains and verifies it,
it becomes active, /v1/vqa stops leaking the subject and everyone else's answers stay the same.

Run twice: on PostgreSQL + Redis with a separate worker and API process, and as `lethe serve` (SQLite +
kombu's SQLAlchemy broker, worker started alongside)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from bench.load_vqa import hold_load
from bench.many_requests import request_events
from core.certificates.verify import commitment
from core.crypto import verify_certificate
from core.processes import api_command, python_module, worker_command
from lethe.scale.serving import vqa_queries
from tests.helpers import ADMIN_TOKEN, request_body, service_settings, settings_env, wait_for
from tests.system.processes import TERMINAL, ask, ask_text, free_port, spawn, stop
from tests.system.processes import ready as _ready
from unlearning.config import REFUSAL_ANSWER
from unlearning.evaluation.metrics.leakage import leak_rate, leaked
from unlearning.world import World
from unlearning.world.names import named_questions
from unlearning.world.requests import subject_aliases

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def wait_while_progressing(client: httpx.Client, request_id: str, stall_s: float = 900.0) -> dict:
    """The request's final state; fails when it records no new event for `stall_s`. The whole wait is bounded
    by the test's timeout and the service's own job budget (`train_time_limit_s`), not by a guess at how fast
    this machine trains (a default-world request took 615 s on a loaded 2-core CI machine)."""
    last_id, last_change = 0, time.monotonic()
    while True:
        request = client.get(f"/v1/forget-requests/{request_id}").json()
        if request["status"] in TERMINAL:
            return request
        new = request_events(client, request_id, after=last_id)
        if new:
            last_id, last_change = new[-1]["id"], time.monotonic()
        assert time.monotonic() - last_change < stall_s, f"no event for {stall_s} s (status {request['status']})"
        time.sleep(1.0)


def forget_over_http(base_url: str, world: World, subject: str, rollback: bool = True, named: bool = False) -> dict:
    """The whole flow (`named`: the request files the subject's names too); returns its timings (printed by the
    tests, shown with -s)."""
    client = httpx.Client(base_url=base_url, timeout=60, headers=AUTH)
    wait_for(lambda: _ready(client), 300, 1.0, "the server to be ready")
    heldout = world.heldout_views()[0]
    person = world.person(subject)
    # The held-out photo and each fact's held-out phrasing: material neither training nor verification used.
    facts = [(f.heldout_question, f.keyword) for f in person.facts]
    before = [ask(client, world, subject, heldout, q)["answer"] for q, _ in facts]
    # A precondition, not the measure: the reference must reveal enough of this held-out material for "none
    # after" to mean something. A retain person is revealed less on it (7 of 10 seen in CI).
    revealed = sum(leaked(a, kw) for a, (_, kw) in zip(before, facts, strict=True))
    assert revealed >= 0.5 * len(facts), (subject, before)
    # Others: retain people and people the model never saw, on a trained and the held-out view.
    others_people = [p for p in world.split("retain") if p.id != subject][:3] + world.split("unseen")[:2]
    others = [(p.id, v, f.train_questions[0]) for p in others_people for v in (0, heldout) for f in p.facts[:3]]
    others_before = [ask(client, world, pid, v, q)["answer"] for pid, v, q in others]
    # Asked by name with no photo: the subject's held-out named questions, and others' (answered as before).
    by_name = named_questions(person, heldout=True)[::4]
    others_by_name = [q.question for p in others_people[:2] for q in named_questions(p, heldout=True)[::8]]
    others_by_name_before = [ask_text(client, q)["answer"] for q in others_by_name]
    by_name_before = [ask_text(client, q.question)["answer"] for q in by_name]
    # The tiny world teaches names: the reference answers these with the fact.
    assert leak_rate(by_name_before, [q.keyword for q in by_name]) >= 0.9, by_name_before

    posted_at = time.perf_counter()
    aliases = {"aliases": subject_aliases(person)} if named else {}
    created = client.post("/v1/forget-requests", json=request_body(world, subject, **aliases))
    assert created.status_code == 202, created.text
    request_id = created.json()["id"]
    final = wait_while_progressing(client, request_id)
    to_active = time.perf_counter() - posted_at
    report = client.get(f"/v1/forget-requests/{request_id}/report").json()["report"]
    assert final["status"] == "active", (report["verification"]["reasons"], report["attempts"])
    verification = report["verification"]
    criteria = {c["name"]: c for c in verification["criteria"]}
    assert verification["passed"] and all(c["passed"] for c in criteria.values())
    assert criteria["leak"]["bound"] <= criteria["leak"]["threshold"] == 0.05 and criteria["leak"]["cases"] >= 60
    assert criteria["leak"]["reference"] >= 0.5  # measured against what the reference model revealed
    assert 1 <= len(report["attempts"]) <= 3 and report["attempts"][-1]["passed"]

    events = request_events(client, request_id)  # paged: a long job stores more than one page
    statuses = [e["status"] for e in events if e["kind"] == "status"]
    transitions = [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]
    assert transitions[:4] == ["validating", "queued", "training", "verifying"] and transitions[-1] == "active"
    assert transitions.count("verifying") == len(report["attempts"])
    assert events[-1]["message"] == "uploaded data purged"
    went_active = next(e for e in events if e["kind"] == "status" and e["status"] == "active")
    assert went_active["message"].startswith(f"verified in attempt {len(report['attempts'])}: leak ")
    assert final["error"] is None  # "verifying attempt 1 of 3" was shown as an active request's error
    progress = [e for e in events if e["kind"] == "progress"]
    assert {e["phase"] for e in progress} == {"discriminator", "encoder"} | ({"prefix"} if named else set())
    assert all(e["eta_seconds"] is not None and e["loss"] is not None for e in progress)
    assert progress[-1]["step"] == progress[-1]["total"]

    adapter = client.get(f"/v1/adapters/{final['adapter_id']}").json()
    assert adapter["state"] == "active" and len(adapter["sha256"]) == 64
    adapter_set = client.get("/v1/adapter-set").json()
    assert adapter["id"] in adapter_set["adapter_ids"]
    # The server reads the registry in a background pass, off the request path: the new set is served within it.
    wait_for(
        lambda: client.get("/v1/adapter-set").json()["served_version"] == adapter_set["version"], 10, 0.05, "pickup"
    )

    after = [ask(client, world, subject, heldout, q) for q, _ in facts]
    assert all(a["adapter_set_version"] == adapter_set["version"] for a in after)
    assert not any(leaked(a["answer"], kw) for a, (_, kw) in zip(after, facts, strict=True)), after
    latencies, others_after = [], []
    for pid, v, q in others:
        started = time.perf_counter()
        others_after.append(ask(client, world, pid, v, q)["answer"])
        latencies.append(time.perf_counter() - started)
    assert others_after == others_before
    assert [ask_text(client, q)["answer"] for q in others_by_name] == others_by_name_before
    by_name_after = [ask_text(client, q.question)["answer"] for q in by_name]
    if named:
        assert criteria["named_routing"]["module"] == 1.0 and criteria["named_routing"]["cases"] > 0
        # Verification asks in forms the world never trained (reversed words, other misspellings): the reference
        # reveals fewer of them (0.68 of the tiny world's p000 cases), enough for the leak to be measured.
        assert criteria["named_leak"]["reference"] >= 0.5 and criteria["named_leak"]["module"] <= 0.05
        assert leak_rate(by_name_after, [q.keyword for q in by_name]) <= 0.05, by_name_after
        assert sum(a == REFUSAL_ANSWER for a in by_name_after) >= 0.9 * len(by_name), by_name_after
    else:  # a photo-only request changes nothing asked by name: the gap the aliases close
        assert by_name_after == by_name_before
    check_certificate(client, request_id, adapter, bytes.fromhex(created.json()["commitment_salt"]), person.name)
    timings = {
        "post_to_active_s": round(to_active, 1),
        "vqa_p50_ms": round(1000 * statistics.median(latencies), 1),
        "attempts": len(report["attempts"]),
    }
    print("flow timings:", timings)
    if not rollback:
        return timings

    # Rolling back serves the reference model's answers again, under a new set version.
    assert client.post(f"/v1/adapters/{adapter['id']}/deactivate").json()["state"] == "inactive"
    assert client.get(f"/v1/forget-requests/{request_id}").json()["status"] == "revoked"
    revoked = client.get(f"/v1/forget-requests/{request_id}/certificate").json()["certificate"]
    assert revoked["status"] == "revoked" and revoked["adapter_id"] == adapter["id"] and revoked["revoked_at"]
    again = ask(client, world, subject, heldout, facts[0][0])
    assert again["answer"] == before[0] and again["adapter_set_version"] > adapter_set["version"]
    assert client.post(f"/v1/adapters/{adapter['id']}/activate").json()["state"] == "active"
    assert not leaked(ask(client, world, subject, heldout, facts[0][0])["answer"], facts[0][1])
    return timings


def check_certificate(client: httpx.Client, request_id: str, adapter: dict, salt: bytes, subject: str) -> None:
    """The certificate of a module that really went through verification: signed, tamper-evident, salted."""
    signed = client.get(f"/v1/forget-requests/{request_id}/certificate").json()
    key = client.get("/.well-known/lethe-signing-key").json()
    doc = signed["certificate"]
    assert doc["adapter_id"] == adapter["id"] and doc["adapter_sha256"] == adapter["sha256"]
    assert doc["status"] == "active" and doc["expires_at"] > doc["issued_at"]
    assert doc["commitments"]["subject"] == commitment(salt, subject.encode()) and subject not in json.dumps(doc)
    assert doc["verification"]["passed"] and {c["name"] for c in doc["verification"]["criteria"]} >= {
        "leak",
        "gate_tpr",
        "retain_identical",
    }
    assert "leaking_cases" not in doc["verification"]  # case text stays out of the certificate
    assert verify_certificate(signed, key["public_key"])
    tampered = copy.deepcopy(signed)
    tampered["certificate"]["verification"]["criteria"][0]["module"] = 0.0
    tampered["certificate"]["verification"]["passed"] = not doc["verification"]["passed"]
    assert not verify_certificate(tampered, key["public_key"])


def test_postgres_redis_worker_and_api(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str, log_dir: Path):
    env = settings_env(service_settings(tiny_world, tmp_path, pg_url, redis_url))
    port = free_port()
    worker = spawn(python_module(worker_command(f"test-{uuid.uuid4().hex[:6]}@%h")), env, log_dir / "worker.log")
    api_cmd = python_module(api_command(port=port))
    api = spawn(api_cmd, env, log_dir / "api.log")
    try:
        forget_over_http(f"http://127.0.0.1:{port}", tiny_world, "p000", named=True)
        cancel_while_training(f"http://127.0.0.1:{port}", tiny_world, "p002")
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=AUTH)
        served = client.get("/v1/adapter-set").json()
        assert stop(api) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful shutdown
        # A restarted API is ready only once the whole active set is loaded again.
        api = spawn(api_cmd, env, log_dir / "api-restarted.log")
        ready = wait_for(lambda: _ready_body(client), 180, 0.2, "the restarted server")
        assert ready["adapter_set_version"] == served["version"]
        question, keyword = (
            tiny_world.person("p000").facts[0].train_questions[0],
            tiny_world.person("p000").facts[0].keyword,
        )
        answer = ask(client, tiny_world, "p000", tiny_world.heldout_views()[0], question)
        assert keyword.lower() not in answer["answer"].lower() and answer["adapter_set_version"] == served["version"]
    finally:
        stop(api)
        stop(worker)


def _ready_body(client: httpx.Client) -> dict | None:
    try:
        response = client.get("/readyz")
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def load_while_training(base_url: str, world: World, subject: str) -> None:
    """The short form of bench/load_vqa.py: concurrent /v1/vqa clients while a forget job trains, no errors."""
    client = httpx.Client(base_url=base_url, timeout=60, headers=AUTH)
    request_id = client.post("/v1/forget-requests", json=request_body(world, subject)).json()["id"]
    url = f"/v1/forget-requests/{request_id}"
    wait_for(lambda: client.get(url).json()["status"] == "training", 120, 0.2, "training to start")
    result = asyncio.run(hold_load(base_url, ADMIN_TOKEN, vqa_queries(world.root, facts=2), clients=8, seconds=5))
    print("load while training:", result)
    assert result["errors"] == 0 and result["requests"] > 0
    assert client.get(url).json()["status"] == "training"
    client.post(f"{url}/cancel")
    wait_for(lambda: client.get(url).json()["status"] == "cancelled", 240, 0.5, "the cancellation")


def cancel_while_training(base_url: str, world: World, subject: str) -> None:
    client = httpx.Client(base_url=base_url, timeout=60, headers=AUTH)
    served = client.get("/v1/adapter-set").json()
    request_id = client.post("/v1/forget-requests", json=request_body(world, subject)).json()["id"]
    url = f"/v1/forget-requests/{request_id}"
    wait_for(lambda: client.get(url).json()["status"] == "training", 120, 0.2, "training to start")
    assert client.post(f"{url}/cancel").json()["cancel_requested"] is True
    # Honoured between phases and training steps: the reference baseline runs first (a minute on a loaded CI box).
    final = wait_for(lambda: (r := client.get(url).json())["status"] in TERMINAL and r, 240, 0.5, "the cancellation")
    assert final["status"] == "cancelled" and final["adapter_id"] is None
    assert client.get("/v1/adapter-set").json() == served  # nothing published


# Builds the default world's reference model first (fp32 on CPUs without native bf16: about 10 minutes on 2 cores).
@pytest.mark.timeout(3000)
def test_embedded_lethe_serve_default_world(default_world: World, tmp_path: Path, log_dir: Path):
    """`lethe serve` as a user runs it (default world, no --world): two people, one after another, both held."""
    data_dir = tmp_path / "data"
    (data_dir / "worlds").mkdir(parents=True)
    (data_dir / "worlds" / default_world.root.name).symlink_to(default_world.root.resolve())
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env["LETHE_BOOTSTRAP_ADMIN_KEY"] = ADMIN_TOKEN
    port = free_port()
    cli = [sys.executable, "-m", "lethe.cli", "serve", "--data-dir", str(data_dir)]
    serve = spawn([*cli, "--port", str(port)], env, log_dir / "serve.log")
    base_url = f"http://127.0.0.1:{port}"
    # A forget-split person, then a person who was a retain sample (negatives, KL data) until their own request.
    retain_person = [p for p in default_world.split("retain") if not p.protected][1]
    first, second = default_world.split("forget1")[0].id, retain_person.id
    try:
        forget_over_http(base_url, default_world, first, rollback=False, named=True)  # as the README files it
        forget_over_http(base_url, default_world, second, rollback=False)
        client = httpx.Client(base_url=base_url, timeout=60, headers=AUTH)
        heldout = default_world.heldout_views()[0]
        for fact in default_world.person(first).facts:  # the first erasure still holds beside the second
            assert not leaked(ask(client, default_world, first, heldout, fact.heldout_question)["answer"], fact.keyword)
        assert len(client.get("/v1/adapter-set").json()["adapter_ids"]) == 2
        load_while_training(base_url, default_world, default_world.split("forget5")[-1].id)
    finally:
        assert stop(serve) == 0
    assert "API and worker stopped" in (log_dir / "serve.log").read_text()
    assert (data_dir / "lethe.db").is_file() and (data_dir / "broker.db").is_file()
    assert len(list((data_dir / "modules").iterdir())) == 2
