"""Property-based run of schemathesis against the app's own OpenAPI schema: no 5xx, no schema violation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from server.app import create_app
from tests.helpers import ADMIN_TOKEN, service_settings, wait_for
from unlearning.world import World

EXAMPLES_PER_OPERATION = 45
# Derandomised, no example database: the same cases in every run, whatever ran before. Measured: 1,175.
MIN_CASES = 900


@pytest.fixture()
def cases() -> Iterator[Counter[str]]:
    """Cases run per operation, counted inside the fuzz test itself, and checked when it ends."""
    counted: Counter[str] = Counter()
    yield counted
    total = sum(counted.values())
    print(f"schemathesis cases run: {total} over {len(counted)} operations")
    assert total >= MIN_CASES, f"only {total} generated cases ran (expected at least {MIN_CASES}): {counted}"


@pytest.fixture()
def api_schema(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[object]:
    app = create_app(service_settings(tiny_world, tmp_path, pg_url, redis_url))
    with TestClient(app) as client:  # runs the lifespan: database, queue and engine on app.state
        wait_for(lambda: client.get("/readyz").status_code == 200, 60, what="the engine to load")
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.auth()
class AdminKey:
    """Every case carries the admin key, so each case tests its own input, not a missing key."""

    def get(self, case, ctx):  # type: ignore[no-untyped-def]
        return ADMIN_TOKEN

    def set(self, case, data, ctx):  # type: ignore[no-untyped-def]
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_never_break_the_server(case, cases) -> None:  # type: ignore[no-untyped-def]
    cases[case.operation.label] += 1
    # Every default check but one: a schema cannot say "a decodable PNG" or "an id that exists", so a
    # schema-valid body may rightly get a 4xx (positive_data_acceptance would call that a failure).
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
