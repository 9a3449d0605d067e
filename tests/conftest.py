"""Shared fixtures: the tiny reference world (real LLaVA, trained here once per data dir) and its backbone."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
from sqlalchemy import create_engine, text

from core.db import upgrade_database
from core.settings import get_settings
from unlearning.backbones import Backbone, load_backbone
from unlearning.world import WORLD_PRESETS, World
from unlearning.world.builder import build_world

DATA_DIR = Path(os.environ.get("LETHE_TEST_DATA_DIR", Path(__file__).resolve().parent.parent / ".lethe-test"))
# Under pytest-xdist each test process is one of WORKERS ("gw0", "gw1", ...) sharing the machine's cores.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def pytest_configure(config: pytest.Config) -> None:
    if WORKERS > 1:
        # A share of the cores per test process, and for the servers and workers it starts: OpenMP teams of every
        # core in each process slowed the small ops of all of them (2.5x, docs/scale.md "The N = 10 gap explained").
        threads = max(1, (os.cpu_count() or 1) // WORKERS)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under several test processes: the default world's tests first (its build is the longest), then files that
    train real models, the rest in their order, so that the processes end together (`--no-loadscope-reorder`)."""
    if WORKERS <= 1:
        return
    items.sort(
        key=lambda item: ("default_world" not in getattr(item, "fixturenames", ()), not item.get_closest_marker("slow"))
    )


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
# One database per test process: each test empties its own.
REDIS_URL = os.environ.get("LETHE_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{15 - WORKER}")


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
