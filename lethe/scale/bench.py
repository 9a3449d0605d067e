"""`lethe bench scale`: the gate at 0 to 10,000 active requests, two-stage and exhaustive side by side.

Enrolled modules are real: each gate trained on its subject's photos (bulk enrollment), each carrying the
encoder of a module trained as a request trains it. Accuracy is measured on the gate object the server uses;
latency, memory and the time for one more activation to take effect through a real server process (uvicorn,
default settings but the world and the gate) that reads the registry as it would in production.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.settings import get_settings
from lethe.scale.report import commit, machine
from lethe.scale.serving import GATES, Log, gate_kinds, serving_rows

CALIBRATED_BUDGET = 0.01


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
    plan = ScalePlan.smoke(max(counts)) if world_name == "tiny" else ScalePlan(enrolled=max(counts))
    modules = enrolled_modules(world, backbone, plan, data_dir / "scale", log)
    log("rendering and encoding the held-out photos and the benign population")
    seen = material(world, backbone, plan)
    settings = get_settings()
    system_fpr = settings.gate_system_fpr
    accuracy = _accuracy_rows(backbone, modules, counts, candidates, (system_fpr, settings.gate_calibration), seen, log)
    del seen
    torch.set_num_threads(1)  # the server process gets the cores while it is timed
    serving = serving_rows(data_dir, world.root, world_name, modules, counts, candidates, requests, log)
    rows = []
    for gate in GATES:
        base = next(r["p50_ms"] for r in serving if r["gate"] == gate and r["n"] == counts[0])
        for n in counts:
            row = {"gate": gate, "n": n, **next(r for r in serving if r["gate"] == gate and r["n"] == n)}
            row |= accuracy[(gate, n)]
            row["p50_ratio"] = round(row["p50_ms"] / base, 3) if base else None
            rows.append(row)
    return {
        "commit": commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "world": world_name,
        "candidates": candidates,
        "system_fpr_budget": system_fpr,
        "calibration": settings.gate_calibration,
        "requests_per_row": requests,
        "plan": {"enrolled": plan.enrolled, "sampled": plan.sampled, "benign": seen_size(plan)},
        "module_at_llava_1_5_7b": module_bytes(),
        "rows": rows,
    }


def seen_size(plan: Any) -> int:
    return int(plan.strangers + plan.lookalikes + plan.changed)


def _accuracy_rows(
    backbone: Any, modules: list, counts: list[int], candidates: int, served: tuple[float, str], seen: Any, log: Log
) -> dict:
    """Per gate and N: the accuracy figures, on the gate object the server serves with (routing only), as served
    (`served`: the system false-fire budget and the calibration scale) and calibrated to 1% on each scale."""
    from unlearning.artifacts import load_gate
    from unlearning.cagul.gate import CagulGate
    from unlearning.evaluation.drivers.scale import accuracy

    out = {}
    # One gate of each kind, growing with N as the server's does; loaded as the server loads (the gate part only).
    gates = {name: CagulGate(backbone, candidates=k, rewrites=routing_only) for name, k in gate_kinds(candidates)}
    fingerprint, added = backbone.fingerprint(), 0
    for n in counts:
        for i in range(added, n):
            part = load_gate(modules[i][0], fingerprint, modules[i][1])
            for gate in gates.values():
                gate.add_discriminator(f"m{i:05d}", part.discriminator, part.config, part.shape["identity_dim"])
        added = max(added, n)
        budget, scale = served
        for gate_name, gate in gates.items():
            started = time.perf_counter()
            gate.offset, gate.min_cosine = 0.0, float("-inf")  # the last N's calibration does not carry over
            if budget > 0:
                gate.calibrate(seen.calibration, budget, scale=scale)
            row = accuracy(gate, n, seen) | {"margin": round(gate.offset, 3), "min_cosine": _floor(gate.min_cosine)}
            # The alternatives, side by side: the set calibrated to a 1% budget on the world's benign set, with one
            # margin on every threshold (logit) or one floor on the prototype cosine (cosine).
            for key, other_scale in (("calibrated_1pct", "logit"), ("cosine_1pct", "cosine")):
                level = gate.calibrate(seen.calibration, CALIBRATED_BUDGET, scale=other_scale)
                other = accuracy(gate, n, seen)
                held = {"margin": round(level, 4)} if other_scale == "logit" else {"min_cosine": _floor(level)}
                row[key] = held | {k: other[k] for k in ("tpr", "fpr", "fpr_upper95")}
            out[(gate_name, n)] = row
            log(f"{gate_name} gate, {n} modules: {out[(gate_name, n)]} ({time.perf_counter() - started:.1f} s)")
    return out


def _floor(min_cosine: float) -> float | None:
    """The served cosine floor, None when there is none (JSON has no infinity)."""
    return None if math.isinf(min_cosine) else round(min_cosine, 4)


def routing_only(module_id: str) -> Any:
    raise RuntimeError(f"accuracy is measured on routing alone: no encoder is needed (asked for {module_id})")
