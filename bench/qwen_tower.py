"""Does a pre-trained vision encoder make gates on a checkpoint's raw visual tokens generalise?

The test Qwen2-VL (`tests.checkpoints`) trained two ways: from scratch on the tiny world's 5 people (the encoder
sees only them), and with its vision encoder pre-trained first on drawn people outside the world (`QWEN_TOWER`,
then frozen), as a released checkpoint's encoder was. For each of the 5 people, the service's discriminator
(pooled tokens flattened, no identity encoder, default threshold floor) trains on the 5 photos a request carries
against look-alikes and the other people; it is scored on the world's held-out photo of the person (as sent, and
at every size of `QWEN_SIZES`), on the other world people's photos, and on 300 fresh look-alikes.
Run: PYTHONPATH=. python bench/qwen_tower.py [--out bench/results/qwen-tower]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from tests.checkpoints import (
    QWEN_REFERENCE,
    QWEN_SIZES,
    QWEN_TOWER,
    qwen2_vl_known_people,
    resized,
    train_qwen2_vl_reference,
)
from unlearning.backbones import Backbone, load_backbone
from unlearning.cagul import CagulConfig, CagulGate, CagulTrainer
from unlearning.data import QA, ForgetData, RetainSet
from unlearning.world import WORLD_PRESETS, World
from unlearning.world.builder import ensure_people
from unlearning.world.people import Person

FACTS = QWEN_REFERENCE["facts"]


def gate_row(backbone: Backbone, world: World, known: list[Person], subject: Person) -> dict:
    """Train the subject's discriminator as the service does and score it on photos it never saw."""
    others = [p for p in known if p is not subject]
    views = list(world.train_views())
    qa = [QA(q, f.answer, f.keyword) for f in subject.facts[:FACTS] for q in f.train_questions]
    forget = ForgetData(subject=subject.id, images=[world.image(subject.id, v) for v in views], qa_pairs=qa)
    images = [world.image(p.id, v) for p in others for v in views]
    retain_qa = [
        (i * len(views) + j, QA(q, p.taught_answer(f), f.keyword))
        for i, p in enumerate(others)
        for j in range(len(views))
        for f in p.facts[:FACTS]
        for q in f.train_questions
    ]
    negatives = world.lookalike_images(300, seed=1) + images
    retain = RetainSet(images=images, qa=retain_qa, negatives=negatives, heldout_negatives=images[4::5])
    config = CagulConfig(steps=2, discriminator_steps=150, positive_augmentations=16, discriminator_input="flatten")
    module, _ = CagulTrainer(backbone, config).train(forget, retain)
    gate = CagulGate(backbone, {subject.id: module})

    def scored(photos: list) -> tuple[torch.Tensor, torch.Tensor]:
        logits, margins = gate.scores(backbone.visual_tokens(backbone.pixel_values(photos)))
        return torch.sigmoid(logits[0]), margins[0] > 0

    heldout = world.image(subject.id, world.heldout_views()[0])
    own, own_fired = scored([heldout] + [resized(heldout, size) for size in QWEN_SIZES])
    strangers = [p for p in world.people if p not in known and not p.protected]
    _, other_fired = scored([world.image(p.id, v) for p in strangers for v in range(world.config.n_views)])
    _, look_fired = scored(world.lookalike_images(300, seed=5))
    return {
        "subject": subject.id,
        "threshold": round(module.threshold, 3),
        "heldout_score": round(float(own[0]), 3),
        "heldout_fired_sizes": f"{int(own_fired.sum())}/{len(own)}",
        "strangers_fire": round(float(other_fired.float().mean()), 4),
        "lookalikes_fire": round(float(look_fired.float().mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/qwen-tower"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qwen-tower-"))
    world = ensure_people(root, WORLD_PRESETS["tiny"])
    known = qwen2_vl_known_people(world)
    rows = []
    for name, tower in (("from scratch", None), ("encoder pre-trained", QWEN_TOWER)):
        started = time.perf_counter()
        model = train_qwen2_vl_reference(world, known, root / name.replace(" ", "-"), FACTS, 400, tower=tower)
        seconds = round(time.perf_counter() - started, 1)
        backbone = load_backbone(model)
        for subject in (p for p in known if not p.protected):
            rows.append({"reference": name, "train_s": seconds, **gate_row(backbone, world, known, subject)})
            print(json.dumps(rows[-1]), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps({"tower": QWEN_TOWER.to_dict(), "rows": rows}, indent=1))
    columns = list(rows[0])
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    args.out.with_suffix(".md").write_text(
        "# Gates on the test Qwen2-VL's raw tokens: encoder from scratch vs pre-trained\n\n"
        f"Generated by `bench/qwen_tower.py`; tower {QWEN_TOWER.to_dict()}.\n\n" + "\n".join(table) + "\n"
    )


if __name__ == "__main__":
    main()
