"""The record of a `lethe bench scale` run: the commit and machine it ran on, its JSON and Markdown table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
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
        "| gate | N | p50 ms | p95 ms | p50 vs N=0 | timed queries gated | RSS MB | TPR | recall@k | nearest is own "
        "| FPR | FPR 95% upper "
        "| served hold-back | TPR / FPR calibrated to 1%: logit margin | cosine floor | activation s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['gate']} | {r['n']} | {r['p50_ms']} | {r['p95_ms']} | {r['p50_ratio']} | "
            f"{_fmt(r.get('timed_gated'))} | {r['rss_mb']} | "
            f"{_fmt(r['tpr'])} | {_fmt(r['recall_at_k'])} | {_fmt(r['identification_at_1'])} | {_fmt(r['fpr'])} | "
            f"{_fmt(r['fpr_upper95'])} | {_held(r)} | {_calibrated(r, 'calibrated_1pct')} | "
            f"{_calibrated(r, 'cosine_1pct')} | {_fmt(r['activation_s'])} |"
        )
    return "\n".join(lines) + "\n"


def _held(row: dict[str, Any]) -> str:
    """How the served set was held back: a logit margin on every threshold, or a floor on the prototype cosine."""
    if row.get("min_cosine") is not None:
        return f"cosine >= {row['min_cosine']}"
    return f"logit +{row['margin']}" if row["margin"] else "none"


def _calibrated(row: dict[str, Any], key: str) -> str:
    """TPR / FPR of the row's set calibrated one way (rows written before the cosine floor lack it)."""
    figures = row.get(key)
    return "-" if figures is None else f"{_fmt(figures['tpr'])} / {_fmt(figures['fpr'])}"


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def write(result: dict[str, Any], json_path: Path, markdown_path: Path) -> None:
    for path in (json_path, markdown_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    markdown_path.write_text(markdown(result))
