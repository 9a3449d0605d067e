"""The audit log on real PostgreSQL: no UPDATE, DELETE or TRUNCATE, by the owner or by an application role."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from core.audit.repository import AuditRepository
from core.db import MIGRATIONS, make_engine, make_session_factory, transaction


@pytest.fixture()
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    with transaction(make_session_factory(engine)) as session:
        AuditRepository(session).record("system", "test.event", "t1")
    yield engine
    engine.dispose()


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one())


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE audit_events",
        "TRUNCATE TABLE audit_events RESTART IDENTITY CASCADE",
        "DELETE FROM audit_events",
        "UPDATE audit_events SET actor = 'someone else'",
    ],
)
def test_the_owner_cannot_empty_or_rewrite_the_audit_log(engine: Engine, statement: str):
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    assert _count(engine) == 1


def test_an_application_role_cannot_truncate_delete_or_disarm_the_log(pg_url: str, engine: Engine):
    """Granted everything before the migration ran: it keeps INSERT and SELECT, and the triggers stop the rest."""
    role = f"lethe_app_{uuid.uuid4().hex[:8]}"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", pg_url)
    command.downgrade(config, "0003")
    with engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role}"))
        conn.execute(text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"))
        conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    command.upgrade(config, "head")
    try:
        with engine.connect() as conn:
            granted = {
                verb: conn.execute(text(f"SELECT has_table_privilege('{role}', 'audit_events', '{verb}')")).scalar()
                for verb in ("INSERT", "SELECT", "UPDATE", "DELETE", "TRUNCATE")
            }
        assert granted == {"INSERT": True, "SELECT": True, "UPDATE": False, "DELETE": False, "TRUNCATE": False}
        with engine.begin() as conn:
            conn.execute(text(f"GRANT ALL ON audit_events TO {role}"))  # granted again later: the triggers remain
        for statement, refusal in (
            ("TRUNCATE audit_events", "append-only"),
            ("DELETE FROM audit_events", "append-only"),
            ("ALTER TABLE audit_events DISABLE TRIGGER ALL", "must be owner"),
            ("DROP TRIGGER audit_events_no_truncate ON audit_events", "must be owner"),
        ):
            with pytest.raises(DBAPIError, match=refusal), engine.begin() as conn:
                conn.execute(text(f"SET LOCAL ROLE {role}"))
                conn.execute(text(statement))
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL ROLE {role}"))
            conn.execute(text("INSERT INTO audit_events (at, actor, action, detail) VALUES (now(), 'app', 'ok', '{}')"))
        assert _count(engine) == 2
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}"))
            conn.execute(text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
