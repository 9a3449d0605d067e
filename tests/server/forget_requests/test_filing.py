"""Filing a deletion request over HTTP: queued on the real broker, bad input a clear 4xx that stores nothing, ids,
pages and cancel, and a label in place of the subject's name."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from core.db import make_engine, make_session_factory, transaction
from core.forget_requests.models import ForgetRequest
from core.forget_requests.sealed_text import unpack_text
from tests.helpers import assert_error, b64_file, request_body, stored_requests
from unlearning.world import World


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


def test_aliases_are_sealed_with_the_qa_pairs_and_shown_only_as_a_count(
    client: TestClient, tiny_world: World, pg_url: str
):
    aliases = ["Kamiro Tale", "  K. Tale ", "Tale"]
    response = client.post("/v1/forget-requests", json=request_body(tiny_world, "p000", aliases=aliases))
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["n_aliases"] == 3
    shown = [
        client.get(f"/v1/forget-requests/{created['id']}").text,
        client.get("/v1/forget-requests").text,
        client.get(f"/v1/forget-requests/{created['id']}/events").text,
        client.get("/v1/audit").text,
    ]
    assert json.loads(shown[0])["n_aliases"] == 3
    assert all("Kamiro" not in text and "kamiro" not in text.lower() for text in shown)
    with transaction(make_session_factory(make_engine(pg_url))) as session:
        request = session.get(ForgetRequest, created["id"])
        assert request is not None and request.key is not None and request.qa_ciphertext is not None
        assert b"Kamiro" not in request.qa_ciphertext and request.n_aliases == 3
        master = client.app.state.master_key  # type: ignore[attr-defined]
        qa_pairs, stored = unpack_text(master.open(request.key.wrapped_key).decrypt(request.qa_ciphertext))
    assert stored == ["Kamiro Tale", "K. Tale", "Tale"] and len(qa_pairs) == created["n_qa_pairs"]
    # Purged with the QA pairs when the request ends; the count stays.
    assert client.post(f"/v1/forget-requests/{created['id']}/cancel").json()["n_aliases"] == 3
    with transaction(make_session_factory(make_engine(pg_url))) as session:
        request = session.get(ForgetRequest, created["id"])
        assert request is not None and request.qa_ciphertext is None and request.key is None


def test_a_request_without_aliases_counts_none(client: TestClient, tiny_world: World):
    response = client.post("/v1/forget-requests", json=request_body(tiny_world, "p001"))
    assert response.status_code == 202, response.text
    assert response.json()["n_aliases"] == 0


@pytest.mark.parametrize(
    ("aliases", "fragment"),
    [
        ([f"name {i}" for i in range(17)], "16"),
        (["Kamiro Tale", "   "], "aliases[1]"),
        (["x" * 101], "100"),
        (["Kamiro Tale", "-- .'"], "letter or digit"),
        (["Kamiro Tale", " kamiro TALE "], "repeats"),
        ("Kamiro Tale", "aliases"),
        ([3], "aliases.0"),
    ],
)
def test_bad_aliases_are_a_clear_4xx_and_store_nothing(client, tiny_world, pg_url, aliases, fragment):  # type: ignore[no-untyped-def]
    body = request_body(tiny_world, "p002", aliases=aliases)
    assert_error(client.post("/v1/forget-requests", json=body), 422, "invalid_request", fragment)
    assert stored_requests(pg_url) == 0


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
    # The name it writes is one of its aliases (the name, the surname): filed once.
    exported = json.loads(body)
    assert exported["name"] in exported["aliases"] and response.json()["n_aliases"] == len(exported["aliases"])
    exported.pop("aliases")
    response = client.post("/v1/forget-requests", json=exported)  # a name alone is an alias
    assert response.status_code == 202 and response.json()["n_aliases"] == 1, response.text
