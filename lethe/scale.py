"""`lethe bench scale`: the gate at 0 to 10,000 active requests, two-stage and exhaustive side by side.

Enrolled modules are real: each gate trained on its subject's photos (bulk enrollment), each carrying the
encoder of a module trained as a request trains it. Accuracy is measured on the gate object the server uses;
latency, memory and the time for one more activation to take effect through a real server process (uvicorn,
default settings but the world and the gate) that reads the registry as it would in production.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from core.adapters.models import ACTIVE, INACTIVE
from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.crypto import MasterKey, seal_request
from core.db import make_engine, make_session_factory, transaction, upgrade_database
from core.forget_requests.repository import ForgetRequestRepository
from core.keys.repository import ApiKeyRepository
from core.settings import get_settings

TOKEN = "lethe_0123456789ab_scale-bench-key-not-secret"
GATES = ("two_stage", "exhaustive")
CALIBRATED_BUDGET = 0.01
Log = Callable[[str], None]


def run_scale_bench(
    data_dir: Path, counts: list[int], candidates: int, requests: int, log: Log, world_name: str = "scale"
) -> dict[str, Any]:
    import torch

    from unlearning.backbones import load_backbone
    from unlearning.evaluation.drivers.scale import ScalePlan, enrolled_modules, material, module_bytes
    from unlearning.world import WORLD_PRESETS
    from unlearning.world.builder import build_world

    world = build_world(data_dir, WORLD_PRESETS[world_name], with_retain_model=False)
    backbone = load_backbone(world.reference_model_dir)
    backbone.freeze()
    plan = ScalePlan(enrolled=max(counts))
    modules = enrolled_modules(world, backbone, plan, data_dir / "scale", log)
    log("rendering and encoding the held-out photos and the benign population")
    seen = material(world, backbone, plan)
    system_fpr = get_settings().gate_system_fpr
    accuracy = _accuracy_rows(backbone, modules, counts, candidates, system_fpr, seen, log)
    del seen
    torch.set_num_threads(1)  # the server process gets the cores while it is timed
    serving = _serving_rows(data_dir, world.root, world_name, modules, counts, candidates, requests, log)
    rows = []
    for gate in GATES:
        base = next(r["p50_ms"] for r in serving if r["gate"] == gate and r["n"] == counts[0])
        for n in counts:
            row = {"gate": gate, "n": n, **next(r for r in serving if r["gate"] == gate and r["n"] == n)}
            row |= accuracy[(gate, n)]
            row["p50_ratio"] = round(row["p50_ms"] / base, 3) if base else None
            rows.append(row)
    return {
        "commit": _commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "world": world_name,
        "candidates": candidates,
        "system_fpr_budget": system_fpr,
        "requests_per_row": requests,
        "plan": {"enrolled": plan.enrolled, "sampled": plan.sampled, "benign": seen_size(plan)},
        "module_at_llava_1_5_7b": module_bytes(),
        "rows": rows,
    }


def seen_size(plan: Any) -> int:
    return int(plan.strangers + plan.lookalikes + plan.changed)


def _accuracy_rows(
    backbone: Any, modules: list, counts: list[int], candidates: int, system_fpr: float, seen: Any, log: Log
) -> dict:
    """Per gate and N: the accuracy figures, on the gate object the server serves with (routing only)."""
    from unlearning.artifacts import load_gate
    from unlearning.cagul.gate import CagulGate
    from unlearning.evaluation.drivers.scale import accuracy

    out = {}
    # One gate of each kind, growing with N as the server's does; loaded as the server loads (the gate part only).
    gates = {name: CagulGate(backbone, candidates=k, encoders=_routing_only) for name, k in _gates(candidates)}
    fingerprint, added = backbone.fingerprint(), 0
    for n in counts:
        for i in range(added, n):
            discriminator, config, shape = load_gate(modules[i][0], fingerprint, modules[i][1])
            for gate in gates.values():
                gate.add_discriminator(f"m{i:05d}", discriminator, config, shape["identity_dim"])
        added = max(added, n)
        for gate_name, gate in gates.items():
            started = time.perf_counter()
            gate.offset = 0.0  # the last N's calibration does not carry over
            served = gate.calibrate(seen.calibration, system_fpr) if system_fpr > 0 else 0.0
            row = accuracy(gate, n, seen) | {"margin": round(served, 3)}
            # The alternative, side by side: the set calibrated to a 1% budget on the world's benign set.
            margin = gate.calibrate(seen.calibration, CALIBRATED_BUDGET)
            other = accuracy(gate, n, seen)
            row["calibrated_1pct"] = {"margin": round(margin, 3)} | {
                key: other[key] for key in ("tpr", "fpr", "fpr_upper95")
            }
            out[(gate_name, n)] = row
            log(f"{gate_name} gate, {n} modules: {out[(gate_name, n)]} ({time.perf_counter() - started:.1f} s)")
    return out


def _gates(candidates: int) -> tuple[tuple[str, int], ...]:
    """Each gate of the bench and its stage-1 candidates (0: every module)."""
    return (("two_stage", candidates), ("exhaustive", 0))


def _routing_only(module_id: str) -> Any:
    raise RuntimeError(f"accuracy is measured on routing alone: no encoder is needed (asked for {module_id})")


def _serving_rows(
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
    work.mkdir(parents=True, exist_ok=True)
    database = work / "registry.db"
    database.unlink(missing_ok=True)
    url = f"sqlite:///{database.resolve()}"
    upgrade_database(url)
    sessions = make_session_factory(make_engine(url))
    adapter_ids = _register(sessions, modules, max(counts))
    queries = _queries(world_root)
    rows = []
    for gate, k in _gates(candidates):
        _deactivate_all(sessions)  # each server starts from an empty set, as the first does
        with _server(data_dir, world_name, url, k, work / f"serve-{gate}.log") as (client, pid):
            for n in counts:
                load_s = _set_active(sessions, client, adapter_ids, n)
                for image, question in queries[:10]:  # warm-up: first calls after a set change pay for allocations
                    client.post("/v1/vqa", json={"image": image, "question": question})
                latencies = []
                for i in range(requests):
                    image, question = queries[i % len(queries)]
                    started = time.perf_counter()
                    response = client.post("/v1/vqa", json={"image": image, "question": question})
                    latencies.append(1000 * (time.perf_counter() - started))
                    response.raise_for_status()
                rss = _rss_mb(pid)
                activation = _one_more_activation(sessions, client, adapter_ids, n)
                latencies.sort()
                rows.append(
                    {
                        "gate": gate,
                        "n": n,
                        "p50_ms": round(statistics.median(latencies), 1),
                        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
                        "rss_mb": rss,
                        "activation_s": activation,
                        "set_load_s": load_s,
                    }
                )
                log(f"{gate} server, {n} modules: {rows[-1]}")
    return rows


def _register(sessions: Any, modules: list, count: int) -> list[str]:
    """Adapter rows for `count` enrolled modules, all inactive, with the request rows they belong to."""
    ids = []
    with transaction(sessions) as session:
        requests, adapters = ForgetRequestRepository(session), AdapterRepository(session)
        ApiKeyRepository(session).create("scale bench", ["admin"], token=TOKEN)
        master = MasterKey(MasterKey.generate())  # enrolled requests carry no uploads anyone reads back
        for i, (path, digest) in enumerate(modules[:count]):
            request = requests.create(
                seal_request(master, f"enrolled {i}", b"[]", []),
                method="cagul",
                params={},
                qa_sha256=[],
                callback_url=None,
                status="active",
            )
            adapter = adapters.create(
                request_id=request.id,
                method="cagul",
                state=INACTIVE,
                path=path,
                sha256=digest,
                base_fingerprint="",
                trainable_params=0,
                report={},
            )
            ids.append(adapter.id)
        AdapterSetRepository(session).record("scale bench: none active")
    return ids


def _deactivate_all(sessions: Any) -> None:
    with transaction(sessions) as session:
        sets, adapters = AdapterSetRepository(session), AdapterRepository(session)
        sets.lock()
        for adapter in adapters.active():
            adapters.set_state(adapter, INACTIVE)
        sets.record("scale bench: none active")


def _set_active(sessions: Any, client: httpx.Client, adapter_ids: list[str], n: int) -> float:
    """Make exactly the first `n` adapters active in one set version; seconds until the server serves it."""
    with transaction(sessions) as session:
        sets, adapters = AdapterSetRepository(session), AdapterRepository(session)
        sets.lock()
        first = set(adapter_ids[:n])
        for adapter in adapters.by_ids(adapter_ids):
            wanted = ACTIVE if adapter.id in first else INACTIVE
            if adapter.state != wanted:
                adapters.set_state(adapter, wanted)
        version = sets.record(f"scale bench: {n} active").version
    return _served_after(client, version, timeout=3600)


def _one_more_activation(sessions: Any, client: httpx.Client, adapter_ids: list[str], n: int) -> float | None:
    """Seconds from one activation's commit until the server serves its set version, at `n` active.

    Below the registered count one more adapter joins (N+1), then leaves; at it, the last one leaves and its
    re-activation (N-1 to N) is timed.
    """
    if not adapter_ids:
        return None
    extra = adapter_ids[n] if n < len(adapter_ids) else adapter_ids[n - 1]
    steps = [(ACTIVE, True), (INACTIVE, False)] if n < len(adapter_ids) else [(INACTIVE, False), (ACTIVE, True)]
    timed = None
    for state, measured in steps:
        with transaction(sessions) as session:
            sets, adapters = AdapterSetRepository(session), AdapterRepository(session)
            sets.lock()
            adapters.set_state(adapters.get(extra), state)
            version = sets.record(f"scale bench: one {state}").version
        seconds = _served_after(client, version, timeout=120)
        timed = seconds if measured else timed
    return timed


def _served_after(client: httpx.Client, version: int, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if client.get("/readyz").json().get("adapter_set_version") == version:
            return round(time.perf_counter() - started, 3)
        time.sleep(0.01)
    raise RuntimeError(f"the server did not serve set version {version} within {timeout} s")


def _queries(world_root: Path) -> list[tuple[str, str]]:
    from unlearning.world import World

    world = World(world_root)
    people = world.split("retain") + world.split("unseen")
    return [
        (base64.b64encode(world.image_path(p.id, v).read_bytes()).decode(), f.train_questions[0])
        for p in people
        for v in range(world.config.n_views)
        for f in p.facts[:1]
    ]


@contextmanager
def _server(
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
    command = [sys.executable, "-m", "uvicorn", "--factory", "server.app:create_app", "--port", str(port)]
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


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    import torch

    return (
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, "
        f"torch {torch.__version__}, {platform.system()}"
    )


def markdown(result: dict[str, Any]) -> str:
    llava = result["module_at_llava_1_5_7b"]
    lines = [
        f"# Gate at scale ({result['world']} world)",
        "",
        f"Commit {result['commit'][:12]}, {result['date']}, {result['machine']}. Two-stage gate: "
        f"{result['candidates']} candidates. {result['plan']['enrolled']} enrolled modules, TPR on the held-out "
        f"photo of up to {result['plan']['sampled']} sampled subjects, false fires on {result['plan']['benign']} "
        f"benign photos; {result['requests_per_row']} /v1/vqa requests per row through one server process.",
        "",
        f"One module at LLaVA-1.5-7B shapes (576 visual tokens x 4096): {llava['parameters']:,} parameters, "
        f"{llava['artifact_bytes'] / 2**20:.1f} MiB on disk (encoder in bf16, gate in fp32).",
        "",
        "| gate | N | p50 ms | p95 ms | p50 vs N=0 | RSS MB | TPR | recall@k | nearest is own | FPR | FPR 95% upper "
        "| margin | TPR / FPR calibrated to 1% | activation s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['gate']} | {r['n']} | {r['p50_ms']} | {r['p95_ms']} | {r['p50_ratio']} | {r['rss_mb']} | "
            f"{_fmt(r['tpr'])} | {_fmt(r['recall_at_k'])} | {_fmt(r['identification_at_1'])} | {_fmt(r['fpr'])} | "
            f"{_fmt(r['fpr_upper95'])} | {r['margin']} | {_fmt(r['calibrated_1pct']['tpr'])} / "
            f"{_fmt(r['calibrated_1pct']['fpr'])} | {_fmt(r['activation_s'])} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def write(result: dict[str, Any], json_path: Path, markdown_path: Path) -> None:
    for path in (json_path, markdown_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    markdown_path.write_text(markdown(result))
