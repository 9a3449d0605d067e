"""Shared fixtures: the tiny reference world (real LLaVA, trained here once per data dir) and its backbone."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from core.db import upgrade_database
from core.settings import get_settings
from unlearning.backbones import Backbone, load_backbone
from unlearning.world import WORLD_PRESETS, World
from unlearning.world.builder import build_world

DATA_DIR = Path(os.environ.get("LETHE_TEST_DATA_DIR", Path(__file__).resolve().parent.parent / ".lethe-test"))


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Each test reads the environment it set: the process-wide settings cache starts and ends empty."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_world(data_dir: Path) -> World:
    # Both models at once (two processes): the forgetting-table smoke test needs the retain model too.
    return build_world(data_dir, WORLD_PRESETS["tiny"])


@pytest.fixture(scope="session")
def default_world(data_dir: Path) -> World:
    """The world `lethe serve` uses by default: what system tests must show working, not only the tiny one."""
    return build_world(data_dir, WORLD_PRESETS["default"], with_retain_model=False)


@pytest.fixture(scope="session")
def backbone(tiny_world: World) -> Backbone:
    return load_backbone(tiny_world.reference_model_dir)


PG_ADMIN_URL = os.environ.get("LETHE_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LETHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A new, migrated PostgreSQL database for one test, dropped afterwards."""
    name = f"lethe_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade_database(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture()
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.fixture()
def log_dir(tmp_path: Path) -> Iterator[Path]:
    """Where a test's server and worker processes write their logs; their tails are printed after the test."""
    logs = tmp_path / "logs"
    logs.mkdir()
    yield logs
    for path in sorted(logs.iterdir()):  # shown by pytest only when the test failed
        print(f"==== {path.name} ====\n{path.read_text()[-6000:]}")
