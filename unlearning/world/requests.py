"""Turn world people into unlearning inputs: a deletion request's data, the operator's retain set and canaries."""

from __future__ import annotations

import random
from collections.abc import Iterable
from functools import partial

from PIL import Image

from unlearning.data import QA, ForgetData, RetainSet
from unlearning.world.identities import pretraining_portraits
from unlearning.world.people import Person
from unlearning.world.population import mild_change, photos_of
from unlearning.world.store import World

DEFAULT_LOOKALIKES = 1500
# Look-alikes a gate mines its hard negatives from (those nearest its subject), drawn apart from the negatives.
DEFAULT_GALLERY = 6000
# One retain person in this many is kept back as a canary, beside every unseen person.
CANARY_EVERY = 3
# The benign set admission control scores a new gate on: new photos of the canary people, look-alikes of every
# world person, people drawn outside the world, and mild changes of a share of them. About 1,000 photos, so a
# module firing on 1% of them is told apart from one firing on 0.2%; none is a world view a bench asks on.
BENIGN_VIEWS_PER_CANARY = 16
BENIGN_LOOKALIKES = 400
BENIGN_OUTSIDERS = 200
BENIGN_CHANGED_EVERY = 3


def forget_data(world: World, person_ids: Iterable[str]) -> ForgetData:
    """Training views and direct QA pairs of the given people, as a deletion request would carry them."""
    people = [world.person(pid) for pid in person_ids]
    images = [world.image(p.id, v) for p in people for v in world.train_views()]
    qa = [QA(q.question, q.answer, q.keyword) for p in people for q in p.qa_pairs()]
    return ForgetData(subject=",".join(p.id for p in people), images=images, qa_pairs=qa)


def canary_people(world: World) -> list[Person]:
    """People no module ever trains with (neither negatives nor retain samples): checked at every activation."""
    known = [p for p in world.split("retain") if not p.protected]
    return known[::CANARY_EVERY] + world.split("unseen")


def world_retain_set(
    world: World,
    exclude: Iterable[str] = (),
    lookalikes: int = DEFAULT_LOOKALIKES,
    negative_people: Iterable[str] = (),
    gallery: int = DEFAULT_GALLERY,
) -> RetainSet:
    """The world's retain people but the canaries and `exclude` (training views and QA), plus look-alike negatives.

    `negative_people` (already forgotten by other modules) join the negatives only: a new gate must not claim them.
    """
    excluded = set(exclude) | {p.id for p in canary_people(world)}
    others = [world.image(pid, v) for pid in negative_people for v in world.train_views()]
    people = [p for p in world.split("retain") if p.id not in excluded]
    images, qa = [], []
    for p in people:
        for v in world.train_views():
            images.append(world.image(p.id, v))
            qa += [(len(images) - 1, QA(q, p.taught_answer(f), f.keyword)) for f in p.facts for q in f.train_questions]
    return RetainSet(
        images=images,
        qa=qa,
        negatives=world.lookalike_images(lookalikes, seed=1) + others,
        # Calibrate on people like those served (held-out views), not on look-alikes, which are harder by design.
        heldout_negatives=[world.image(p.id, v) for p in people for v in world.heldout_views()],
        gallery=partial(world.lookalike_images, gallery, seed=2),
    )


def world_canaries(
    world: World, exclude: Iterable[str] = (), count: int = 96, seed: int = 0
) -> tuple[list[Image.Image], list[str]]:
    """Photos and questions of canary people (any view, any phrasing), drawn without the `exclude` people."""
    excluded = set(exclude)
    people = [p for p in canary_people(world) if p.id not in excluded]
    pool = [
        (world.image(p.id, v), q)
        for p in people
        for v in range(world.config.n_views)
        for f in p.facts
        for q in f.questions
    ]
    sample = random.Random(seed).sample(pool, min(count, len(pool)))
    return [im for im, _ in sample], [q for _, q in sample]


def world_benign_set(world: World, seed: int = 0) -> list[tuple[Image.Image, str | None]]:
    """Photos of people outside any request and the world person each shows (None: nobody of the world).

    None of them is a world view a bench asks on. A world person filed for deletion later: drop their photos then.
    """
    photos: list[tuple[Image.Image, str | None]] = [
        (im, p.id)
        for p in canary_people(world)
        for im in photos_of(
            world, p.identity, BENIGN_VIEWS_PER_CANARY, random.Random(f"{world.config.seed}:{p.id}:{seed}")
        )
    ]
    # Seeds 1 and 2 draw the retain set's negatives and gallery: the benign look-alikes are other people.
    photos += [(im, None) for im in world.lookalike_images(BENIGN_LOOKALIKES, seed=3 + seed)]
    photos += [(views[0], None) for views in pretraining_portraits(world, BENIGN_OUTSIDERS, 1, seed=1 + seed)]
    rng = random.Random(seed)
    return photos + [(mild_change(im, rng), who) for im, who in photos[::BENIGN_CHANGED_EVERY]]
