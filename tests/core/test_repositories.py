"""Repositories and migrations on a real PostgreSQL database (and SQLite, the embedded default)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect

from core.adapters.models import AdapterState
from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.crypto import MasterKey, seal_request
from core.db import MIGRATIONS, make_engine, make_session_factory, transaction, upgrade_database, utcnow
from core.forget_requests.models import RequestStatus
from core.forget_requests.repository import ForgetRequestRepository
from core.models import Base

MASTER = MasterKey(MasterKey.generate())


def _request(repo: ForgetRequestRepository, subject: str = "someone"):  # type: ignore[no-untyped-def]
    return repo.create(
        seal_request(MASTER, subject, b"[]", [("image/png", "0" * 64, b"\x89PNG...")]),
        method="cagul",
        params={},
        qa_sha256=["0" * 64],
        callback_url=None,
        status=RequestStatus.QUEUED,
    )


def test_requests_jobs_events_and_adapter_set(pg_url: str):
    sessions = make_session_factory(make_engine(pg_url))
    with transaction(sessions) as session:
        repo = ForgetRequestRepository(session)
        first, second = _request(repo, "a"), _request(repo, "b")
        job = repo.create_job(first)
        repo.set_status(first, "training", job_id=job.id)
        repo.set_status(second, RequestStatus.VERIFYING, "verifying attempt 2 of 3")
        assert second.error is None  # an in-flight message is no error; the event keeps it
        repo.set_status(second, RequestStatus.REJECTED, "verification failed in all 3 attempts")
        assert second.error == "verification failed in all 3 attempts"
        repo.add_event(first.id, job_id=job.id, kind="progress", phase="encoder", step=3, total=10, loss=0.5)
        ids = (first.id, second.id, job.id)
    with transaction(sessions) as session:
        repo = ForgetRequestRepository(session)
        first = repo.get(ids[0])
        assert first.status == "training" and first.key is not None
        assert MASTER.open(first.key.wrapped_key).decrypt(first.images[0].ciphertext) == b"\x89PNG..."
        events = repo.events(ids[0])
        assert [e.kind for e in events] == ["status", "status", "progress"]
        assert [e.id for e in repo.events(ids[0], after=events[0].id)] == [e.id for e in events[1:]]
        items, total = repo.page(limit=1, offset=0)
        assert total == 2 and len(items) == 1
        assert repo.page(limit=5, offset=0, status="training")[1] == 1
        assert [e.message for e in repo.events(ids[1])][-3:-1] == [
            "verifying attempt 2 of 3",
            "verification failed in all 3 attempts",
        ]
        # Never heartbeated, created "now": stale only once the cutoff passes its creation time.
        assert repo.stale_jobs(timedelta(minutes=5)) == []
        assert [j.id for _, j in repo.stale_jobs(timedelta(minutes=5), now=utcnow() + timedelta(minutes=6))] == [ids[2]]

        adapters = AdapterRepository(session)
        sets = AdapterSetRepository(session)
        assert sets.current() is None
        common = {"method": "cagul", "path": "/x", "sha256": "f" * 64, "base_fingerprint": "b" * 64}
        a1 = adapters.create(request_id=ids[0], state=AdapterState.ACTIVE, trainable_params=5, report={}, **common)
        a2 = adapters.create(
            request_id=ids[0], state=AdapterState.INACTIVE, parent_id=a1.id, trainable_params=5, report={}, **common
        )
        assert (a1.version, a2.version) == (1, 2)
        v1 = sets.record("first")
        adapters.set_state(a1, AdapterState.INACTIVE)
        v2 = sets.record("rollback")
        assert (v1.adapter_ids, v2.adapter_ids, v2.version) == ([a1.id], [], v1.version + 1)
        assert sets.current().version == v2.version
        a3 = adapters.create(request_id=ids[1], state=AdapterState.ACTIVE, trainable_params=5, report={}, **common)
        adapters.set_state(a1, AdapterState.ACTIVE)
        assert adapters.active_ids() == sorted([a1.id, a3.id])
        # Drift: rows changed with no version recorded is what the engine must see.
        assert sets.snapshot() == (v2, sorted([a1.id, a3.id]))
        assert sets.record("both").adapter_ids == sorted([a1.id, a3.id])


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_lock_serialises_changes_of_the_active_set(backend: str, request: pytest.FixtureRequest, tmp_path: Path):
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'lethe.db'}"
    upgrade_database(url)
    sessions = make_session_factory(make_engine(url))
    with transaction(sessions) as session:
        request_id = _request(ForgetRequestRepository(session)).id
    holding, order = threading.Event(), []

    def first() -> None:
        with transaction(sessions) as session:
            sets = AdapterSetRepository(session)
            sets.lock()
            sets.lock()  # idempotent within a transaction
            holding.set()
            time.sleep(0.5)
            AdapterRepository(session).create(
                request_id=request_id,
                method="cagul",
                state=AdapterState.ACTIVE,
                path="/x",
                sha256="f" * 64,
                base_fingerprint="b" * 64,
                trainable_params=1,
                report={},
            )
            sets.record("first")
            order.append("first recorded")

    thread = threading.Thread(target=first)
    thread.start()
    assert holding.wait(10)
    with transaction(sessions) as session:
        sets = AdapterSetRepository(session)
        sets.lock()
        order.append("second locked")
        # Taken after the first committed, so it reads (and records) the adapter the first one published.
        assert len(sets.record("second").adapter_ids) == 1
    thread.join()
    assert order == ["first recorded", "second locked"]


def test_queued_jobs_behind_a_busy_worker_are_waiting_not_silent(pg_url: str):
    sessions = make_session_factory(make_engine(pg_url))
    later = utcnow() + timedelta(minutes=6)
    with transaction(sessions) as session:
        repo = ForgetRequestRepository(session)
        running, waiting = repo.create_job(_request(repo, "a")), repo.create_job(_request(repo, "b"))
        running.status, running.heartbeat_at = "running", later
        ids = (running.id, waiting.id)
    with transaction(sessions) as session:
        repo = ForgetRequestRepository(session)
        assert repo.stale_jobs(timedelta(minutes=5), now=later) == []
        # The worker went silent too: the queue stopped, so the waiting job may have been lost with it.
        stale = repo.stale_jobs(timedelta(minutes=5), now=later + timedelta(minutes=6))
        assert sorted(j.id for _, j in stale) == sorted(ids)


def test_migrations_match_the_models_and_downgrade(tmp_path: Path, pg_url: str):
    for url in (pg_url, f"sqlite:///{tmp_path / 'lethe.db'}"):
        upgrade_database(url)  # idempotent on an up-to-date database
        engine = make_engine(url)
        assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", url)
        command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        command.upgrade(config, "head")
        assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
        engine.dispose()


def test_migrations_leave_nothing_for_autogenerate(pg_url: str):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(pg_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def test_master_key_and_signing_key_are_created_once(tmp_path: Path):
    import pytest

    from core.crypto import DataKeyError, master_key, signing_key, verify_certificate
    from core.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", master_key_file=tmp_path / "config" / "master.key")
    wrapped = master_key(settings).wrap(b"data key")
    assert master_key(settings.model_copy()).unwrap(wrapped) == b"data key"
    assert oct((tmp_path / "config" / "master.key").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(DataKeyError, match="does not open with master key"):
        MasterKey(MasterKey.generate()).unwrap(wrapped)
    signed = signing_key(settings).sign({"a": 1})
    assert signing_key(settings.model_copy()).key_id == signed["key_id"]
    assert verify_certificate(signed, signing_key(settings).public_key)
    assert not verify_certificate({**signed, "certificate": {"a": 2}}, signing_key(settings).public_key)


def test_master_key_file_inside_the_data_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from core.crypto import DataKeyError, master_key
    from core.settings import Settings

    inside = Settings(data_dir=tmp_path, master_key_file=tmp_path / "secrets" / "master.key")
    with pytest.raises(DataKeyError, match="inside the data dir"):
        master_key(inside)
    assert not (tmp_path / "secrets" / "master.key").exists()
    # The zero-config default: under the user's config dir, apart from the data.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    master_key(Settings(data_dir=tmp_path / "data"))
    assert (tmp_path / "config" / "lethe" / "master.key").is_file()
