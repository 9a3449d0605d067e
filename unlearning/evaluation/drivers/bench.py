"""The side-by-side forgetting table: every method and ablation on one forget split, each row in a fresh process.

A fresh process per row keeps rows from sharing adapters, caches or the peak-memory high-water mark.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearning.backbones import load_backbone, parameters_sha256
from unlearning.cagul.gate import CagulGate
from unlearning.errors import InvalidInputError, UnlearningError
from unlearning.evaluation.drivers.quality import compare_rows, evaluate_row
from unlearning.methods import METHODS, method_config, unlearn
from unlearning.processes import run_in_processes
from unlearning.progress import ProgressFn
from unlearning.world.requests import forget_data, world_retain_set
from unlearning.world.store import World

MODEL_ROWS = ("reference", "retain")
MAIN_METHODS = ("cagul", "ga", "gd", "kl", "idk", "npo")
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    **{f"cagul-lowest-{k}": ("cagul", {"token_rule": "lowest", "token_share": k / 100}) for k in (10, 25, 50, 75)},
    "cagul-random-50": ("cagul", {"token_rule": "random", "token_share": 0.5}),
    "cagul-highest-50": ("cagul", {"token_rule": "highest", "token_share": 0.5}),
    "cagul-fabricated": ("cagul", {"forget_target": "fabricated"}),
    "cagul-meanpool": ("cagul", {"discriminator_input": "mean_pool"}),
    "cagul-flatten": ("cagul", {"discriminator_input": "flatten"}),
    "cagul-visual-only": ("cagul", {"text_module": False}),
}
# Fewer steps everywhere: the smoke version the test suite runs. Not for reported numbers. CAGUL's discriminator keeps
# its full 600 steps (about 1 s more on one core, tiny world): at 150 other people's photos scored up to 0.61 under
# the 0.75 threshold (0.13 at 600; 4 seeds), and one CI machine's build fired on a retain person (retain 0.917).
QUICK_PARAMS: dict[str, dict[str, Any]] = {
    "cagul": {"steps": 40, "positive_augmentations": 8},
    **{m: {"steps": 10} for m in ("ga", "gd", "kl", "idk", "npo")},
}
COLUMNS = (
    "leak_direct",
    "leak_paraphrase",
    "leak_new_image",
    "leak_named",
    "leak_named_other_photo",
    "refusal_rate",
    "swap_rate",
    "rouge_forget",
    "rouge_retain",
    "truth_ratio_forget",
    "forget_quality",
    "mia_auc",
    "mia_auc_minkpp",
    "model_utility",
    "retain_identical",
    "unseen_identical",
    "named_identical",
    "gate_tpr",
    "gate_fpr",
    "trainable_params",
    "wall_seconds",
    "peak_mem_mb",
)
RowProgressFn = Callable[[str, str, int, int], None]  # the table's progress: row, then phase, step and total


@dataclass(frozen=True)
class RowSpec:
    """One row: a built model as it is (`method` None) or a method trained with `params`."""

    name: str
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def plan_rows(methods: list[str] | None, ablations: bool, quick: bool = False) -> list[RowSpec]:
    """The rows to run: reference and retain model first, then methods, then ablations."""
    chosen = list(MAIN_METHODS) if methods is None else methods
    unknown = [m for m in chosen if m not in METHODS and m not in ABLATIONS]
    if unknown:
        raise InvalidInputError(f"unknown methods {unknown}; choose from {sorted([*METHODS, *ABLATIONS])}")
    rows = [RowSpec(name) for name in MODEL_ROWS]
    names = chosen + ([a for a in ABLATIONS if a not in chosen] if ablations else [])
    for name in names:
        method, params = ABLATIONS.get(name, (name, {}))
        if quick:
            params = {**QUICK_PARAMS.get(method, {}), **params}
        method_config(method, params)  # fail here, not after an hour of other rows
        rows.append(RowSpec(name, method, params))
    return rows


def run_row(world_root: str, split: str, spec: RowSpec, progress: ProgressFn) -> dict[str, Any]:
    """Train (when the row has a method) and evaluate one row; meant to run in a fresh process."""
    torch.manual_seed(0)
    world = World(world_root)
    forget = world.split(split)
    retain = world.split("retain")
    unseen = world.split("unseen")
    model_dir = world.retain_model_dir if spec.name == "retain" else world.reference_model_dir
    backbone = load_backbone(model_dir)
    backbone.freeze()
    base_hash = parameters_sha256(backbone.model)
    extra: dict[str, Any] = {}
    if spec.method is None:
        gate = CagulGate(backbone)
        build = json.loads((model_dir / "build.json").read_text())
        # The retain model is exact unlearning: its cost is retraining the whole model without the forget set.
        trainable, wall = (build["parameters"], build["train_seconds"]) if spec.name == "retain" else (0, 0.0)
    else:
        requests = [forget_data(world, [p.id], named=world.config.named_questions) for p in forget]
        retain_set = world_retain_set(world, exclude=[p.id for p in forget])
        unlearned = unlearn(spec.method, backbone, requests, retain_set, spec.params, progress)
        gate, trainable, wall = unlearned.gate, unlearned.trainable_params, unlearned.train_seconds
        extra = {"config": unlearned.config}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    progress("evaluate", 0, 1, math.nan)
    row, raw = evaluate_row(gate, world, forget, retain, unseen)
    if spec.method == "cagul" and parameters_sha256(backbone.model) != base_hash:
        raise UnlearningError("CAGUL changed the base model's parameters")
    progress("evaluate", 1, 1, math.nan)
    return {
        "row": {"method": spec.name, **row, "trainable_params": trainable, "wall_seconds": wall, "peak_mem_mb": peak},
        "raw": raw,
        "extra": extra,
    }


def run_in_process(world_root: str, split: str, spec: RowSpec, progress: RowProgressFn | None = None) -> dict[str, Any]:
    relay: ProgressFn | None = None
    if progress is not None:
        relay = lambda phase, step, total, _loss: progress(spec.name, phase, step, total)  # noqa: E731
    result: dict[str, Any] = run_in_processes({spec.name: (run_row, (world_root, split, spec))}, relay)[spec.name]
    return result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, {platform.system()}"


def run_quality_bench(
    world: World,
    split: str,
    rows: list[RowSpec],
    progress: RowProgressFn | None = None,
) -> dict[str, Any]:
    """Run every row and return the table as JSON-ready data."""
    if split not in ("forget1", "forget5", "forget10"):
        raise InvalidInputError(f"split {split!r} is not a forget split; choose forget1, forget5 or forget10")
    if not world.is_complete():
        raise InvalidInputError("the world's models are not built: run `lethe world build` first")
    names = [r.name for r in rows]
    if names[:2] != list(MODEL_ROWS):
        raise InvalidInputError("the reference and retain rows come first: every other row is compared with them")
    started = time.perf_counter()
    results = [run_in_process(str(world.root), split, spec, progress) for spec in rows]
    table = [r["row"] for r in results]
    compare_rows(table, [r["raw"] for r in results], reference=0, retain_model=1)
    return {
        "split": split,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "world": world.root.name,
        "subjects": [p.id for p in world.split(split)],
        "total_seconds": round(time.perf_counter() - started, 1),
        "rows": [{k: row.get(k) for k in ("method", *COLUMNS)} for row in table],
        "configs": {r["row"]["method"]: r["extra"].get("config") for r in results if r["extra"]},
    }


def markdown_table(result: dict[str, Any]) -> str:
    """The table as Markdown, with the run's split, date and machine."""
    header = ["method", *COLUMNS]
    lines = [
        f"# Forgetting table: {result['split']} ({', '.join(result['subjects'])})",
        "",
        f"- world: `{result['world']}`",
        f"- date: {result['date']}",
        f"- machine: {result['machine']}",
        f"- total wall time: {result['total_seconds']} s",
        "- generated by `lethe bench quality`; do not edit by hand",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in result["rows"]:
        lines.append("| " + " | ".join(format_value(row.get(k)) for k in header) + " |")
    return "\n".join(lines) + "\n"


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
