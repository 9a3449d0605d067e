"""What a worker process loads once and keeps: the frozen base model, the retain set, the database."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from functools import cache

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from core.crypto import DataCipher, data_cipher
from core.db import make_engine, make_session_factory
from core.settings import Settings, get_settings
from unlearning.backbones import Backbone, load_backbone
from unlearning.data import RetainSet
from unlearning.world import WORLD_PRESETS, World
from unlearning.world.builder import serving_model_dir, world_dir
from unlearning.world.requests import world_retain_set

log = logging.getLogger(__name__)


def pixels_sha256(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    backbone: Backbone
    fingerprint: str
    world: World
    cipher: DataCipher
    _retain: dict[tuple[str, ...], RetainSet] = field(default_factory=dict)

    def retain_set(self, request_images: list[Image.Image]) -> RetainSet:
        """The operator's retain set, without any retain person whose photo is in the request."""
        wanted = {pixels_sha256(im) for im in request_images}
        exclude = [
            p.id
            for p in self.world.split("retain")
            if any(pixels_sha256(self.world.image(p.id, v)) in wanted for v in range(self.world.config.n_views))
        ]
        if exclude:
            log.warning("excluding retain people %s: the request carries their photos", exclude)
        key = tuple(exclude)
        if key not in self._retain:  # look-alike negatives take seconds to render: once per process
            self._retain[key] = world_retain_set(self.world, exclude=exclude)
        return self._retain[key]


@cache
def runtime() -> Runtime:
    settings = get_settings()
    config = WORLD_PRESETS[settings.world]
    backbone = load_backbone(serving_model_dir(settings.model_path, settings.data_dir, config), device=settings.device)
    backbone.freeze()
    return Runtime(
        settings=settings,
        sessions=make_session_factory(make_engine(settings.resolved_database_url())),
        backbone=backbone,
        fingerprint=backbone.fingerprint(),
        world=World(world_dir(settings.data_dir, config)),
        cipher=data_cipher(settings),
    )
