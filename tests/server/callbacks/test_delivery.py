"""Status callbacks: every status change POSTed to `callback_url`, HMAC-signed, retried with backoff."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from core.callbacks.repository import CallbackRepository
from core.crypto import CallbackSigner
from tests.helpers import app_client, request_body, service_settings, wait_for
from unlearning.world import World


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []
    failures_left = 2  # the first two deliveries fail: retries must follow

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.failures_left > 0:
            Receiver.failures_left -= 1
            self.send_response(500)
        else:
            Receiver.received.append((self.headers["Lethe-Signature"], body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_status_changes_are_signed_delivered_and_retried(
    tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str
):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    settings = service_settings(
        tiny_world,
        tmp_path,
        pg_url,
        redis_url,
        callback_allow_private=True,
        callback_backoff_s=0.2,
        callback_secret="s3cret",
    )
    try:
        with app_client(settings) as client:
            request_id = client.post(
                "/v1/forget-requests", json=request_body(tiny_world, "p000", callback_url=url)
            ).json()["id"]
            client.post(f"/v1/forget-requests/{request_id}/cancel")
            wait_for(lambda: len(Receiver.received) >= 4, 30, 0.1, "the callbacks")
            time.sleep(0.5)
    finally:
        server.shutdown()

    signer, now = CallbackSigner(b"s3cret"), int(time.time())
    payloads = []
    for header, body in Receiver.received:
        assert signer.verify(header, body, now), header
        assert not CallbackSigner(b"wrong").verify(header, body, now)
        payloads.append(json.loads(body))
    assert {p["request_id"] for p in payloads} == {request_id}
    # validating, queued, cancelled, and the purge note on the terminal state: each exactly once.
    assert sorted((p["status"], p["message"] or "") for p in payloads) == sorted(
        [
            ("validating", ""),
            ("queued", ""),
            ("cancelled", "cancelled before training started"),
            ("cancelled", "uploaded data purged"),
        ]
    )
    engine = create_engine(pg_url)
    with Session(engine) as session:
        deliveries = CallbackRepository(session).for_request(request_id)
        assert all(d.delivered_at is not None for d in deliveries)
        assert sum(d.attempts for d in deliveries) == len(deliveries) + 2  # two failures, each retried
    engine.dispose()


def test_callback_url_must_be_public_http(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str):
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url)
    with app_client(settings) as client:
        for bad, fragment in (("ftp://example.com/x", "http(s)"), ("http://127.0.0.1:9/x", "public address")):
            response = client.post("/v1/forget-requests", json=request_body(tiny_world, "p000", callback_url=bad))
            assert response.status_code == 422 and fragment in response.json()["detail"], response.text
