"""Before/after measurement of forgetting people of the reference world through a CAGUL gate."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from unlearning.augment import AugmentConfig
from unlearning.backbones import Backbone
from unlearning.cagul.gate import CagulGate
from unlearning.cagul.module import CagulModule
from unlearning.evaluation.leakage import identical_rate, leak_rate
from unlearning.world.people import Person
from unlearning.world.store import World

Query = tuple[str, int, str]  # person id, view, question


@dataclass(frozen=True)
class LeakSplits:
    leak_direct: float
    leak_paraphrase: float
    leak_new_image: float


def answer_queries(gate: CagulGate, world: World, queries: list[Query], batch_size: int = 64) -> list[str]:
    """Answers through the gate, batched by question so prompts never need padding."""
    by_question: dict[str, list[int]] = defaultdict(list)
    for i, (_, _, q) in enumerate(queries):
        by_question[q].append(i)
    out = [""] * len(queries)
    for q, idx in by_question.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            answers = gate.answer([world.image(queries[i][0], queries[i][1]) for i in chunk], [q] * len(chunk))
            for i, a in zip(chunk, answers, strict=True):
                out[i] = a.answer
    return out


def subject_queries(world: World, people: list[Person]) -> dict[str, tuple[list[Query], list[str]]]:
    """Direct questions on training views, held-out paraphrases, and direct questions on held-out views."""
    splits: dict[str, tuple[list[Query], list[str]]] = {
        "direct": ([], []),
        "paraphrase": ([], []),
        "new_image": ([], []),
    }
    for p in people:
        for f in p.facts:
            for v in world.train_views():
                splits["direct"][0].append((p.id, v, f.train_questions[v % len(f.train_questions)]))
                splits["direct"][1].append(f.keyword)
                splits["paraphrase"][0].append((p.id, v, f.heldout_question))
                splits["paraphrase"][1].append(f.keyword)
            for v in world.heldout_views():
                for q in f.train_questions:
                    splits["new_image"][0].append((p.id, v, q))
                    splits["new_image"][1].append(f.keyword)
    return splits


def leak_splits(gate: CagulGate, world: World, people: list[Person]) -> LeakSplits:
    rates = {
        name: leak_rate(answer_queries(gate, world, qs), kws)
        for name, (qs, kws) in subject_queries(world, people).items()
    }
    return LeakSplits(rates["direct"], rates["paraphrase"], rates["new_image"])


def other_queries(world: World, people: list[Person]) -> list[Query]:
    """One question per fact for each person, on a training view and on a held-out view."""
    views = [world.train_views()[0], world.heldout_views()[0]]
    return [
        (p.id, views[i % 2], f.train_questions[i % len(f.train_questions)])
        for p in people
        for i, f in enumerate(p.facts)
    ]


def identical_share(reference: CagulGate, gate: CagulGate, world: World, people: list[Person]) -> float:
    queries = other_queries(world, people)
    return identical_rate(answer_queries(gate, world, queries), answer_queries(reference, world, queries))


def forced_identical_share(reference: CagulGate, module: CagulModule, world: World, people: list[Person]) -> float:
    """Share of answers unchanged when the module's transform is forced on: the cost of a gate false positive."""
    saved = module.discriminator.threshold.clone()
    module.discriminator.threshold.fill_(-1.0)
    try:
        forced = CagulGate(reference.backbone, {"forced": module})
        return identical_share(reference, forced, world, people)
    finally:
        module.discriminator.threshold.copy_(saved)


def gate_rates(
    gate: CagulGate, world: World, subjects: list[Person], others: list[Person], copies: int = 2
) -> tuple[float, float]:
    """Discriminator TPR on every view (and augmented views) of the subjects, FPR on everyone else's."""

    def fired(people: list[Person]) -> list[bool]:
        images = [world.image(p.id, v) for p in people for v in range(world.config.n_views)]
        generator = torch.Generator().manual_seed(99)
        hits: list[bool] = []
        for start in range(0, len(images), 64):
            chunk = images[start : start + 64]
            inputs = [gate.backbone.pixel_values(chunk)]
            inputs += [gate.backbone.augmented_inputs(chunk, EVAL_VIEWS, generator) for _ in range(copies)]
            for inp in inputs:
                chosen, _ = gate.route(gate.backbone.visual_tokens(inp))
                hits += (chosen >= 0).tolist()
        return hits

    pos, neg = fired(subjects), fired(others)
    return sum(pos) / max(1, len(pos)), sum(neg) / max(1, len(neg))


# New photos for evaluation: moderate changes, drawn with a seed the trainer never uses.
EVAL_VIEWS = AugmentConfig(
    max_rotate_deg=8,
    min_scale=0.88,
    max_scale=1.1,
    max_shift=0.08,
    brightness=0.15,
    contrast=0.1,
    saturation=0.15,
    noise=0.01,
)


def base_params(backbone: Backbone) -> int:
    return sum(p.numel() for p in backbone.model.parameters())
