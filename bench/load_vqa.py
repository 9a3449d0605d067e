"""Load: concurrent `/v1/vqa` clients for a while, against `lethe serve` while a forget job trains;
batched vs unbatched serving side by side in one run.

    python bench/load_vqa.py [--clients 32] [--seconds 60] [--world tiny] [--batches 1,16] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.many_requests import request_events
from lethe.scale.serving import vqa_queries
from unlearning.world import WORLD_PRESETS, World
from unlearning.world.builder import build_world

TOKEN = "lethe_0123456789ab_load-bench-admin-key-not-secret"


async def hold_load(base_url: str, token: str, queries: list[dict[str, str]], clients: int, seconds: float) -> dict:
    """`clients` concurrent clients, each sending its next request as soon as the last one answered."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
            k = index
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await c.post("/v1/vqa", json=queries[k % len(queries)])
                    ok = response.status_code == 200
                    key = str(response.status_code)
                except httpx.HTTPError as exc:
                    ok, key = False, type(exc).__name__
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[key] = errors.get(key, 0) + 1
                k += clients

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else 0.0

    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "throughput_rps": round(len(latencies) / wall, 1),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else 0.0,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_and_load(world: World, max_batch: int, clients: int, seconds: float, log: Path) -> dict[str, Any]:
    """Start `lethe serve` on a fresh data dir, file a forget request, hold the load while it trains."""
    data_dir = Path(tempfile.mkdtemp(prefix="lethe-load-"))
    (data_dir / "worlds").mkdir()
    (data_dir / "worlds" / world.root.name).symlink_to(world.root.resolve())
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update({"LETHE_BOOTSTRAP_ADMIN_KEY": TOKEN, "LETHE_VQA_MAX_BATCH": str(max_batch)})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["serve", "--data-dir", str(data_dir), "--world", world.config.name, "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lethe.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, timeout=60, headers=auth) as http:
            for _ in range(600):
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            person = world.split("forget1")[0]
            body = {
                "subject": person.name,
                "qa_pairs": [{"question": q.question, "answer": q.answer} for q in person.qa_pairs()],
                "images": [base64.b64encode(world.image_path(person.id, v).read_bytes()).decode() for v in (0, 1, 2)],
            }
            request_id = http.post("/v1/forget-requests", json=body).json()["id"]
            while http.get(f"/v1/forget-requests/{request_id}").json()["status"] == "queued":
                time.sleep(0.2)
            result = asyncio.run(hold_load(base, TOKEN, vqa_queries(world.root, facts=2), clients, seconds))
            result["training_during_load"] = http.get(f"/v1/forget-requests/{request_id}").json()["status"]
            events = request_events(http, request_id)
            result["training_progress_events"] = sum(e["kind"] == "progress" for e in events)
        result["max_batch"] = max_batch
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="tiny")
    parser.add_argument("--data-dir", default=".lethe")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    world = build_world(args.data_dir, WORLD_PRESETS[args.world], with_retain_model=False)
    rows = []
    for max_batch in (int(b) for b in args.batches.split(",")):
        rows.append(
            serve_and_load(world, max_batch, args.clients, args.seconds, Path(f"/tmp/lethe-load-{max_batch}.log"))
        )
        print(rows[-1], flush=True)
    print(f"\n/v1/vqa under load: {args.clients} clients, {args.seconds:.0f} s each, a forget job training meanwhile")
    print("| max batch | requests | errors | req/s | p50 ms | p95 ms | p99 ms | job status after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['max_batch']} | {r['requests']} | {r['errors']} | {r['throughput_rps']} | {r['p50_ms']} | "
            f"{r['p95_ms']} | {r['p99_ms']} | {r['training_during_load']} |"
        )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
