"""`/v1/vqa` latency against one in-process server with 0, 1, 10, 100 and 1000 active modules, side by side.

    python bench/serve_latency.py [--world tiny] [--counts 0,1,10,100,1000] [--requests 40] [--json PATH]

Modules are CAGUL modules of the real shape (random weights, each with its own seed, saved and loaded as
artifacts); the cost measured is the gate's: every module's discriminator runs on every request.
"""

from __future__ import annotations

import argparse
import base64
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from core.adapters.models import ACTIVE, INACTIVE
from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.db import make_engine, make_session_factory, transaction, upgrade_database
from core.forget_requests.repository import ForgetRequestRepository
from core.keys.repository import ApiKeyRepository
from core.settings import Settings
from server.app import create_app
from unlearning.artifacts import save_module
from unlearning.backbones import load_backbone
from unlearning.cagul import CagulConfig
from unlearning.cagul.module import CagulModule
from unlearning.world import WORLD_PRESETS
from unlearning.world.builder import build_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="tiny")
    parser.add_argument("--data-dir", default=".lethe")
    parser.add_argument("--counts", default="0,1,10,100,1000")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]

    world = build_world(args.data_dir, WORLD_PRESETS[args.world], with_retain_model=False)
    backbone = load_backbone(world.reference_model_dir)
    fingerprint = backbone.fingerprint()
    work = Path(tempfile.mkdtemp(prefix="lethe-serve-bench-"))
    (work / "data" / "worlds").mkdir(parents=True)
    (work / "data" / "worlds" / world.root.name).symlink_to(world.root.resolve())
    settings = Settings(data_dir=work / "data", world=args.world, broker_url="memory://", engine_sync_interval_s=3600)
    url = settings.resolved_database_url()
    upgrade_database(url)
    sessions = make_session_factory(make_engine(url))

    started = time.perf_counter()
    adapter_ids = []
    with transaction(sessions) as session:
        token = ApiKeyRepository(session).create("bench", ["admin"])[1]
        requests = ForgetRequestRepository(session)
        adapters = AdapterRepository(session)
        for i in range(max(counts)):
            torch.manual_seed(i)
            module = CagulModule(
                CagulConfig(seed=i), backbone.n_visual_tokens, backbone.hidden_size, backbone.identity_dim
            )
            manifest = save_module(module, work / "modules" / str(i), fingerprint)
            request = requests.create(
                subject=f"synthetic {i}",
                method="cagul",
                params={},
                qa_ciphertext=b"",
                qa_sha256=[],
                images=[],
                callback_url=None,
                status="active",
            )
            adapter = adapters.create(
                request_id=request.id,
                method="cagul",
                state=INACTIVE,
                path=str(work / "modules" / str(i)),
                sha256=manifest["digest"],
                base_fingerprint=fingerprint,
                trainable_params=module.num_parameters(),
                report={},
            )
            adapter_ids.append(adapter.id)
    print(f"{max(counts)} modules written in {time.perf_counter() - started:.1f} s", flush=True)

    people = world.split("retain") + world.split("unseen")
    queries = [
        (base64.b64encode(world.image_path(p.id, v).read_bytes()).decode(), f.train_questions[0])
        for p in people
        for v in range(world.config.n_views)
        for f in p.facts[:2]
    ]
    rows = []
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
        for count in counts:
            with transaction(sessions) as session:
                adapters = AdapterRepository(session)
                for i, adapter_id in enumerate(adapter_ids):
                    adapters.set_state(adapters.get(adapter_id), ACTIVE if i < count else INACTIVE)
                version = AdapterSetRepository(session).record(f"bench: {count} active").version
            load_started = time.perf_counter()
            while client.get("/readyz").json().get("adapter_set_version") != version:
                time.sleep(0.05)
            load_seconds = time.perf_counter() - load_started
            for image, question in queries[:3]:  # warm-up
                client.post("/v1/vqa", json={"image": image, "question": question})
            latencies = []
            for k in range(args.requests):
                image, question = queries[k % len(queries)]
                t0 = time.perf_counter()
                response = client.post("/v1/vqa", json={"image": image, "question": question})
                latencies.append(1000 * (time.perf_counter() - t0))
                assert response.status_code == 200 and response.json()["adapter_set_version"] == version
            latencies.sort()
            rows.append(
                {
                    "active_modules": count,
                    "p50_ms": round(statistics.median(latencies), 1),
                    "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
                    "set_load_seconds": round(load_seconds, 2),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                }
            )
            print(rows[-1], flush=True)
    base = rows[0]["p50_ms"] if rows and rows[0]["active_modules"] == 0 else None
    print(f"\n/v1/vqa latency, {args.world} world, {args.requests} requests per row, one server process")
    print("| active modules | p50 ms | p95 ms | p50 vs none | set load s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['p50_ms'] / base:.2f}x" if base else "-"
        print(
            f"| {r['active_modules']} | {r['p50_ms']} | {r['p95_ms']} | {ratio} | {r['set_load_seconds']} | "
            f"{r['peak_rss_mb']} |"
        )
    if args.json_path:
        Path(args.json_path).write_text(
            json.dumps({"world": args.world, "requests": args.requests, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
