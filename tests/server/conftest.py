"""The service in-process against a real PostgreSQL and a real Redis broker (no worker: jobs stay queued)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import app_client, service_settings
from unlearning.world import World


@pytest.fixture()
def client(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[TestClient]:
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url, max_images=8, max_image_bytes=200_000)
    with app_client(settings) as c:
        yield c
