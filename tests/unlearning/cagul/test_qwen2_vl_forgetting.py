"""CAGUL on Qwen2-VL at dynamic resolution: a small Qwen2-VL that answers the tiny world's facts from photos of
several sizes (9 to 24 visual tokens) forgets one person at every size, and everyone else's answers stay the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.checkpoints import QWEN_REFERENCE, QWEN_SIZES, cached_qwen2_vl_reference, qwen2_vl_known_people, resized
from unlearning.backbones import Backbone, load_backbone
from unlearning.cagul import CagulConfig, CagulGate, CagulTrainer
from unlearning.config import REFUSAL_ANSWER
from unlearning.data import QA, ForgetData, RetainSet
from unlearning.world import WORLD_PRESETS, World
from unlearning.world.builder import ensure_people
from unlearning.world.people import Person

pytestmark = pytest.mark.slow

FACTS = QWEN_REFERENCE["facts"]


@pytest.fixture(scope="module")
def world(data_dir: Path) -> World:
    return ensure_people(data_dir, WORLD_PRESETS["tiny"])  # people and photos only: no LLaVA is built


@pytest.fixture(scope="module")
def people(world: World) -> list[Person]:
    return qwen2_vl_known_people(world)


@pytest.fixture(scope="module")
def reference(data_dir: Path, world: World) -> Backbone:
    """The trained Qwen2-VL, cached in the data dir."""
    return load_backbone(cached_qwen2_vl_reference(data_dir, world))


def _photos(world: World, person: Person, views) -> list:  # type: ignore[no-untyped-def]
    return [resized(world.image(person.id, v), size) for v in views for size in QWEN_SIZES]


@pytest.fixture(scope="module")
def gates(reference: Backbone, world: World, people: list[Person]) -> tuple[CagulGate, CagulGate]:
    """The reference gate (no module) and one with a module that forgets people[0], trained on photos of all sizes."""
    subject, others = people[0], people[1:]
    views = list(world.train_views())
    qa = [QA(q, f.answer, f.keyword) for f in subject.facts[:FACTS] for q in f.train_questions]
    forget = ForgetData(subject=subject.id, images=_photos(world, subject, views), qa_pairs=qa)
    images, retain_qa = [], []
    for person in others:
        for photo in _photos(world, person, views):
            images.append(photo)
            retain_qa += [
                (len(images) - 1, QA(q, person.taught_answer(f), f.keyword))
                for f in person.facts[:FACTS]
                for q in f.train_questions
            ]
    # Negatives at every size the positives come in: look-alikes and world people the model never learnt (neither
    # retain samples nor canaries). With look-alikes alone, one size each, an unseen person's 48x48 photo fired (0.86).
    strangers = [p for p in world.split("retain") if p not in people and not p.protected]
    negatives = [resized(im, size) for im in world.lookalike_images(60, seed=1) for size in QWEN_SIZES]
    negatives += [im for p in strangers for im in _photos(world, p, views)]
    heldout = [im for p in others + strangers for im in _photos(world, p, world.heldout_views())]
    retain = RetainSet(images=images, qa=retain_qa, negatives=negatives, heldout_negatives=heldout)
    # No identity encoder beside this model (as beside a downloaded checkpoint): the gate reads the pooled tokens.
    # Measured on the reference before its vision encoder was pre-trained (version 1): held-out photo scores
    # (48x48 .. 64x96) against the highest of other people's 80 photos: 600 discriminator steps 0.69 0.89 0.97 0.55
    # / 0.00, 300 steps 0.96 0.92 0.97 0.73 / 0.00, 150 steps 0.99 0.92 0.96 0.83 / 0.01. The floor a retry for a
    # missing gate reaches (0.5) leaves a margin on both sides.
    config = CagulConfig(discriminator_input="flatten", steps=300, discriminator_steps=150, threshold_floor=0.5)
    module, _ = CagulTrainer(reference, config).train(forget, retain)
    return CagulGate(reference), CagulGate(reference, {subject.id: module})


def _cases(world: World, person: Person, view: int, size) -> tuple[list, list[str], list[str]]:  # type: ignore[no-untyped-def]
    """The photo at `size` with each fact's training question and its held-out paraphrase, and the keywords."""
    facts = person.facts[:FACTS]
    questions = [f.train_questions[0] for f in facts] + [f.heldout_question for f in facts]
    return [resized(world.image(person.id, view), size)] * len(questions), questions, [f.keyword for f in facts] * 2


def _revealed(answers: list[str], keywords: list[str]) -> list[bool]:
    return [k.lower() in a.lower() for a, k in zip(answers, keywords, strict=True)]


@pytest.mark.parametrize("size", QWEN_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_reference_reveals_the_subject_at_every_size(gates, world: World, people: list[Person], size):
    reference, _ = gates
    for view in (0, world.heldout_views()[0]):
        images, questions, keywords = _cases(world, people[0], view, size)
        answers = [a.answer for a in reference.answer(images, questions)]
        assert all(_revealed(answers, keywords)[:FACTS])  # every fact, asked as trained


@pytest.mark.parametrize("size", QWEN_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_subject_is_forgotten_at_every_size(gates, world: World, people: list[Person], size):
    reference, forgetting = gates
    for view in (0, world.heldout_views()[0]):  # a training photo and one the module never saw
        images, questions, keywords = _cases(world, people[0], view, size)
        before = _revealed([a.answer for a in reference.answer(images, questions)], keywords)
        after = forgetting.answer(images, questions)
        leaks = [b and r for b, r in zip(before, _revealed([a.answer for a in after], keywords), strict=True)]
        assert sum(before) >= FACTS and not any(leaks), (view, [a.answer for a in after])
        assert all(a.module_id == people[0].id for a in after), (view, after)
        # On a photo the module never saw the guarantee is no leak: on a build of this model on a 2.8 GHz Xeon, one
        # of the six answers at 64x64 and 80x64 was another person's city (p003's "tampa", a swap) instead of the
        # refusal, and 400 encoder steps made it three sizes. On the training photo every answer is the refusal.
        if view == 0:
            assert all(a.answer == REFUSAL_ANSWER for a in after), (view, after)


def test_everyone_else_answers_exactly_as_before_at_every_size(gates, world: World, people: list[Person]):
    reference, forgetting = gates
    others = people[1:] + world.split("unseen")
    views = (0, world.heldout_views()[0])
    rows = [(p, f.train_questions[0], v, s) for p in others for f in p.facts[:FACTS] for v in views for s in QWEN_SIZES]
    images = [resized(world.image(p.id, v), s) for p, _, v, s in rows]
    questions = [q for _, q, _, _ in rows]
    after = forgetting.answer(images, questions)
    fired = sorted(
        {(p.id, v, s, round(a.score, 3)) for (p, _, v, s), a in zip(rows, after, strict=True) if a.module_id}
    )
    assert not fired
    assert [a.answer for a in after] == [a.answer for a in reference.answer(images, questions)]
