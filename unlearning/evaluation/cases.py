"""The one builder of evaluation cases on the reference world: which person, fact, photo and question are asked."""

from __future__ import annotations

from dataclasses import dataclass

from unlearning.cagul.gate import CagulGate
from unlearning.evaluation.answering import answer_batched
from unlearning.world.names import NamedQuestion, named_questions
from unlearning.world.people import Fact, Person
from unlearning.world.store import World

SPLITS = ("direct", "paraphrase", "new_image")


@dataclass(frozen=True)
class Case:
    """One question about one fact of one person, asked on one view."""

    person: Person
    fact: Fact
    view: int
    question: str

    @property
    def query(self) -> tuple[str, int, str]:
        return (self.person.id, self.view, self.question)


def forget_cases(world: World, people: list[Person]) -> dict[str, list[Case]]:
    """Direct questions on training views, held-out paraphrases, and direct questions on held-out views."""
    out: dict[str, list[Case]] = {name: [] for name in SPLITS}
    for p in people:
        for f in p.facts:
            for v in world.train_views():
                out["direct"].append(Case(p, f, v, f.train_questions[v % len(f.train_questions)]))
                out["paraphrase"].append(Case(p, f, v, f.heldout_question))
            for v in world.heldout_views():
                out["new_image"] += [Case(p, f, v, q) for q in f.train_questions]
    return out


def fact_cases(world: World, people: list[Person]) -> list[Case]:
    """One case per fact on the first training view: what likelihood-based metrics are computed on."""
    return [Case(p, f, world.train_views()[0], f.train_questions[0]) for p in people for f in p.facts]


def other_cases(world: World, people: list[Person]) -> list[Case]:
    """One question per fact for each person, on a training view and on a held-out view in turn."""
    views = [world.train_views()[0], world.heldout_views()[0]]
    return [
        Case(p, f, views[i % 2], f.train_questions[i % len(f.train_questions)])
        for p in people
        for i, f in enumerate(p.facts)
    ]


def known_cases(world: World, people: list[Person]) -> dict[str, list[Case]]:
    """Per fact: a trained question on view 0, its held-out question there, a trained question on a held-out view."""
    heldout_view = world.heldout_views()[0]
    return {
        "direct": fact_cases(world, people),
        "paraphrase": [Case(p, f, 0, f.heldout_question) for p in people for f in p.facts],
        "new_image": [Case(p, f, heldout_view, f.train_questions[0]) for p in people for f in p.facts],
    }


def ask(gate: CagulGate, world: World, cases: list[Case], by_question: bool = True) -> list[str]:
    """The gate's answers to the cases (by default batched by question, so prompts never need padding)."""
    images = [world.image(c.person.id, c.view) for c in cases]
    answers = answer_batched(gate, images, [c.question for c in cases], by_question=by_question)
    return [a.answer for a in answers]


@dataclass(frozen=True)
class NamedCase:
    """One held-out question naming a person, asked with no photo (`photo_of` None) or a photo of someone else."""

    asked: NamedQuestion
    photo_of: str | None


def named_cases(world: World, people: list[Person], with_photo: bool, per_person: int | None = None) -> list[NamedCase]:
    """The people's held-out named questions (held-out phrasings, misspelt and swapped names), each asked with no
    photo or on a training view of an unseen person none of them is (`with_photo`); the first `per_person` each."""
    ids = {p.id for p in people}
    stranger = next(p.id for p in world.split("unseen") + world.people if p.id not in ids) if with_photo else None
    return [NamedCase(q, stranger) for p in people for q in named_questions(p, heldout=True)[:per_person]]


def ask_named(gate: CagulGate, world: World, cases: list[NamedCase]) -> list[str]:
    """The gate's answers to questions asked by name (batched by question, as `ask`)."""
    view = world.train_views()[0]
    images = [world.image(c.photo_of, view) if c.photo_of is not None else None for c in cases]
    answers = answer_batched(gate, images, [c.asked.question for c in cases], by_question=True)
    return [a.answer for a in answers]
