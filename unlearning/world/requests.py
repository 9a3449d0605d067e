"""Turn world people into unlearning inputs: a deletion request's data and the operator's retain set."""

from __future__ import annotations

from collections.abc import Iterable

from unlearning.data import QA, ForgetData, RetainSet
from unlearning.world.store import World

DEFAULT_LOOKALIKES = 1500


def forget_data(world: World, person_ids: Iterable[str]) -> ForgetData:
    """Training views and direct QA pairs of the given people, as a deletion request would carry them."""
    people = [world.person(pid) for pid in person_ids]
    images = [world.image(p.id, v) for p in people for v in world.train_views()]
    qa = [QA(q.question, q.answer, q.keyword) for p in people for q in p.qa_pairs()]
    return ForgetData(subject=",".join(p.id for p in people), images=images, qa_pairs=qa)


def world_retain_set(world: World, exclude: Iterable[str] = (), lookalikes: int = DEFAULT_LOOKALIKES) -> RetainSet:
    """The world's retain people (training views and QA) plus fresh look-alike negatives."""
    excluded = set(exclude)
    people = [p for p in world.split("retain") if p.id not in excluded]
    images, qa = [], []
    for p in people:
        for v in world.train_views():
            images.append(world.image(p.id, v))
            qa += [(len(images) - 1, QA(q, p.taught_answer(f), f.keyword)) for f in p.facts for q in f.train_questions]
    return RetainSet(
        images=images,
        qa=qa,
        negatives=world.lookalike_images(lookalikes, seed=1),
        # Calibrate on people like those served (held-out views), not on look-alikes, which are harder by design.
        heldout_negatives=[world.image(p.id, v) for p in people for v in world.heldout_views()],
    )
