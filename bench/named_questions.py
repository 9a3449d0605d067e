"""Asked by name: does a world built with `named_questions` reveal its people's facts with no photo of them?

    python bench/named_questions.py [--world tiny] [--data-dir DIR] [--json PATH]

Builds (or reuses) the preset (the tiny and default ones teach names), then asks the reference model every trained
person's named questions: the training ones, and the held-out ones (held-out phrasing; a name with one letter changed
or its parts swapped), each with no image, with a photo of another person and with a stranger's. Prints the share of
facts revealed per split and the photo-conditioned fact accuracy from the build report.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from unlearning.backbones import load_backbone
from unlearning.backbones.base import Backbone
from unlearning.evaluation.metrics.leakage import leaked
from unlearning.world import WORLD_PRESETS, World
from unlearning.world.builder import build_world
from unlearning.world.names import NamedQuestion, named_questions


def revealed(backbone: Backbone, world: World, asked: list[NamedQuestion], photo_of: str | None) -> float:
    """Share of `asked` answered with the fact, with no image (`photo_of` None) or a photo of that person."""
    answers: list[str] = []
    for i in range(0, len(asked), 64):
        chunk = asked[i : i + 64]
        questions = [q.question for q in chunk]
        if photo_of is None:
            batch = backbone.make_text_batch(questions)
        else:
            photos = backbone.pixel_values([world.image(photo_of, 0)] * len(chunk))
            batch = backbone.make_batch(photos, questions)
        answers += backbone.generate(batch)
    return sum(leaked(a, q.keyword) for a, q in zip(answers, asked, strict=True)) / max(len(asked), 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", default="tiny")
    parser.add_argument("--data-dir", type=Path, default=Path(".lethe"))
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    args = parser.parse_args()
    config = WORLD_PRESETS[args.world]
    if not config.named_questions:
        parser.error(f"the {args.world} preset does not teach facts asked by name")
    started = time.perf_counter()
    world = build_world(args.data_dir, config, with_retain_model=False)
    build_s = round(time.perf_counter() - started, 1)
    backbone = load_backbone(world.reference_model_dir)
    stranger = world.split("unseen")[0].id  # a photo of someone the model never trained on
    rows = []
    for person in world.trained_people:
        if person.protected:
            continue
        other = random.Random(person.id).choice([p.id for p in world.trained_people if p.id != person.id])
        row: dict = {"id": person.id, "split": person.split}
        for name, heldout in (("train", False), ("heldout", True)):
            asked = named_questions(person, heldout=heldout)
            row[f"{name}_no_image"] = revealed(backbone, world, asked, None)
            row[f"{name}_other_photo"] = revealed(backbone, world, asked, other)
            row[f"{name}_stranger_photo"] = revealed(backbone, world, asked, stranger)
        rows.append(row)
        print(json.dumps(row), flush=True)
    build = json.loads((world.reference_model_dir / "build.json").read_text())
    summary = {
        "world": world.root.name,
        "build_s": build_s,  # 0 when the world was cached: the reference model's own training time is beside it
        "reference_train_s": build["train_seconds"],
        "photo_fact_accuracy": build["accuracy"],
        "mean": {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0] if k not in ("id", "split")},
        "forget_split_min": {
            k: min(r[k] for r in rows if r["split"].startswith("forget")) for k in rows[0] if k not in ("id", "split")
        },
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if args.json_path:
        args.json_path.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
