"""The service's edges: body limits as bytes arrive, the key checked before a body is read, /readyz tells no paths."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from core.settings import Settings
from server.app import create_app
from server.body_limit import BodyLimitMiddleware
from tests.helpers import ADMIN_TOKEN, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _settings(tmp_path: Path, pg_url: str, redis_url: str, **extra: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=pg_url,
        broker_url=redis_url,
        bootstrap_admin_key=ADMIN_TOKEN,  # type: ignore[arg-type]
        **extra,
    )


@pytest.fixture()
def served(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[str]:
    """The real app under uvicorn (no model loaded), with a 4 KB body limit; its base URL."""
    app = create_app(_settings(tmp_path, pg_url, redis_url, max_body_bytes=4096), load_model=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, 0.05, "uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def _chunks(total: int, size: int = 1024) -> Iterator[bytes]:
    yield b'{"question": "who?", "image": "'
    for _ in range(total // size):
        yield b"A" * size
    yield b'"}'


def test_a_chunked_body_over_the_limit_is_refused_with_413(served: str):
    with httpx.Client(base_url=served, headers=AUTH, timeout=30) as client:
        response = client.post("/v1/vqa", content=_chunks(64 * 1024), headers={"Content-Type": "application/json"})
        assert response.request.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in response.request.headers
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "payload_too_large"
        assert "4096 bytes (LETHE_MAX_BODY_BYTES)" in response.json()["detail"]
        # Under the limit, the same route parses the body (and answers that the model is not loaded).
        small = client.post("/v1/vqa", content=_chunks(1024), headers={"Content-Type": "application/json"})
        assert small.status_code != 413, small.text


def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_read(served: str):
    host, port = served.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/forget-requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000000\r\n\r\n"
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = conn.recv(65536)
            if not data:
                break
            reply += data
    assert reply.startswith(b"HTTP/1.1 413"), reply
    detail = json.loads(reply.split(b"\r\n\r\n", 1)[1])["detail"]
    assert "100000000000 bytes" in detail and "LETHE_MAX_IMAGES" in detail


def test_the_middleware_never_hands_the_application_more_than_the_limit():
    seen: list[int] = []

    async def greedy(scope: Scope, receive: Receive, send: Send) -> None:
        total = 0
        try:
            while True:
                message = await receive()
                total += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
        finally:
            seen.append(total)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"parsed"})

    chunks = [{"type": "http.request", "body": b"x" * 1000, "more_body": True} for _ in range(100)]
    sent: list[Message] = []

    async def receive() -> Message:
        return chunks.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/vqa", "headers": []}
    asyncio.run(BodyLimitMiddleware(greedy, lambda s: (2500, "LETHE_MAX_BODY_BYTES"))(scope, receive, send))
    assert seen == [2000] and len(chunks) == 97  # the read that passed the limit raised instead of returning
    assert sent[0]["status"] == 413 and b"larger than 2500 bytes" in sent[1]["body"]
    assert all(m.get("body") != b"parsed" for m in sent)


class ReadRecorder:
    """Wraps an ASGI app and counts the body messages it reads, per request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.reads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.reads += 1
            return message

        await self.app(scope, counted if scope["type"] == "http" else receive, send)


def test_vqa_reads_no_body_before_the_key_is_checked(tmp_path: Path, pg_url: str, redis_url: str):
    recorder = ReadRecorder(create_app(_settings(tmp_path, pg_url, redis_url), load_model=False))
    body = {"image": "AAAA", "question": "who?"}
    with TestClient(recorder) as client:
        for headers in ({}, {"Authorization": "Bearer lethe_000000000000_not-a-real-key-at-all"}):
            recorder.reads = 0
            response = client.post("/v1/vqa", json=body, headers=headers)
            assert response.status_code == 401 and recorder.reads == 0, response.text
        response = client.post("/v1/vqa", json=body, headers=AUTH)
        assert response.status_code == 422 and "images[0]" in response.json()["detail"] and recorder.reads == 1
        wrong_type = client.post("/v1/vqa", content=b"image=x", headers={**AUTH, "Content-Type": "text/plain"})
        assert wrong_type.status_code == 422 and "application/json" in wrong_type.json()["detail"]


def test_readyz_tells_anonymous_callers_no_filesystem_paths(tmp_path: Path, pg_url: str, redis_url: str):
    missing = tmp_path / "secret-layout" / "checkpoints" / "llava"
    settings = _settings(tmp_path, pg_url, redis_url, model_path=missing, retain_dir=tmp_path / "retain")
    with TestClient(create_app(settings)) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        wait_for(lambda: engine.loading_error is not None, 60, 0.1, "the load to fail")
        anonymous = client.get("/readyz")
        admin = client.get("/readyz", headers=AUTH)
    assert anonymous.status_code == admin.status_code == 503
    assert str(tmp_path) in admin.json()["detail"]  # what an operator needs, behind a key
    detail = anonymous.json()["detail"]
    assert "failed to load" in detail and str(tmp_path) not in anonymous.text
    assert not re.search(r"(^|[\s'\"(:])/[\w.-]", detail), detail
