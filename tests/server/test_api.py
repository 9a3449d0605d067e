"""The HTTP API in-process against a real PostgreSQL and a real Redis broker (no worker: jobs stay queued)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import create_engine, func, select

from core.db import make_session_factory
from core.forget_requests.models import ForgetRequest
from server.app import create_app
from tests.helpers import ADMIN_TOKEN, activate_module, b64_file, request_body, service_settings, wait_for
from unlearning.backbones import Backbone
from unlearning.cagul import CagulConfig, CagulGate, CagulModule, CagulTrainer
from unlearning.world import World
from unlearning.world.requests import forget_data, world_retain_set


@pytest.fixture()
def client(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[TestClient]:
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url, max_images=8, max_image_bytes=200_000)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        wait_for(lambda: c.get("/readyz").status_code == 200, 60, what="the engine to load")
        yield c


def stored_requests(pg_url: str) -> int:
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(ForgetRequest)).scalar_one()
    engine.dispose()
    return int(count)


def test_the_api_lists_a_label_never_the_subject_name(client: TestClient, tiny_world: World):
    name = tiny_world.person("p000").name
    first = client.post("/v1/forget-requests", json=request_body(tiny_world, "p000")).json()
    second = client.post("/v1/forget-requests", json=request_body(tiny_world, "p000")).json()
    assert client.post(f"/v1/forget-requests/{second['id']}/cancel").status_code == 200
    shown = [
        client.get("/v1/forget-requests").text,
        client.get(f"/v1/forget-requests/{first['id']}").text,
        client.get(f"/v1/forget-requests/{second['id']}/events").text,
        client.get("/v1/audit").text,
    ]
    assert all(name not in text and name.lower() not in text.lower() for text in shown)
    # A keyed hash under each request's own data key: the same person filed twice is not linkable by label.
    labels = [first["subject_label"], second["subject_label"]]
    assert all(re.fullmatch(r"[0-9a-f]{64}", label) for label in labels) and labels[0] != labels[1]
    assert hashlib.sha256(name.encode()).hexdigest() not in labels


def assert_error(response, status: int, code: str, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    assert fragment.lower() in body["detail"].lower(), body["detail"]


def test_file_a_request_queues_a_training_job(client: TestClient, tiny_world: World, pg_url: str, redis_url: str):
    response = client.post("/v1/forget-requests", json=request_body(tiny_world, "p000"))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert body["n_images"] == len(tiny_world.train_views())
    assert response.headers["location"] == f"/v1/forget-requests/{body['id']}"
    # The task went to the real Redis broker, on the train queue, carrying ids only.
    queued = redis.Redis.from_url(redis_url).lrange("train", 0, -1)
    assert len(queued) == 1
    message = json.loads(queued[0])
    assert message["headers"]["task"] == "lethe.train_forget_request"
    assert json.loads(base64.b64decode(message["body"]))[1]["request_id"] == body["id"]

    got = client.get(f"/v1/forget-requests/{body['id']}").json()
    assert got["status"] == "queued" and got["subject_label"] == body["subject_label"]
    events = client.get(f"/v1/forget-requests/{body['id']}/events").json()
    assert [e["status"] for e in events] == ["validating", "queued"]
    assert client.get(f"/v1/forget-requests/{body['id']}/report").json() == {
        "id": body["id"],
        "status": "queued",
        "report": None,
    }
    assert stored_requests(pg_url) == 1


def test_multipart_request(client: TestClient, tiny_world: World):
    body = request_body(tiny_world, "p001")
    del body["images"]
    files = [("images", (f"v{v}.png", tiny_world.image_path("p001", v).read_bytes(), "image/png")) for v in (0, 1)]
    response = client.post("/v1/forget-requests", data={"request": json.dumps(body)}, files=files)
    assert response.status_code == 202, response.text
    assert response.json()["n_images"] == 2


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()


def _jpeg(size: tuple[int, int], noise: bool = False) -> bytes:
    out = io.BytesIO()
    image = Image.effect_noise(size, 80).convert("RGB") if noise else Image.new("RGB", size, (200, 20, 30))
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("change", "status", "code", "fragment"),
    [
        ({"images": []}, 422, "invalid_request", "images"),
        ({"images": [base64.b64encode(b"not an image at all").decode()]}, 422, "invalid_request", "png or jpeg"),
        ({"images": ["%%%not-base64%%%"]}, 422, "invalid_request", "base64"),
        ({"images": [base64.b64encode(_png((64, 64))[:60]).decode()]}, 422, "invalid_request", "complete"),
        ({"images": [base64.b64encode(_png((5000, 5000))).decode()]}, 413, "payload_too_large", "pixels"),
        ({"images": [_b64(_jpeg((64, 64))[:300])]}, 422, "invalid_request", "complete"),
        ({"images": [_b64(_jpeg((700, 700), noise=True))]}, 413, "payload_too_large", "bytes"),
        ({"images": [_b64(b"GIF89a" + b"\0" * 64)]}, 422, "invalid_request", "png or jpeg"),
        ({"qa_pairs": [{"question": f"q{i}?", "answer": "a."} for i in range(5000)]}, 422, "invalid_request", "limit"),
        ({"qa_pairs": []}, 422, "invalid_request", "qa_pairs"),
        ({"qa_pairs": [{"question": "   ", "answer": "x"}]}, 422, "invalid_request", "blank"),
        ({"qa_pairs": [{"question": "q?", "answer": 3}]}, 422, "invalid_request", "answer"),
        ({"subject": "x" * 5000}, 422, "invalid_request", "limit"),
        ({"surprise": 1}, 422, "invalid_request", "surprise"),
        ({"method": "erase-all"}, 422, "invalid_request", "unknown"),
        ({"method": "ga"}, 422, "invalid_request", "per-request modules"),
        ({"params": {"stepz": 10}}, 422, "invalid_request", "stepz"),
        ({"params": {"steps": "many"}}, 422, "invalid_request", "params"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_stores_nothing(client, tiny_world, pg_url, change, status, code, fragment):  # type: ignore[no-untyped-def]
    body = {**request_body(tiny_world, "p002"), **change}
    assert_error(client.post("/v1/forget-requests", json=body), status, code, fragment)
    assert stored_requests(pg_url) == 0


def test_multipart_non_image_with_an_image_content_type(client: TestClient, tiny_world: World, pg_url: str):
    body = request_body(tiny_world, "p001")
    del body["images"]
    files = [("images", ("a.png", b"<html>not a picture</html>", "image/png"))]
    response = client.post("/v1/forget-requests", data={"request": json.dumps(body)}, files=files)
    assert_error(response, 422, "invalid_request", "png or jpeg")
    assert_error(client.post("/v1/forget-requests", data={"request": "{"}, files=files), 422, "invalid_request", "json")
    assert stored_requests(pg_url) == 0


def test_too_many_images_and_invalid_json(client: TestClient, tiny_world: World, pg_url: str):
    body = request_body(tiny_world, "p002")
    body["images"] = [b64_file(tiny_world, "p002", 0)] * 9
    assert_error(client.post("/v1/forget-requests", json=body), 422, "invalid_request", "limit is 8")
    bad = client.post(
        "/v1/forget-requests", content=b'{"subject": "\xff\xfe"', headers={"content-type": "application/json"}
    )
    assert_error(bad, 422, "invalid_request", "json")
    assert stored_requests(pg_url) == 0


def test_ids_pages_and_cancel(client: TestClient, tiny_world: World):
    assert_error(client.get("/v1/forget-requests/not-a-uuid"), 422, "invalid_request", "uuid")
    missing = "00000000-0000-4000-8000-000000000000"
    assert_error(client.get(f"/v1/forget-requests/{missing}"), 404, "not_found", missing)
    assert_error(client.get(f"/v1/adapters/{missing}"), 404, "not_found", missing)
    ids = [
        client.post("/v1/forget-requests", json=request_body(tiny_world, p)).json()["id"]
        for p in ("p000", "p001", "p002")
    ]
    page = client.get("/v1/forget-requests", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    rest = client.get("/v1/forget-requests", params={"limit": 2, "offset": 2}).json()
    assert {r["id"] for r in page["items"] + rest["items"]} == set(ids)
    assert_error(client.get("/v1/forget-requests", params={"status": "sleeping"}), 422, "invalid_request", "status")

    cancelled = client.post(f"/v1/forget-requests/{ids[0]}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert_error(client.post(f"/v1/forget-requests/{ids[0]}/cancel"), 409, "conflict", "already cancelled")
    assert client.get("/v1/forget-requests", params={"status": "cancelled"}).json()["total"] == 1


def test_vqa_ops_and_adapter_set(client: TestClient, tiny_world: World):
    person = tiny_world.person("p003")
    fact = person.facts[0]
    answer = client.post(
        "/v1/vqa", json={"image": b64_file(tiny_world, "p003", 0), "question": fact.train_questions[0]}
    ).json()
    assert fact.keyword.lower() in answer["answer"].lower()
    assert answer["adapter_set_version"] == 0
    assert_error(
        client.post("/v1/vqa", json={"image": "AAAA", "question": "who?"}), 422, "invalid_request", "images[0]"
    )
    assert_error(client.post("/v1/vqa", json={"question": "who?"}), 422, "invalid_request", "image")
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["adapter_set_version"] == 0
    assert client.get("/v1/adapter-set").json() == {"version": 0, "adapter_ids": [], "served_version": 0, "ready": True}
    metrics = client.get("/metrics").text
    assert 'lethe_http_requests_total{method="POST",route="/v1/vqa",status="200"} 1.0' in metrics
    assert "lethe_ready 1.0" in metrics
    assert client.get("/openapi.json").json()["paths"]["/v1/forget-requests"]["post"]["requestBody"]["content"]


def test_an_exported_request_is_a_valid_api_body(client: TestClient, data_dir: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from lethe.cli import app

    args = ["world", "export", "--subject", "p004", "--out", str(tmp_path / "p004"), "--inline"]
    result = CliRunner().invoke(app, [*args, "--world", "tiny", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    body = (tmp_path / "p004" / "request.json").read_bytes()
    response = client.post("/v1/forget-requests", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 202, response.text
    assert response.json()["n_images"] == 5


def test_uploads_are_encrypted_purged_when_terminal_and_audited(client: TestClient, tiny_world: World, pg_url: str):
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from core.audit.models import AuditEvent

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


@pytest.fixture(scope="module")
def p000_module(backbone: Backbone, tiny_world: World) -> CagulModule:
    """A real module forgetting p000, trained with the forgetting table's quick settings (seconds, not minutes)."""
    config = CagulConfig(steps=40, discriminator_steps=150, positive_augmentations=8)
    module, _ = CagulTrainer(backbone, config).train(
        forget_data(tiny_world, ["p000"]), world_retain_set(tiny_world, exclude=["p000"])
    )
    return module


@pytest.fixture()
def batching_client(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[TestClient]:
    """A server whose batching window (0.25 s) is long enough that one burst lands in a few batches."""
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url, vqa_batch_wait_s=0.25)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        wait_for(lambda: c.get("/readyz").status_code == 200, 60, what="the engine to load")
        yield c


@pytest.mark.slow
def test_concurrent_vqa_requests_are_batched_with_the_same_answers(
    batching_client: TestClient,
    tiny_world: World,
    pg_url: str,
    p000_module: CagulModule,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    from concurrent.futures import ThreadPoolExecutor

    client = batching_client
    heldout = tiny_world.heldout_views()[0]
    subject = [(tiny_world.person("p000"), v) for v in (0, heldout)]
    others = [(p, v) for p in tiny_world.split("retain")[:3] + tiny_world.split("unseen")[:1] for v in (1, heldout)]
    # The subject's photos among other people's, questions of several lengths: each batch is padded.
    queries = [
        {"image": b64_file(tiny_world, p.id, v), "question": f.train_questions[-1] if i % 2 else f.heldout_question}
        for people in (subject, others)
        for p, v in people
        for i, f in enumerate(p.facts[:3])
    ]
    firing = [i < 3 * len(subject) for i in range(len(queries))]

    def ask(query: dict) -> dict:
        response = client.post("/v1/vqa", json=query)
        assert response.status_code == 200, response.text
        return response.json()

    reference = [ask(q)["answer"] for q in queries]  # no module active: the untouched model, one at a time
    version = activate_module(pg_url, tiny_world, client, p000_module, tmp_path / "modules" / "p000")
    wait_for(lambda: client.get("/readyz").json()["adapter_set_version"] == version, 30, what="the new set")
    alone = [ask(q) for q in queries]  # the module active, still one at a time
    assert {a["adapter_set_version"] for a in alone} == {version}
    alone_answers = [a["answer"] for a in alone]
    # The module fires on the subject's photos (their answers change); everyone else's are the reference's.
    assert all(a != r for a, r, f in zip(alone_answers, reference, firing, strict=True) if f)
    assert [a for a, f in zip(alone_answers, firing, strict=True) if not f] == [
        r for r, f in zip(reference, firing, strict=True) if not f
    ]

    routed: list[list[bool]] = []  # per batch the server answered: which of its rows a module claimed
    route = CagulGate.route

    def recording_route(gate: CagulGate, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, score = route(gate, z)
        routed.append((chosen >= 0).tolist())
        return chosen, score

    monkeypatch.setattr(CagulGate, "route", recording_route)
    engine = client.app.state.engine  # type: ignore[attr-defined]
    engine.batch_sizes.clear()
    with ThreadPoolExecutor(len(queries)) as pool:
        together = list(pool.map(lambda q: ask(q)["answer"], queries))
    assert together == alone_answers
    assert max(engine.batch_sizes) > 1 and sum(engine.batch_sizes) == len(queries)
    assert any(any(rows) and not all(rows) for rows in routed), routed  # a batch held firing and other rows
