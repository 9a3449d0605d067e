"""Many people outside a world, for measuring a gate at thousands of requests: enrolled and benign.

Enrolled people each have training photos and one held-out photo; the benign population is people never
enrolled, look-alikes of enrolled people and mild changes of their photos. All drawn with the world's face
geometry (if it has one), none a person of the world or of the identity encoder's pre-training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from unlearning.world.people import lookalike_identity, with_geometry
from unlearning.world.portraits import render_portrait
from unlearning.world.store import World
from unlearning.world.vocabulary import ATTRIBUTES

# Pre-training draws with the identity config's seed (0 by default) and the identity check with seed + 1:
# populations draw from their own stream.
_POPULATION_STREAM = 7_777


@dataclass(frozen=True)
class Enrolled:
    """A person with request photos and one held-out photo, rendered when asked for (thousands are drawn)."""

    identity: tuple
    view_seeds: tuple[int, ...]  # the request photos', then the held-out photo's
    size: int

    @property
    def photos(self) -> list[Image.Image]:
        """What a deletion request would carry."""
        return [render_portrait(self.identity, seed, self.size) for seed in self.view_seeds[:-1]]

    @property
    def heldout(self) -> Image.Image:
        """A photo no module trains on."""
        return render_portrait(self.identity, self.view_seeds[-1], self.size)


def stream(world: World, seed: int, part: str) -> random.Random:
    """A random stream of its own for each part of a population."""
    return random.Random(f"{world.config.seed}:{_POPULATION_STREAM}:{seed}:{part}")


def draw_identities(world: World, count: int, seed: int, part: str) -> list[tuple]:
    rng = stream(world, seed, part)
    sizes = list(ATTRIBUTES.values())
    return [
        with_geometry(rng, tuple(rng.randrange(s) for s in sizes), world.config.face_geometry, world.config.face_detail)
        for _ in range(count)
    ]


def photos_of(world: World, identity: tuple, count: int, rng: random.Random) -> list[Image.Image]:
    return [render_portrait(identity, rng.randrange(1 << 30), world.config.image_size) for _ in range(count)]


def enrolled_people(world: World, count: int, photos: int = 3, seed: int = 0) -> list[Enrolled]:
    """`count` people, each with `photos` request photos and one held-out photo."""
    rng = stream(world, seed, "enrolled-views")
    size = world.config.image_size
    return [
        Enrolled(identity, tuple(rng.randrange(1 << 30) for _ in range(photos + 1)), size)
        for identity in draw_identities(world, count, seed, "enrolled")
    ]


def benign_population(
    world: World, enrolled: list[tuple], strangers: int, lookalikes: int, changed: int, seed: int = 0
) -> list[Image.Image]:
    """Photos of `strangers` never-enrolled people, of `lookalikes` look-alikes of enrolled people (3-5 of 8
    attributes changed, face geometry close) and `changed` mild changes of those photos."""
    rng = stream(world, seed, "benign")
    photos = [photos_of(world, i, 1, rng)[0] for i in draw_identities(world, strangers, seed, "strangers")]
    for _ in range(lookalikes):
        base = enrolled[rng.randrange(len(enrolled))]
        photos += photos_of(world, lookalike_identity(rng, base, rng.choice([3, 4, 5])), 1, rng)
    return photos + [mild_change(photos[rng.randrange(len(photos))], rng) for _ in range(changed)]


def mild_change(image: Image.Image, rng: random.Random) -> Image.Image:
    """A mirror, a slight blur and a light change: the same person as a camera or an upload would alter them."""
    out = ImageOps.mirror(image) if rng.random() < 0.5 else image
    out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.6)))
    return ImageEnhance.Brightness(out).enhance(rng.uniform(0.85, 1.15))
