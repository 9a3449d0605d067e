"""Where `/v1/vqa` time goes at N enrolled modules: the gate's own steps in process, and the served p50 with the
server's background passes at their defaults and slowed to once an hour, in one run.

`lethe bench scale` gives one p50 per N from one server process per gate; its ratio at 10,000 moved from 1.06 to
1.35 between two runs with the same gate code. This script asks the two questions that ratio leaves open: how
much of an answer the gate itself takes at N (identity embedding, routing, against N = 0), and whether the
background passes (the registry read every `LETHE_ENGINE_SYNC_INTERVAL_S`, the artifact checks every
`LETHE_ENGINE_INTEGRITY_INTERVAL_S`) slow answers at N. Each served row is a fresh server process with the set
loaded at start-up, held as `LETHE_GATE_SYSTEM_FPR` says; the rows are repeated to show how far processes differ.
The modules are `lethe bench scale`'s own enrolled ones (built and cached by it, or here on first use).

`--within-server` asks the served question on one process per configuration instead (N = 0, N, 0, N in turn, so
the spread between server processes cancels out of the ratio): with the defaults, with one intra-op thread
(`OMP_NUM_THREADS=1`), and with the integrity pass hourly.

Run: LETHE_GATE_SYSTEM_FPR=0.01 python -m bench.scale_latency --data-dir DIR [--n 10000] [--repeats 2]
[--requests 300] [--within-server] [--json PATH]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from PIL import Image

from lethe.scale.bench import routing_only
from lethe.scale.registry import activate_first, served_after
from lethe.scale.report import commit, machine
from lethe.scale.serving import api_server, fresh_registry, latency_figures, timed_requests, vqa_queries, warm_up

# The background passes as the server runs them, and slowed to once an hour (the set is loaded at start-up).
PASSES = {
    "default": {},
    "passes_off": {"LETHE_ENGINE_SYNC_INTERVAL_S": "3600", "LETHE_ENGINE_INTEGRITY_INTERVAL_S": "3600"},
}
STEPS = ("pixels", "tokens", "identity", "route", "generate", "answer")
# What might slow answers only when modules are served: another thread beside the answering thread's OpenMP team.
WITHIN_SERVER = {
    "default": {},
    "one_thread": {"OMP_NUM_THREADS": "1"},
    "integrity_hourly": {"LETHE_ENGINE_INTEGRITY_INTERVAL_S": "3600"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--world", default="scale", help="tiny: a smoke run of this script, its figures not for use")
    parser.add_argument("--within-server", action="store_true", help="N = 0 and N in turn on one server per setting")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from unlearning.backbones import load_backbone
    from unlearning.evaluation.drivers.scale import ScalePlan, enrolled_modules
    from unlearning.world import WORLD_PRESETS
    from unlearning.world.builder import build_world

    world = build_world(args.data_dir, WORLD_PRESETS[args.world], with_retain_model=False)
    backbone = load_backbone(world.reference_model_dir)
    backbone.freeze()
    modules = enrolled_modules(world, backbone, ScalePlan(enrolled=args.n), args.data_dir / "scale", print)
    queries = vqa_queries(world.root)
    in_process = gate_steps(backbone, modules, queries[:60], args.candidates)
    del backbone
    torch.set_num_threads(1)  # the server process gets the cores while it is timed
    served = (within_server if args.within_server else served_p50)(args.data_dir, modules, queries, args)
    report = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "n": args.n,
        "candidates": args.candidates,
        "system_fpr": os.environ.get("LETHE_GATE_SYSTEM_FPR", "0"),
        "requests": args.requests,
        "in_process_ms": in_process,
        "served": served,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def gate_steps(backbone: Any, modules: list, queries: list[dict[str, str]], candidates: int) -> dict[str, Any]:
    """Median ms of each step of one answer, at N = 0 and with every module in the gate, in this process."""
    from unlearning.artifacts import load_gate
    from unlearning.cagul.gate import CagulGate

    photos = [(Image.open(io.BytesIO(base64.b64decode(q["image"]))).convert("RGB"), q["question"]) for q in queries]
    gate = CagulGate(backbone, candidates=candidates, rewrites=routing_only)
    out = {"0": _timed_steps(backbone, gate, photos)}
    fingerprint = backbone.fingerprint()
    for i, (path, digest) in enumerate(modules):
        part = load_gate(path, fingerprint, digest)
        gate.add_discriminator(f"m{i:05d}", part.discriminator, part.config, part.shape["identity_dim"])
    # Every step runs as served, but no module may claim a photo: the encoder path is not what is timed here.
    gate.min_cosine = 0.999
    out[str(len(modules))] = _timed_steps(backbone, gate, photos)
    return out


def _timed_steps(backbone: Any, gate: Any, photos: list[tuple[Image.Image, str]], repeats: int = 3) -> dict[str, float]:
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    for _ in range(repeats):
        for image, question in photos:
            marks = [time.perf_counter()]
            inputs = backbone.pixel_values([image])
            marks.append(time.perf_counter())
            tokens = backbone.visual_tokens(inputs)
            marks.append(time.perf_counter())
            embeddings = backbone.identity_embeddings(tokens) if len(gate) else None
            marks.append(time.perf_counter())
            if len(gate):
                gate.route(tokens, embeddings)
            marks.append(time.perf_counter())
            batch = backbone.make_batch(inputs, [question], None).to(backbone.device)
            with backbone.reusing_visual_tokens(tokens, inputs):
                backbone.generate(batch, None, max_new_tokens=24)
            marks.append(time.perf_counter())
            gate.answer([image], [question])
            marks.append(time.perf_counter())
            for step, start, end in zip(STEPS, marks[:-1], marks[1:], strict=True):
                times[step].append(1000 * (end - start))
    return {step: round(statistics.median(values), 2) for step, values in times.items()}


def served_p50(
    data_dir: Path, modules: list, queries: list[dict[str, str]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """p50/p95 through a fresh server per row: N = 0 and N, each with the passes at their defaults and off."""
    return served_rows(data_dir, modules, queries, args, PASSES, ((0,), (args.n,)))


def within_server(
    data_dir: Path, modules: list, queries: list[dict[str, str]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """p50/p95 at N = 0, N, 0, N on one server process per setting of `WITHIN_SERVER`, repeated."""
    return served_rows(data_dir, modules, queries, args, WITHIN_SERVER, ((0, args.n, 0, args.n),))


def served_rows(
    data_dir: Path,
    modules: list,
    queries: list[dict[str, str]],
    args: argparse.Namespace,
    settings: dict[str, dict[str, str]],
    servers: tuple[tuple[int, ...], ...],
) -> list[dict[str, Any]]:
    """Per repeat and setting (environment), one server per entry of `servers`, timed at each of its N in turn."""
    work = data_dir / "scale" / "latency"
    url, sessions, ids = fresh_registry(work, modules, args.n)
    rows = []
    for repeat in range(args.repeats):
        for setting, env in settings.items():
            for counts in servers:
                version = activate_first(sessions, ids, counts[0])  # loaded at start-up, whatever the sync interval
                server = api_server(data_dir, args.world, url, args.candidates, work / "serve.log")
                with mock.patch.dict(os.environ, env), server as (client, _pid):
                    for i, n in enumerate(counts):
                        version = activate_first(sessions, ids, n) if i else version
                        load_s = served_after(client, version, timeout=3600)
                        labels = {"repeat": repeat, "setting": setting, "n": n, "set_load_s": load_s}
                        rows.append(_timed_row(client, queries, args.requests, labels))
    return rows


def _timed_row(client: Any, queries: list[dict[str, str]], requests: int, labels: dict[str, Any]) -> dict[str, Any]:
    """Warm up, time `requests` answers, print and return the row: `labels` then the figures."""
    warm_up(client, queries)
    latencies = timed_requests(client, queries, requests)
    row = labels | latency_figures(latencies) | {"mean_ms": round(statistics.fmean(latencies), 1)}
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
