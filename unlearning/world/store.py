"""A built world on disk: its people, their portrait views and the models trained on them."""

from __future__ import annotations

import json
import random
from functools import cached_property
from pathlib import Path

from PIL import Image

from unlearning.errors import InvalidInputError, WorldNotBuiltError
from unlearning.world.config import WorldConfig
from unlearning.world.people import Person, lookalike_identity
from unlearning.world.portraits import render_portrait

SPLITS = ("forget1", "forget5", "forget10", "retain", "unseen")


class World:
    """Read access to a world directory written by `unlearning.world.builder.build_world`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = self.root / "world.json"
        if not manifest.is_file():
            raise WorldNotBuiltError(f"no world at {self.root}: run `lethe world build` first")
        data = json.loads(manifest.read_text())
        self.config = WorldConfig.from_dict(data["config"])
        self.people = [Person.from_dict(p) for p in data["people"]]
        self._by_id = {p.id: p for p in self.people}
        self._lookalikes: dict[tuple[int, int], list[Image.Image]] = {}

    @property
    def reference_model_dir(self) -> Path:
        return self.root / "reference"

    @property
    def retain_model_dir(self) -> Path:
        return self.root / "retain"

    def is_complete(self) -> bool:
        return all((d / "build.json").is_file() for d in (self.reference_model_dir, self.retain_model_dir))

    def person(self, person_id: str) -> Person:
        if person_id not in self._by_id:
            raise InvalidInputError(f"unknown subject {person_id!r}: see `lethe world list` for ids")
        return self._by_id[person_id]

    def split(self, name: str) -> list[Person]:
        """People of a split; forget splits are nested (forget1 within forget5 within forget10)."""
        if name not in SPLITS:
            raise InvalidInputError(f"unknown split {name!r}; choose one of {SPLITS}")
        if name in ("retain", "unseen"):
            return [p for p in self.people if p.split == name]
        nested = SPLITS[: SPLITS.index(name) + 1]
        return [p for p in self.people if p.split in nested]

    @property
    def trained_people(self) -> list[Person]:
        return [p for p in self.people if p.trained]

    def train_views(self) -> range:
        return range(self.config.n_views - self.config.n_heldout_views)

    def heldout_views(self) -> range:
        return range(self.config.n_views - self.config.n_heldout_views, self.config.n_views)

    def image_path(self, person_id: str, view: int) -> Path:
        return self.root / "images" / f"{person_id}_v{view}.png"

    def image(self, person_id: str, view: int) -> Image.Image:
        return self._images[(person_id, view)]

    @cached_property
    def _images(self) -> dict[tuple[str, int], Image.Image]:
        out = {}
        for p in self.people:
            for v in range(self.config.n_views):
                with Image.open(self.image_path(p.id, v)) as im:
                    out[(p.id, v)] = im.convert("RGB")
        return out

    def lookalike_images(self, count: int, seed: int = 0) -> list[Image.Image]:
        """Fresh people who share most attributes with a world person: hard negatives, never trained on."""
        key = (count, seed)
        if key not in self._lookalikes:  # seconds to render, asked for by every retain set
            self._lookalikes[key] = self._render_lookalikes(count, seed)
        return self._lookalikes[key]

    def _render_lookalikes(self, count: int, seed: int) -> list[Image.Image]:
        rng = random.Random(self.config.seed * 7919 + seed)
        out = []
        for i in range(count):
            base = rng.choice(self.people).identity
            ident = lookalike_identity(rng, base, changed=rng.choice([3, 4, 5]))
            out.append(render_portrait(ident, view_seed=rng.randrange(1 << 30) + i, size=self.config.image_size))
        return out
