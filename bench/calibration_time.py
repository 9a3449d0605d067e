"""What holding the served set to a false-fire budget costs one activation: the set's calibration at N modules once
one more joins, the whole benign set embedded and routed anew (as every activation did before) beside only the
photos the new module could change routed again, in one run.

The served set is calibrated again under the lock answers wait on whenever a module joins or leaves
(`LETHE_GATE_SYSTEM_FPR` > 0). The modules are synthetic identity gates (`bench.probe_check.gate_of`: each fires
near its own prototype); the benign set is the world's (`world_benign_set`), as the server calibrates on it. Both
must set the same floor (to float rounding). Timing only: accuracy at N is `lethe bench scale`'s.

Run: python -m bench.calibration_time --data-dir DIR --counts 100,1000,10000 [--world tiny] [--candidates 0]
[--json PATH] (`--candidates 0`: the exhaustive gate)
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from bench.probe_check import gate_of
from lethe.scale.report import commit, machine
from unlearning.cagul.config import CagulConfig
from unlearning.cagul.gate import DEFAULT_CANDIDATES, CagulGate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--counts", default="100,1000,10000")
    parser.add_argument("--world", default="tiny")
    parser.add_argument("--budget", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES, help="0: the exhaustive gate")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from unlearning.backbones import load_backbone
    from unlearning.world import WORLD_PRESETS
    from unlearning.world.builder import build_world
    from unlearning.world.requests import world_benign_set

    world = build_world(args.data_dir, WORLD_PRESETS[args.world], with_retain_model=False)
    backbone = load_backbone(world.reference_model_dir)
    backbone.freeze()
    benign = backbone.tokens_of([im for im, _ in world_benign_set(world)])
    rows = [timed(backbone, benign, int(n), args.budget, args.repeats, args.candidates) for n in args.counts.split(",")]
    report = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "world": args.world,
        "benign_photos": len(benign),
        "budget": args.budget,
        "candidates": args.candidates,
        "rows": rows,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def timed(backbone, benign: torch.Tensor, n: int, budget: float, repeats: int, candidates: int) -> dict:
    generator = torch.Generator().manual_seed(n)
    dim = backbone.identity_dim
    # Prototypes near the benign photos' own embeddings, so gates fire on some of them and the floor has work to do.
    anchors = backbone.identity_embeddings(benign[: min(len(benign), 256)])
    noise = 0.6 * torch.randn(n, dim, generator=generator) / dim**0.5
    prototypes = torch.nn.functional.normalize(anchors[torch.arange(n) % len(anchors)] + noise, dim=1)
    gate = CagulGate(backbone, candidates=candidates)
    config = CagulConfig()
    gates = [gate_of(dim, prototypes[i], generator, backbone) for i in range(n)]
    for i, discriminator in enumerate(gates[:-1]):
        gate.add_discriminator(f"m{i:05d}", discriminator, config)
    row: dict = {"n": n}
    anew, joined, floors = [], [], []
    for _ in range(repeats):
        gate.calibrate(benign, budget, scale="cosine")  # the set before the activation, as served
        gate.add_discriminator(f"m{n - 1:05d}", gates[-1], config)
        started = time.perf_counter()
        floors.append(gate.calibrate(benign, budget, scale="cosine"))
        joined.append(time.perf_counter() - started)
        z = benign.clone()  # another set: embedded and routed whole, as every activation calibrated before
        started = time.perf_counter()
        floors.append(gate.calibrate(z, budget, scale="cosine"))
        anew.append(time.perf_counter() - started)
        gate.remove_module(f"m{n - 1:05d}")
    assert max(floors) - min(floors) < 1e-6, f"the two calibrations disagree: {floors}"
    row["whole_set_anew_s"] = round(sorted(anew)[len(anew) // 2], 4)
    row["one_join_s"] = round(sorted(joined)[len(joined) // 2], 4)
    row["floor"] = round(floors[-1], 6)
    print(row, flush=True)
    return row


if __name__ == "__main__":
    main()
