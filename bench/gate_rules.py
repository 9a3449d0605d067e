"""Decision rules of the two-stage gate on the scale world's enrolled modules, side by side at one false-fire budget.

Each rule gives every (image, module) pair a score; the image goes to its best-scoring module when that score
reaches one threshold, set on the world's benign set (as a served set is calibrated) for the system's budget.
The figures: held-out-photo TPR of enrolled subjects and the share of the benign population on which some
module fires, with its 95% upper bound. Rules:

- `logit`: each candidate's gate logit over its own threshold (`CagulGate.calibrate(scale="logit")`).
- `cosine+gate`: the prototype cosine of candidates whose gate fires (`calibrate(scale="cosine")`).
- `cosine`: the prototype cosine alone.
- `top1+gate`: only the nearest prototype's module may fire, when its gate fires, scored by its cosine.
- `snorm`: the cosine less the mean of the module's and the image's nearest cosines to a cohort of never-enrolled
  people (adaptive symmetric score normalisation, as speaker and face verification use it).
- `snorm+gate`: `snorm` of candidates whose gate fires.

Run: python -m bench.gate_rules --data-dir DIR --enrolled 1000 --counts 10,100,1000 [--json PATH]
(the enrolled modules are those `lethe bench scale --counts ...,1000` built and cached in DIR).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from unlearning.cagul.discriminator import StackedDiscriminators
from unlearning.cagul.gate import higher_quantile
from unlearning.cagul.verification import upper_bound

BUDGETS = (0.01, 0.005)
COHORT = 1000
COHORT_TOP = 100  # nearest cohort members whose mean cosine normalises a score
RULES = ("logit", "cosine+gate", "cosine", "top1+gate", "snorm", "snorm+gate")
Score = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--enrolled", type=int, default=1000)
    parser.add_argument("--counts", default="10,100,1000")
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = study(args.data_dir, args.enrolled, [int(c) for c in args.counts.split(",")], args.candidates)
    if args.json:
        args.json.write_text(json.dumps({"enrolled": args.enrolled, "rows": rows}, indent=1) + "\n")


def study(data_dir: Path, enrolled: int, counts: list[int], candidates: int) -> list[dict]:
    from unlearning.artifacts import load_gate
    from unlearning.backbones import load_backbone
    from unlearning.evaluation.drivers.scale import ScalePlan, enrolled_modules, material
    from unlearning.world import WORLD_PRESETS
    from unlearning.world.builder import build_world
    from unlearning.world.population import draw_identities, photos_of, stream

    world = build_world(data_dir, WORLD_PRESETS["scale"], with_retain_model=False)
    backbone = load_backbone(world.reference_model_dir)
    backbone.freeze()
    plan = ScalePlan(enrolled=enrolled)
    modules = enrolled_modules(world, backbone, plan, data_dir / "scale", print)
    seen = material(world, backbone, plan)
    rng = stream(world, 0, "rules-cohort")
    cohort_photos = [photos_of(world, i, 1, rng)[0] for i in draw_identities(world, COHORT, 0, "rules-cohort")]
    with torch.no_grad():
        embed = backbone.identity_embeddings
        heldout, benign, calibration = (embed(t).float() for t in (seen.heldout, seen.benign, seen.calibration))
        cohort = embed(backbone.tokens_of(cohort_photos)).float()
    fingerprint = backbone.fingerprint()
    gates = [load_gate(path, fingerprint, digest).discriminator for path, digest in modules[: max(counts)]]
    rows = []
    for n in counts:
        bank = StackedDiscriminators(gates[:n])
        sample = seen.heldout_owner < n
        owners = seen.heldout_owner[sample]
        scorer = _scorer(bank, cohort, candidates)
        scored = {name: scorer(name) for name in RULES}
        for rule, score in scored.items():
            own_best, own_module = score(heldout[sample])
            calib_best, _ = score(calibration)
            benign_best, _ = score(benign)
            for budget in BUDGETS:
                level = higher_quantile(calib_best, 1 - budget)
                hits = int(((own_module == owners) & (own_best > level)).sum())
                fires = int((benign_best > level).sum())
                row = {
                    "n": n,
                    "rule": rule,
                    "budget": budget,
                    "tpr": round(hits / len(owners), 4),
                    "fpr": round(fires / len(benign), 4),
                    "fpr_upper95": round(upper_bound(fires, len(benign), 0.95), 4),
                    # the same rule with its threshold set on the benign population itself: what calibration lost
                    "tpr_at_benign_quantile": round(
                        float(((own_module == owners) & (own_best > higher_quantile(benign_best, 1 - budget))).sum())
                        / len(owners),
                        4,
                    ),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _scorer(bank: StackedDiscriminators, cohort: torch.Tensor, candidates: int) -> Callable[[str], Score]:
    """Per rule: images' identity embeddings -> (best score, best module) per image."""
    prototypes = bank.prototypes
    top = min(COHORT_TOP, len(cohort))
    module_norm = (prototypes @ cohort.T).topk(top, dim=1).values.mean(1)  # [M]
    k = min(candidates, len(bank))

    def rule(name: str) -> Score:
        def score(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            cosine, rows = bank.nearest(embeddings, k)
            over = bank.logits_selected(embeddings, rows) - bank.threshold_logits[rows]
            fires = over > 0
            image_norm = (embeddings @ cohort.T).topk(top, dim=1).values.mean(1, keepdim=True)
            normalised = cosine - 0.5 * (module_norm[rows] + image_norm)
            values = {
                "logit": over,
                "cosine+gate": cosine.masked_fill(~fires, -math.inf),
                "cosine": cosine,
                "top1+gate": cosine.masked_fill(~fires, -math.inf).masked_fill(torch.arange(k)[None] > 0, -math.inf),
                "snorm": normalised,
                "snorm+gate": normalised.masked_fill(~fires, -math.inf),
            }[name]
            best, column = values.max(1)
            return best, rows.gather(1, column[:, None])[:, 0]

        return score

    return rule


if __name__ == "__main__":
    main()
