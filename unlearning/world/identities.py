"""People drawn for pre-training the identity encoder: never a person of the world, each in several photos."""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image

from unlearning.world.people import with_geometry
from unlearning.world.portraits import render_portrait
from unlearning.world.store import World
from unlearning.world.vocabulary import ATTRIBUTES


def pretraining_portraits(world: World, identities: int, views: int, seed: int = 0) -> list[list[Image.Image]]:
    """`identities` distinct drawn people outside the world, `views` photos each (new pose, light, background)."""
    rng = random.Random(world.config.seed * 104_729 + seed)
    taken = {p.identity for p in world.people}
    space = math.prod(ATTRIBUTES.values())
    if identities > space - len(taken) and not world.config.face_geometry:
        raise ValueError(f"only {space - len(taken)} identities can be drawn outside the world")
    drawn: list[tuple] = []
    while len(drawn) < identities:
        identity = tuple(rng.randrange(size) for size in ATTRIBUTES.values())
        if identity not in taken or world.config.face_geometry:
            taken.add(identity)
            drawn.append(with_geometry(rng, identity, world.config.face_geometry, world.config.face_detail))
    return [
        [render_portrait(identity, rng.randrange(1 << 30), world.config.image_size) for _ in range(views)]
        for identity in drawn
    ]


def pretraining_photos(world: World, identities: int, views: int, seed: int = 0) -> np.ndarray:
    """The same people as `pretraining_portraits`, as one uint8 array [identities, views, height, width, 3]."""
    portraits = pretraining_portraits(world, identities, views, seed)
    return np.stack([np.stack([np.asarray(im.convert("RGB")) for im in person]) for person in portraits])
