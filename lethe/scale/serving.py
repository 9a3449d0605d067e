"""The timed server process of `lethe bench scale`: one uvicorn per gate kind, reading the registry as in
production, asked /v1/vqa at each active count."""

from __future__ import annotations

import base64
import os
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from core.db import make_engine, make_session_factory, upgrade_database
from core.processes import api_command, python_module
from lethe.scale.registry import TOKEN, deactivate_all, one_more_activation, register, set_active

GATES = ("two_stage", "exhaustive")
Log = Callable[[str], None]


def gate_kinds(candidates: int) -> tuple[tuple[str, int], ...]:
    """Each gate of the bench and its stage-1 candidates (0: every module)."""
    return (("two_stage", candidates), ("exhaustive", 0))


def serving_rows(
    data_dir: Path,
    world_root: Path,
    world_name: str,
    modules: list,
    counts: list[int],
    candidates: int,
    requests: int,
    log: Log,
) -> list[dict[str, Any]]:
    work = data_dir / "scale" / "serve"
    url, sessions, adapter_ids = fresh_registry(work, modules, max(counts))
    queries = vqa_queries(world_root)
    rows = []
    for gate, k in gate_kinds(candidates):
        deactivate_all(sessions)  # each server starts from an empty set, as the first does
        with api_server(data_dir, world_name, url, k, work / f"serve-{gate}.log") as (client, pid):
            for n in counts:
                load_s = set_active(sessions, client, adapter_ids, n)
                warm_up(client, queries)
                gated_before = _gated(client)
                latencies = timed_requests(client, queries, requests)
                gated = _gated(client) - gated_before
                rss = _rss_mb(pid)
                activation = one_more_activation(sessions, client, adapter_ids, n)
                rows.append(
                    {
                        "gate": gate,
                        "n": n,
                        **latency_figures(latencies),
                        "rss_mb": rss,
                        # Timed queries are never-enrolled people: where a gate claims one, it takes the encoder path.
                        "timed_gated": round(gated / requests, 3),
                        "activation_s": activation,
                        "set_load_s": load_s,
                    }
                )
                log(f"{gate} server, {n} modules: {rows[-1]}")
    return rows


def fresh_registry(work: Path, modules: list, count: int) -> tuple[str, Any, list[str]]:
    """A new SQLite registry under `work` holding `count` enrolled modules, none active: its URL, sessions and ids."""
    work.mkdir(parents=True, exist_ok=True)
    database = work / "registry.db"
    database.unlink(missing_ok=True)
    url = f"sqlite:///{database.resolve()}"
    upgrade_database(url)
    sessions = make_session_factory(make_engine(url))
    return url, sessions, register(sessions, modules, count)


def warm_up(client: httpx.Client, queries: list[dict[str, str]]) -> None:
    """Every query once, untimed: no timed call is the first of its prompt and answer shapes in this server."""
    for body in queries:
        client.post("/v1/vqa", json=body)


def timed_requests(client: httpx.Client, queries: list[dict[str, str]], requests: int) -> list[float]:
    """Milliseconds of each of `requests` /v1/vqa calls, one after another, sorted."""
    latencies = []
    for i in range(requests):
        started = time.perf_counter()
        response = client.post("/v1/vqa", json=queries[i % len(queries)])
        latencies.append(1000 * (time.perf_counter() - started))
        response.raise_for_status()
    return sorted(latencies)


def latency_figures(latencies: list[float]) -> dict[str, float]:
    """p50 and p95 (ms, one decimal) of sorted `latencies`."""
    return {
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
    }


def vqa_queries(world_root: Path, facts: int = 1) -> list[dict[str, str]]:
    """/v1/vqa bodies about people no request forgets: each photo of each retain and unseen person, asked the first
    training question of each of their first `facts` facts."""
    from unlearning.world import World

    world = World(world_root)
    people = world.split("retain") + world.split("unseen")
    return [
        {"image": base64.b64encode(world.image_path(p.id, v).read_bytes()).decode(), "question": f.train_questions[0]}
        for p in people
        for v in range(world.config.n_views)
        for f in p.facts[:facts]
    ]


@contextmanager
def api_server(
    data_dir: Path, world_name: str, url: str, candidates: int, log_path: Path
) -> Iterator[tuple[httpx.Client, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "LETHE_DATA_DIR": str(data_dir),
        "LETHE_WORLD": world_name,
        "LETHE_DATABASE_URL": url,
        "LETHE_BROKER_URL": "memory://",
        "LETHE_GATE_CANDIDATES": str(candidates),
    }
    command = python_module(api_command(port=port))
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited: see {log_path}")
                time.sleep(0.2)
            yield client, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def _gated(client: httpx.Client) -> int:
    """Images the server's gate routed to a module so far (`/v1/operations`, the console's gate figures)."""
    response = client.get("/v1/operations")
    response.raise_for_status()
    return sum(int(module["fires"]) for module in response.json()["gate"]["fires"])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")
