"""Publishing is serialised: two publishes and an admin deactivation racing on PostgreSQL always leave the
newest set version equal to the ACTIVE rows, and the engine refuses to serve whenever the two differ."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.adapters.models import AdapterState
from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.db import make_engine, make_session_factory, transaction
from core.settings import Settings
from server.adapters.service import AdapterService
from server.inference import InferenceEngine
from tests.helpers import adapter_row, app_client, b64_file, module_artifact, service_settings, wait_for
from unlearning.backbones import Backbone
from unlearning.world import World

ROUNDS = 50


def _publish(sessions: sessionmaker[Session], artifact: tuple[str, str], fingerprint: str) -> None:
    """The worker's publish transaction: lock, write the ACTIVE row, record the set."""
    with transaction(sessions) as session:
        sets = AdapterSetRepository(session)
        sets.lock()
        adapter_row(session, artifact, fingerprint)
        time.sleep(0.005)  # the verification bookkeeping a real publish does here widens the race window
        sets.record("publish")


def _race(sessions: sessionmaker[Session], service: AdapterService, artifact: tuple[str, str], fp: str) -> None:
    """Two publishes and one deactivation (through the API's code path), released together by a barrier."""
    with transaction(sessions) as session:
        victim = AdapterRepository(session).active_ids()[0]
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def run(action: Callable[[], object]) -> None:
        try:
            barrier.wait(10)
            action()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    actions = [lambda: _publish(sessions, artifact, fp)] * 2 + [lambda: service.set_active(victim, False, "admin")]
    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def _set_and_rows(sessions: sessionmaker[Session]) -> tuple[list[str], list[str]]:
    with transaction(sessions) as session:
        current = AdapterSetRepository(session).current()
        return sorted(current.adapter_ids if current else []), AdapterRepository(session).active_ids()


@pytest.fixture()
def served(backbone: Backbone, pg_url: str, tmp_path: Path) -> tuple[sessionmaker[Session], InferenceEngine]:
    """Sessions on a fresh PostgreSQL database and an engine serving from it, on the model loaded once."""
    sessions = make_session_factory(make_engine(pg_url))
    engine = InferenceEngine(Settings(data_dir=tmp_path, database_url=pg_url, engine_sync_interval_s=0.0), sessions)
    engine.attach(backbone)
    return sessions, engine


def test_two_publishes_and_a_deactivation_leave_the_set_equal_to_the_active_rows(served, backbone, tmp_path):
    sessions, engine = served
    fingerprint = str(engine.fingerprint)
    artifact = module_artifact(tmp_path / "module", fingerprint, backbone)
    # Not loaded: set_active's own sync is a no-op, so the check below is the only sync.
    service = AdapterService(sessions, InferenceEngine(engine.settings, sessions))
    with transaction(sessions) as session:
        for _ in range(2):
            adapter_row(session, artifact, fingerprint)
        AdapterSetRepository(session).record("start")
    for round_ in range(ROUNDS):
        _race(sessions, service, artifact, fingerprint)
        in_set, active = _set_and_rows(sessions)
        assert in_set == active, f"round {round_}: the set {in_set} is not the active rows {active}"
        engine.sync()
        engine.check_integrity()
        assert engine.ready, engine.status()
        assert sorted(engine.gate.module_ids) == active
        _keep_two_active(sessions)


def _keep_two_active(sessions: sessionmaker[Session]) -> None:
    """Each round adds one active adapter; rolling the extras back keeps every round's reload small."""
    with transaction(sessions) as session:
        sets, adapters = AdapterSetRepository(session), AdapterRepository(session)
        sets.lock()
        for adapter_id in adapters.active_ids()[2:]:
            adapters.set_state(adapters.get(adapter_id), AdapterState.INACTIVE)
        sets.record("rollback")


def test_without_the_lock_the_same_race_loses_a_change(served, backbone, tmp_path, monkeypatch):
    sessions, engine = served
    fingerprint = str(engine.fingerprint)
    artifact = module_artifact(tmp_path / "module", fingerprint, backbone)
    service = AdapterService(sessions, InferenceEngine(engine.settings, sessions))
    monkeypatch.setattr(AdapterSetRepository, "lock", lambda self: None)
    with transaction(sessions) as session:
        for _ in range(2):
            adapter_row(session, artifact, fingerprint)
        AdapterSetRepository(session).record("start")
    for _ in range(ROUNDS):
        _race(sessions, service, artifact, fingerprint)
        in_set, active = _set_and_rows(sessions)
        if in_set != active:
            # The lost change is exactly what the engine must refuse to serve.
            engine.sync()
            assert not engine.ready and "but the registry's active rows are" in engine.status()
            return
    pytest.fail(f"{ROUNDS} unlocked races never lost a change: the race test above would not catch a regression")


def test_a_set_that_drifts_from_the_active_rows_fails_closed_and_recovers(
    tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str
):
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url, engine_sync_interval_s=0.0)
    sessions = make_session_factory(make_engine(pg_url))
    with app_client(settings) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        backbone = engine.gate.backbone
        artifact = module_artifact(tmp_path / "module", engine.fingerprint, backbone)
        vqa = {"image": b64_file(tiny_world, "p003", 0), "question": "what is this person's name?"}

        def refused(*, holds: list[str], rows: list[str]) -> None:
            # The set is read by a background pass, not by the request: wait for the pass that sees the change.
            ready = wait_for(lambda: (r := client.get("/readyz")).status_code == 503 and r, 10, 0.05, "the refusal")
            assert ready.status_code == 503
            assert (
                f"holds [{', '.join(holds)}] but the registry's active rows are [{', '.join(rows)}]"
                in (ready.json()["detail"])
            )
            answer = client.post("/v1/vqa", json=vqa)
            assert answer.status_code == 503 and answer.json()["error"] == "not_ready"

        def served_version() -> int:
            wait_for(lambda: client.get("/readyz").status_code == 200, 10, 0.05, "the set to be served")
            assert client.post("/v1/vqa", json=vqa).status_code == 200
            return int(client.get("/readyz").json()["adapter_set_version"])

        # An ACTIVE row with no version recording it: serving without it would answer about its subject.
        with transaction(sessions) as session:
            first = adapter_row(session, artifact, engine.fingerprint)
        refused(holds=[], rows=[first])
        with transaction(sessions) as session:
            version = AdapterSetRepository(session).record("publish").version
        assert served_version() == version

        # A version recorded, then a row flipped behind its back (a rollback undone, or a deactivation lost).
        with transaction(sessions) as session:
            AdapterRepository(session).set_state(AdapterRepository(session).get(first), AdapterState.INACTIVE)
        refused(holds=[first], rows=[])
        with transaction(sessions) as session:
            version = AdapterSetRepository(session).record("rollback").version
        assert served_version() == version
