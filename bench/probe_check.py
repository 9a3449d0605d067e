"""Verification's stored-probe check at N served modules: every probe routed through both sets, as it was, beside
routing only the probes the new module could change (`probe_criteria`), in one run.

The modules are synthetic identity gates on the tiny world's backbone (its identity size and device), shaped as
trained ones behave: each fires on embeddings near its own prototype (cosine past about 0.65), each subject's 32
stored probes lie near its prototype (cosine about 0.8), and subjects come in look-alike families of four. Both
checks must count the same captured and released probes. The figures: their seconds, how many probes the filtered
check routed, and the bytes a module stores for its probes (identity embeddings now, visual tokens before, at the
tiny world's and LLaVA-1.5-7B's shapes).

The check of every probe is timed on the first `--sample` owners and scaled to all of them (each owner's probes
are routed on their own, so its cost is linear in the owners).

Run: python -m bench.probe_check --data-dir DIR --counts 1000,10000 [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from lethe.scale.report import commit, machine
from unlearning.cagul.config import CagulConfig
from unlearning.cagul.discriminator import Discriminator
from unlearning.cagul.gate import DEFAULT_CANDIDATES, CagulGate
from unlearning.cagul.verification import PROBE_LIMIT, StoredProbes, probe_criteria


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from unlearning.backbones import load_backbone
    from unlearning.world import WORLD_PRESETS
    from unlearning.world.builder import build_world

    backbone = load_backbone(
        build_world(args.data_dir, WORLD_PRESETS["tiny"], with_retain_model=False).reference_model_dir
    )
    rows = [check(backbone, n, args.sample) for n in (int(c) for c in args.counts.split(","))]
    report = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "rows": rows,
        "probe_bytes": probe_bytes(backbone),
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def gate_of(dim: int, prototype: torch.Tensor, generator: torch.Generator, backbone) -> Discriminator:
    """An identity gate firing where the cosine to `prototype` passes about 0.65."""
    d = Discriminator(backbone.n_visual_tokens, backbone.hidden_size, 128, "identity", dim)
    with torch.no_grad():
        noise = torch.randn(128, dim, generator=generator) * 0.02
        d.fc1.weight.copy_(prototype[None, :] * 10 + noise)
        d.fc1.bias.fill_(-6.0)
        d.fc2.weight.fill_(1.0 / 128)
        d.fc2.bias.fill_(-0.5)
        d.prototype.copy_(prototype)
    return d


def check(backbone, n: int, sample: int) -> dict:
    generator = torch.Generator().manual_seed(n)
    dim = backbone.identity_dim
    config = CagulConfig()
    # Look-alike families of four (prototype cosines about 0.75 within one), as drawn people who resemble each other.
    # The new subject joins the first family, of three served subjects.
    families = torch.nn.functional.normalize(torch.randn((n + 3) // 4, dim, generator=generator), dim=1)
    family = torch.tensor([i // 4 for i in range(n)] + [0])
    noise = 0.55 * torch.randn(n + 1, dim, generator=generator) / dim**0.5
    prototypes = torch.nn.functional.normalize(families[family] + noise, dim=1)
    gates = {f"m{i:05d}": gate_of(dim, prototypes[i], generator, backbone) for i in range(n + 1)}
    new_id = f"m{n:05d}"
    spread = 0.75 / dim**0.5
    embeddings = {
        m: torch.nn.functional.normalize(
            prototypes[i] + spread * torch.randn(PROBE_LIMIT, dim, generator=generator), dim=1
        )
        for i, m in enumerate(list(gates)[:n])
    }
    stored = {m: StoredProbes.of(gates[m], e) for m, e in embeddings.items()}
    current = CagulGate(backbone, candidates=DEFAULT_CANDIDATES)
    candidate = CagulGate(backbone, candidates=DEFAULT_CANDIDATES)
    for module_id, d in gates.items():
        if module_id != new_id:
            current.add_discriminator(module_id, d, config)
        candidate.add_discriminator(module_id, d, config)

    started = time.perf_counter()
    capture, release = probe_criteria(candidate, current, new_id, stored)
    filtered_s = time.perf_counter() - started

    owners = list(embeddings)[: min(sample, n)]
    new = candidate.module_ids.index(new_id)
    started = time.perf_counter()
    captured = released = 0
    for owner in owners:  # as the check ran before: each owner's probes through both sets
        after = candidate.route(None, embeddings[owner])[0]
        before = current.route(None, embeddings[owner])[0] == current.module_ids.index(owner)
        captured += int((after == new).sum())
        released += int((before & (after != candidate.module_ids.index(owner)) & (after != new)).sum())
    every_s = (time.perf_counter() - started) * n / len(owners)
    if len(owners) == n:
        assert (captured, released) == (int(capture.module), int(release.module)), "the two checks disagree"
    routed = int(capture.detail.split(" of ")[0].split("; ")[-1])
    row = {
        "n": n,
        "probes": n * PROBE_LIMIT,
        "every_probe_s": round(every_s, 2),
        "every_probe_timed_owners": len(owners),
        "at_risk_s": round(filtered_s, 3),
        "routed": routed,
        "captured": int(capture.module),
        "released": int(release.module),
    }
    print(row, flush=True)
    return row


def probe_bytes(backbone) -> dict[str, int]:
    """Bytes of one module's 32 stored probes (fp32): identity embeddings, and visual tokens as stored before."""
    return {
        "identity_embeddings": PROBE_LIMIT * backbone.identity_dim * 4,
        "tokens_tiny_world": PROBE_LIMIT * backbone.n_visual_tokens * backbone.hidden_size * 4,
        "tokens_llava_1_5_7b": PROBE_LIMIT * 576 * 4096 * 4,
    }


if __name__ == "__main__":
    main()
