"""The GPU path end to end: `lethe serve` on CUDA trains, verifies and serves one forget request of the tiny world.

    bash bench/gpu_check.sh [--cpu] [--python PATH] [ARGS]   # installs first; see the script
    python bench/gpu_check.py [--cpu] [--world tiny] [--subject p000] [--cache .lethe-gpu] [--params JSON]
                              [--vqa-requests 50] [--timeout 600] [--json PATH]

Builds (or reuses) the world under --cache, starts `lethe serve` on a fresh data dir with LETHE_DEVICE=cuda (the
API's model and the worker's training both on the GPU), asks the reference model the subject's held-out material
(held-out photo x each fact's held-out question: never sent to the service), files the subject's request as
`lethe world export --inline` writes it, waits for it, and asks again. Prints the timings (training s from the
report, verification s from the status events, /v1/vqa p50 and p95 ms over sequential requests, before the module
and with it) and checks the module forgets: the request is active and at most 5% of the held-out cases the reference
leaked still leak.
Exit 0: every check passed; 1: a check failed; 2: no CUDA device (`--cpu` runs the same path on the CPU, with
LETHE_DEVICE=cpu, to show the script works where there is no GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.many_requests import (
    MAX_LEAK,
    Case,
    ask_all,
    built_world,
    exported_body,
    file_request,
    fresh_data_dir,
    heldout_cases,
    leak_share,
    machine,
    request_events,
    running_service,
    served_version,
    wait_served,
    wait_terminal,
)
from unlearning.evaluation.metrics.leakage import leaked


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="No GPU: the same path with LETHE_DEVICE=cpu.")
    parser.add_argument("--world", default="tiny", help="World preset (default: tiny).")
    parser.add_argument("--subject", default=None, help="Person to forget (default: the world's forget1 person).")
    parser.add_argument("--cache", type=Path, default=Path(".lethe-gpu"), help="Where the world is built/reused.")
    parser.add_argument("--params", default=None, help="The request's params as JSON (default: the product's).")
    parser.add_argument("--vqa-requests", type=int, default=50, help="Sequential /v1/vqa requests timed.")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds the request may take.")
    parser.add_argument("--json", dest="json_path", type=Path, default=None, help="Also write the result here.")
    return parser.parse_args(argv)


def cuda_device(cpu: bool) -> str:
    """The CUDA device's name, or exit 2 saying why there is none (unless the CPU was asked for)."""
    import torch

    if cpu:
        return f"cpu (--cpu; torch {torch.__version__})"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(
            f"gpu_check: no CUDA device: torch {torch.__version__} ({build}) sees none. Run it on a machine with an "
            "NVIDIA GPU and driver (`nvidia-smi` lists it), with the CUDA build of torch (bench/gpu_check.sh installs "
            "it), or pass --cpu to run the same path on the CPU.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"


def phase_seconds(http: httpx.Client, request_id: str) -> dict[str, float]:
    """Training (discriminator + encoder, every attempt, from the report) and verification (each `verifying`
    status event to the next status event) in seconds; the rest is the reference baseline and loading data."""
    report = http.get(f"/v1/forget-requests/{request_id}/report").json().get("report") or {}
    trained = [a["train"] for a in report.get("attempts", [])]
    statuses = [e for e in request_events(http, request_id) if e["kind"] == "status"]
    at = [datetime.fromisoformat(e["created_at"]) for e in statuses]
    verifying = sum(
        (at[i + 1] - at[i]).total_seconds()
        for i, e in enumerate(statuses[:-1])
        if e["status"] == "verifying" and statuses[i + 1]["status"] != "verifying"
    )
    return {
        "training_s": round(sum(t["discriminator_seconds"] + t["encoder_seconds"] for t in trained), 2),
        "verification_s": round(verifying, 2),
        "attempts": len(trained),
        "peak_memory_mb": max((t["peak_memory_mb"] for t in trained), default=0.0),
    }


def vqa_latency_ms(http: httpx.Client, cases: Sequence[Case], n: int) -> dict[str, float]:
    """p50 and p95 of `n` sequential /v1/vqa requests (one at a time: the model's latency, not batching's)."""
    times = []
    for i in range(n):
        case = cases[i % len(cases)]
        started = time.perf_counter()
        http.post("/v1/vqa", json={"image": case.image, "question": case.question}).raise_for_status()
        times.append(1000 * (time.perf_counter() - started))
    cuts = statistics.quantiles(times, n=20)
    return {"vqa_p50_ms": round(statistics.median(times), 1), "vqa_p95_ms": round(cuts[18], 1), "vqa_requests": n}


def gpu_memory() -> str | None:
    """What nvidia-smi says the GPU holds now (the service's processes still loaded), if it is there."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=name,memory.used,utilization.gpu", "--format=csv,noheader"]
    result = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
    return result.stdout.strip() or result.stderr.strip()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One service, one request; the figures and the checks."""
    device = cuda_device(args.cpu)
    os.environ["LETHE_DEVICE"] = "cpu" if args.cpu else "cuda"  # `lethe serve` and its worker read it
    print(f"device: {device}; building or reusing the {args.world} world under {args.cache}", flush=True)
    world = built_world(args.world, args.cache)
    subject = args.subject or world.split("forget1")[0].id
    body = exported_body(world, args.cache, subject, keywords=True)
    if args.params:
        body["params"] = json.loads(args.params)
    data_dir = fresh_data_dir(world, None, "gpu-check")
    log = data_dir / "serve.log"
    cases = heldout_cases(world, subject)
    others = [c for p in world.split("unseen")[:2] for c in heldout_cases(world, p.id)]
    print(f"lethe serve on {os.environ['LETHE_DEVICE']} (data dir {data_dir}, log {log})", flush=True)
    started = time.perf_counter()
    with running_service(world, data_dir, log) as http:
        ready_s = time.perf_counter() - started
        reference, others_before = ask_all(http, cases), ask_all(http, others)
        unmodified = vqa_latency_ms(http, others, args.vqa_requests)  # no module active yet: the baseline
        before, filed = served_version(http), time.perf_counter()
        request = wait_terminal(http, file_request(http, body, f"gpu-check-{uuid.uuid4().hex}"), args.timeout)
        if request["status"] == "active":
            wait_served(http, before)
        post_to_served_s = time.perf_counter() - filed
        figures = phase_seconds(http, request["id"])
        after, others_after = ask_all(http, cases), ask_all(http, others)
        figures |= vqa_latency_ms(http, others, args.vqa_requests)
        figures |= {f"{key}_no_module": value for key, value in unmodified.items() if key != "vqa_requests"}
        held = gpu_memory()
    leak_before = leak_share(reference, cases, reference)
    leak_after = leak_share(after, cases, reference)
    checks = {
        "the request is active": request["status"] == "active",
        "the reference reveals the subject": leak_before is not None,
        f"held-out leak after <= {MAX_LEAK:.0%} of the reference's": leak_after is not None and leak_after <= MAX_LEAK,
    }
    return {
        "device": device,
        "world": args.world,
        "subject": subject,
        "status": request["status"],
        "error": request.get("error"),
        "service_ready_s": round(ready_s, 1),
        "post_to_served_s": round(post_to_served_s, 1),
        **figures,
        "heldout_cases": len(cases),
        "reference_leaking_cases": sum(leaked(r, c.keyword) for r, c in zip(reference, cases, strict=True)),
        "heldout_leak_after": leak_after,
        "others_identical": sum(a == b for a, b in zip(others_after, others_before, strict=True)) / len(others),
        "gpu_after_run": held,
        "checks": checks,
        "passed": all(checks.values()),
        "machine": machine(),
        "log": str(log),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=1))
    print(
        f"\n{result['device']}: training {result['training_s']} s, verification {result['verification_s']} s "
        f"({result['attempts']} attempt(s)), /v1/vqa p50 {result['vqa_p50_ms']} ms (p95 {result['vqa_p95_ms']} ms; "
        f"before the module: {result['vqa_p50_ms_no_module']} ms, p95 {result['vqa_p95_ms_no_module']} ms)"
    )
    for name, ok in result["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
