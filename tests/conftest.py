"""Shared fixtures: the tiny reference world (real LLaVA, trained here once per data dir) and its backbone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unlearning.backbones import Backbone, load_backbone
from unlearning.world import WORLD_PRESETS, World
from unlearning.world.builder import build_world

DATA_DIR = Path(os.environ.get("LETHE_TEST_DATA_DIR", Path(__file__).resolve().parent.parent / ".lethe-test"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_world(data_dir: Path) -> World:
    return build_world(data_dir, WORLD_PRESETS["tiny"], with_retain_model=False)


@pytest.fixture(scope="session")
def backbone(tiny_world: World) -> Backbone:
    return load_backbone(tiny_world.reference_model_dir)
