"""Where `/v1/vqa` time goes at N enrolled modules: the gate's own steps in process, and the served p50 with the
server's background passes at their defaults and slowed to once an hour, in one run.

`lethe bench scale` gives one p50 per N from one server process per gate; its ratio at 10,000 moved from 1.06 to
1.35 between two runs with the same gate code. This script asks the two questions that ratio leaves open: how
much of an answer the gate itself takes at N (identity embedding, routing, against N = 0), and whether the
background passes (the registry read every `LETHE_ENGINE_SYNC_INTERVAL_S`, the artifact checks every
`LETHE_ENGINE_INTEGRITY_INTERVAL_S`) slow answers at N. Each served row is a fresh server process with the set
loaded at start-up, held as `LETHE_GATE_SYSTEM_FPR` says; the rows are repeated to show how far processes differ.
The modules are `lethe bench scale`'s own enrolled ones (built and cached by it, or here on first use).

Run: LETHE_GATE_SYSTEM_FPR=0.01 python -m bench.scale_latency --data-dir DIR [--n 10000] [--repeats 2]
[--requests 300] [--json PATH]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from unlearning.backbones import load_backbone
    from unlearning.evaluation.drivers.scale import ScalePlan, enrolled_modules
    from unlearning.world import WORLD_PRESETS
    from unlearning.world.builder import build_world

    world = build_world(args.data_dir, WORLD_PRESETS["scale"], with_retain_model=False)
    backbone = load_backbone(world.reference_model_dir)
    backbone.freeze()
    modules = enrolled_modules(world, backbone, ScalePlan(enrolled=args.n), args.data_dir / "scale", print)
    queries = vqa_queries(world.root)
    in_process = gate_steps(backbone, modules, queries[:60], args.candidates)
    del backbone
    torch.set_num_threads(1)  # the server process gets the cores while it is timed
    served = served_p50(args.data_dir, modules, queries, args)
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
    work = data_dir / "scale" / "latency"
    url, sessions, ids = fresh_registry(work, modules, args.n)
    rows = []
    for repeat in range(args.repeats):
        for passes, env in PASSES.items():
            for n in (0, args.n):
                version = activate_first(sessions, ids, n)
                server = api_server(data_dir, "scale", url, args.candidates, work / "serve.log")
                with mock.patch.dict(os.environ, env), server as (client, _pid):
                    served_after(client, version, timeout=3600)
                    warm_up(client, queries)
                    latencies = timed_requests(client, queries, args.requests)
                figures = latency_figures(latencies) | {"mean_ms": round(statistics.fmean(latencies), 1)}
                row = {"repeat": repeat, "passes": passes, "n": n, **figures}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
