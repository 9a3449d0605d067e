"""Turn world people into unlearning inputs: a deletion request's data, the operator's retain set and canaries."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Iterable
from functools import cached_property, partial
from pathlib import Path

from PIL import Image

from unlearning.data import QA, ForgetData, RetainSet, pixels_sha256
from unlearning.errors import InvalidInputError
from unlearning.world.identities import pretraining_portraits
from unlearning.world.people import Person
from unlearning.world.population import mild_change, photos_of
from unlearning.world.store import World

DEFAULT_LOOKALIKES = 1500
# Look-alikes a gate mines its hard negatives from (those nearest its subject), drawn apart from the negatives.
DEFAULT_GALLERY = 6000
# One retain person in this many is kept back as a canary, beside every unseen person.
CANARY_EVERY = 3
# The benign set admission control scores a new gate on and a served set is held back on: new photos of the canary
# people, look-alikes of every world person, people drawn outside the world, and mild changes of a share of them.
# About 1,900 photos of about 1,400 people, so a module firing on 1% of them is told apart from one firing on 0.2%;
# none is a world view a bench asks on. Few photos per person, as served traffic has: with 16 of each canary, one
# canary near a forgotten subject set the system's 1% floor alone (5 of the 11 photos above it at 10,000 enrolled,
# floor 0.953 where the bench's own benign population put it at 0.933; docs/scale.md).
BENIGN_VIEWS_PER_CANARY = 2
BENIGN_LOOKALIKES = 400
BENIGN_OUTSIDERS = 1000
BENIGN_CHANGED_EVERY = 3


def forget_data(world: World, person_ids: Iterable[str], named: bool = False) -> ForgetData:
    """Training views and direct QA pairs of the given people, as a deletion request would carry them (`named`:
    with their names as aliases)."""
    people = [world.person(pid) for pid in person_ids]
    images = [world.image(p.id, v) for p in people for v in world.train_views()]
    qa = [QA(q.question, q.answer, q.keyword) for p in people for q in p.qa_pairs()]
    aliases = [a for p in people for a in subject_aliases(p)] if named else []
    return ForgetData(subject=",".join(p.id for p in people), images=images, qa_pairs=qa, aliases=aliases)


def subject_aliases(person: Person) -> list[str]:
    """The names a request for `person` gives: the name as drawn and the surname alone."""
    return list(dict.fromkeys([person.name, person.name.split()[-1]]))


def world_names(world: World) -> list[str]:
    """Every name the world's people go by (`subject_aliases`): what a text gate knows is someone's own name."""
    return [name for p in world.people for name in subject_aliases(p)]


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


class WorldRetain:
    """The reference world as the operator's retain set (the embedded default): `unlearning.retain.RetainSource`."""

    def __init__(self, world: World) -> None:
        self.world = world

    @cached_property
    def _people_by_photo(self) -> dict[str, str]:
        """Photo hash (file bytes and decoded pixels) -> world person id."""
        out = {}
        for p in self.world.people:
            for v in range(self.world.config.n_views):
                out[hashlib.sha256(self.world.image_path(p.id, v).read_bytes()).hexdigest()] = p.id
                out[pixels_sha256(self.world.image(p.id, v))] = p.id
        return out

    def people_in(self, photo_hashes: Iterable[str]) -> list[str]:
        return sorted({self._people_by_photo[h] for h in photo_hashes if h in self._people_by_photo})

    def retain_set(self, exclude: list[str], negative_people: list[str]) -> RetainSet:
        return world_retain_set(self.world, exclude=exclude, negative_people=negative_people)

    def canaries(self, exclude: list[str], count: int) -> tuple[list[Image.Image], list[str]]:
        return world_canaries(self.world, exclude, count)

    def benign(self) -> list[tuple[Image.Image, str | None]]:
        return world_benign_set(self.world)

    def known_names(self) -> list[str]:
        return world_names(self.world)


def write_retain_folder(world: World, out: Path, lookalikes: int = DEFAULT_LOOKALIKES, benign: bool = True) -> int:
    """Write the world's retain set in the operator's folder layout (`unlearning.retain`); returns samples written."""
    if out.exists() and any(out.iterdir()):
        raise InvalidInputError(f"{out} is not empty: give a new folder")
    for sub in ("images", "negatives", *(["benign"] if benign else [])):
        (out / sub).mkdir(parents=True, exist_ok=True)
    canaries = canary_people(world)
    canary_ids = {p.id for p in canaries}
    retain_lines, canary_lines = [], []
    for p in world.people:
        if p.split != "retain" and p.id not in canary_ids:
            continue
        views = range(world.config.n_views) if p.id in canary_ids else world.train_views()
        for v in views:
            name = f"images/{p.id}_v{v}.png"
            shutil.copyfile(world.image_path(p.id, v), out / name)
            for f in p.facts:
                if p.id in canary_ids:
                    canary_lines += [{"image": name, "question": q, "person": p.id} for q in f.questions]
                else:
                    retain_lines += [
                        {
                            "image": name,
                            "question": q,
                            "answer": p.taught_answer(f),
                            "keyword": f.keyword,
                            "person": p.id,
                        }
                        for q in f.train_questions
                    ]
    for i, im in enumerate(world.lookalike_images(lookalikes, seed=1)):
        im.save(out / "negatives" / f"lookalike_{i:05d}.png")
    if benign:
        for i, (im, _) in enumerate(world_benign_set(world)):
            im.save(out / "benign" / f"benign_{i:05d}.png")
    for name, lines in (("retain.jsonl", retain_lines), ("canaries.jsonl", canary_lines)):
        (out / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    (out / "names.txt").write_text("".join(name + "\n" for name in world_names(world)))
    return len(retain_lines)
