"""Uploads sealed at rest and purged when terminal, under an append-only audit log. Crypto-shredding: a purged
request's ciphertext, kept by a dump or backup, opens with no key the service holds; the master key rotates
without re-encrypting payloads, and the old one then opens nothing."""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from core.audit.models import AuditEvent
from core.audit.repository import AuditRepository
from core.crypto import DataKeyError, MasterKey, master_key
from core.db import make_engine, make_session_factory, transaction, upgrade_database
from core.forget_requests.models import ForgetRequest
from core.forget_requests.repository import ForgetRequestRepository
from core.settings import Settings
from lethe.cli import app as cli
from server.app import create_app
from tests.helpers import ADMIN_TOKEN, request_body, service_settings
from unlearning.world import World


def _file(client: TestClient, world: World, person_id: str) -> str:
    created = client.post("/v1/forget-requests", json=request_body(world, person_id))
    assert created.status_code == 202, created.text
    return str(created.json()["id"])


def _sealed(url: str, request_id: str) -> list[bytes]:
    """The request's stored ciphertext: what dead row versions, the WAL and older backups keep after a purge."""
    with transaction(make_session_factory(make_engine(url))) as session:
        request = ForgetRequestRepository(session).get(request_id)
        blobs = [request.subject_ciphertext, request.qa_ciphertext, *(im.ciphertext for im in request.images)]
    assert all(blobs)
    return [b for b in blobs if b is not None]


def _dump(url: str) -> str:
    """A full logical dump, as a backup takes it: pg_dump of PostgreSQL, every row of SQLite."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.split("///", 1)[1]) as conn:
            return "\n".join(conn.iterdump())
    result = subprocess.run(["pg_dump", url.replace("+psycopg", "")], capture_output=True, text=True, check=True)
    return result.stdout


def _blobs(dump: str) -> list[bytes]:
    """Every binary value in the dump (PostgreSQL bytea \\x..., SQLite X'...') and every Fernet token in its text."""
    hexes = re.findall(r"\\x([0-9a-f]{64,})", dump) + re.findall(r"X'([0-9A-Fa-f]{64,})'", dump)
    return [bytes.fromhex(h) for h in hexes] + [t.encode() for t in re.findall(r"gAAAAA[A-Za-z0-9_\-=]+", dump)]


def _opens(key: bytes, token: bytes) -> bool:
    try:
        Fernet(key).decrypt(token)
    except InvalidToken:
        return False
    return True


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_purged_request_cannot_be_decrypted_from_a_dump_with_the_master_key(
    backend: str, request: pytest.FixtureRequest, tiny_world: World, tmp_path: Path, redis_url: str
):
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'lethe.db'}"
    upgrade_database(url)
    settings = service_settings(tiny_world, tmp_path, url, redis_url)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with TestClient(create_app(settings, load_model=False), headers=headers) as client:
        purged, kept = _file(client, tiny_world, "p000"), _file(client, tiny_world, "p001")
        backup = _sealed(url, purged)  # taken while the request was in flight
        assert client.post(f"/v1/forget-requests/{purged}/cancel").status_code == 200
    dump = _dump(url)
    master = master_key(settings)

    # The attacker holds the dump, the old ciphertext and the master key: every data key the dump still wraps...
    data_keys = []
    for blob in _blobs(dump):
        try:
            data_keys.append(master.unwrap(blob))
        except DataKeyError:
            continue
    # ...opens the request still in flight (so the dump is read right), and nothing of the purged one.
    assert any(_opens(k, t) for k in data_keys for t in _sealed(url, kept))
    master_raw = Path(str(settings.master_key_file)).read_bytes().strip()
    for token in backup:
        assert not _opens(master_raw, token)
        assert not any(_opens(k, token) for k in data_keys)
    for person_id in ("p000", "p001"):  # neither name in plain text, the purged one's nor the queued one's
        name = tiny_world.person(person_id).name
        assert name not in dump and name.encode().hex() not in dump


def test_rotation_rewraps_data_keys_and_the_old_master_opens_none(
    tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str
):
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with TestClient(create_app(settings, load_model=False), headers=headers) as client:
        ids = [_file(client, tiny_world, "p000"), _file(client, tiny_world, "p001")]
    old = master_key(settings)
    before = {i: _sealed(pg_url, i) for i in ids}
    env = {
        "LETHE_DATABASE_URL": pg_url,
        "LETHE_DATA_DIR": str(settings.data_dir),
        "LETHE_MASTER_KEY_FILE": str(settings.master_key_file),
    }

    rotated = CliRunner().invoke(cli, ["keys", "rotate-data-key"], env=env)
    assert rotated.exit_code == 0, rotated.output
    assert "2 data keys re-wrapped" in rotated.output
    new = master_key(Settings(data_dir=settings.data_dir, master_key_file=settings.master_key_file))
    assert new.key_id != old.key_id and not Path(f"{settings.master_key_file}.new").exists()
    sessions = make_session_factory(make_engine(pg_url))
    with transaction(sessions) as session:
        repo = ForgetRequestRepository(session)
        for request_id, person_id in zip(ids, ("p000", "p001"), strict=True):
            request = repo.get(request_id)
            assert request.key is not None and request.key.master_key_id == new.key_id
            with pytest.raises(DataKeyError):
                old.unwrap(request.key.wrapped_key)
            assert _sealed(pg_url, request_id) == before[request_id]  # payloads not re-encrypted
            subject = new.open(request.key.wrapped_key).decrypt(before[request_id][0])
            assert subject.decode() == tiny_world.person(person_id).name
        assert AuditRepository(session).page(limit=5, offset=0)[0][0].action == "master_key.rotate"

    # A new key in a file of the operator's choice; a wrong old key re-wraps nothing.
    target = tmp_path / "vault" / "next.key"
    wrong = tmp_path / "vault" / "wrong.key"
    wrong.parent.mkdir()
    wrong.write_bytes(MasterKey.generate())
    refused = CliRunner().invoke(
        cli, ["keys", "rotate-data-key", "--old-key-file", str(wrong), "--new-key-file", str(target)], env=env
    )
    assert refused.exit_code != 0 and "neither the old" in refused.output
    again = CliRunner().invoke(cli, ["keys", "rotate-data-key", "--new-key-file", str(target)], env=env)
    assert again.exit_code == 0 and "2 data keys re-wrapped" in again.output, again.output
    final = MasterKey(target.read_bytes().strip())
    with transaction(sessions) as session:
        for request_id in ids:
            key = ForgetRequestRepository(session).get(request_id).key
            assert key is not None and final.open(key.wrapped_key).decrypt(before[request_id][1])


def test_uploads_are_encrypted_purged_when_terminal_and_audited(client: TestClient, tiny_world: World, pg_url: str):
    body = request_body(tiny_world, "p003")
    request_id = client.post("/v1/forget-requests", json=body).json()["id"]
    raw_image = base64.b64decode(body["images"][0])
    answer = body["qa_pairs"][0]["answer"].encode()
    engine = create_engine(pg_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        request = session.get(ForgetRequest, request_id)
        assert request is not None and request.qa_ciphertext is not None
        assert answer not in request.qa_ciphertext and request.n_qa_pairs == len(body["qa_pairs"])
        stored = request.images[0].ciphertext
        assert stored is not None and raw_image not in stored and raw_image[:64] not in stored
        assert request.images[0].sha256 == hashlib.sha256(raw_image).hexdigest()

    client.post(f"/v1/forget-requests/{request_id}/cancel")
    with sessions() as session:
        request = session.get(ForgetRequest, request_id)
        assert request is not None and request.purged_at is not None
        assert request.qa_ciphertext is None and all(im.ciphertext is None for im in request.images)
        assert len(request.qa_sha256) == len(body["qa_pairs"]) and all(len(h) == 64 for h in request.qa_sha256)

    audit = client.get("/v1/audit", params={"target": request_id}).json()
    assert [e["action"] for e in audit["items"]] == [
        "forget_request.purge",
        "forget_request.cancel",
        "forget_request.create",
    ]
    assert audit["items"][2]["actor"].startswith("key:") and audit["items"][0]["actor"] == "system"
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'someone else'"))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events"))
    with sessions() as session:
        assert session.query(AuditEvent).count() == 3
    engine.dispose()
