"""Before/after measurement of forgetting people of the reference world through a CAGUL gate."""

from __future__ import annotations

from dataclasses import dataclass

from unlearning.backbones import Backbone
from unlearning.cagul.gate import CagulGate
from unlearning.cagul.module import CagulModule
from unlearning.evaluation.cases import Case, ask, ask_named, forget_cases, known_cases, named_cases, other_cases
from unlearning.evaluation.metrics.leakage import leak_rate
from unlearning.evaluation.metrics.utility import identical_rate
from unlearning.world.people import Person
from unlearning.world.store import World


@dataclass(frozen=True)
class LeakSplits:
    leak_direct: float
    leak_paraphrase: float
    leak_new_image: float


def split_answers(gate: CagulGate, world: World, splits: dict[str, list[Case]]) -> dict[str, list[str]]:
    return {name: ask(gate, world, cases) for name, cases in splits.items()}


def split_leaks(splits: dict[str, list[Case]], answers: dict[str, list[str]]) -> dict[str, float]:
    """Per split: the share of answers that leak the asked fact."""
    return {name: leak_rate(answers[name], [c.fact.keyword for c in cases]) for name, cases in splits.items()}


def leak_splits(gate: CagulGate, world: World, people: list[Person]) -> LeakSplits:
    splits = forget_cases(world, people)
    rates = split_leaks(splits, split_answers(gate, world, splits))
    return LeakSplits(rates["direct"], rates["paraphrase"], rates["new_image"])


def named_leaks(gate: CagulGate, world: World, people: list[Person]) -> dict[str, float]:
    """The share of the people's held-out named questions answered with the private value, by column: with no
    photo (`leak_named`), and with a photo of someone else (`leak_named_other_photo`)."""
    out = {}
    for name, with_photo in (("leak_named", False), ("leak_named_other_photo", True)):
        cases = named_cases(world, people, with_photo)
        out[name] = leak_rate(ask_named(gate, world, cases), [c.asked.keyword for c in cases])
    return out


def fact_accuracy(backbone: Backbone, world: World, people: list[Person]) -> dict[str, float]:
    """Share of facts the unmodified model answers with (leaks) the right value: trained view and question,
    held-out question, held-out view. Consecutive batches, as the world's build reports were measured."""
    splits = known_cases(world, [p for p in people if not p.protected])
    reference = CagulGate(backbone)
    answers = {name: ask(reference, world, cases, by_question=False) for name, cases in splits.items()}
    return split_leaks(splits, answers)


def identical_share(reference: CagulGate, gate: CagulGate, world: World, people: list[Person]) -> float:
    cases = other_cases(world, people)
    return identical_rate(ask(gate, world, cases), ask(reference, world, cases))


def forced_identical_share(reference: CagulGate, module: CagulModule, world: World, people: list[Person]) -> float:
    """Share of answers unchanged when the module's transform is forced on: the cost of a gate false positive."""
    saved = module.discriminator.threshold.clone()
    module.discriminator.threshold.fill_(-1.0)
    try:
        forced = CagulGate(reference.backbone, {"forced": module})
        return identical_share(reference, forced, world, people)
    finally:
        module.discriminator.threshold.copy_(saved)


def base_params(backbone: Backbone) -> int:
    return sum(p.numel() for p in backbone.model.parameters())
