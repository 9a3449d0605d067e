"""Callbacks cannot reach inside: public addresses only, the checked one connected to, bodies capped, commits apart."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from core.callbacks.repository import CallbackRepository
from core.crypto import CallbackSigner
from core.db import make_engine, make_session_factory, transaction
from core.errors import InvalidRequestError
from core.settings import Settings
from server.callbacks import (
    CallbackAddressError,
    PinnedTransport,
    callback_client,
    check_callback_url,
    deliver_due_callbacks,
    is_public_address,
)
from tests.helpers import request_row

# Each a way to name an address inside: private, loopback, link-local (cloud metadata), shared (RFC 6598, another
# cloud's metadata), reserved, multicast, and IPv6 forms that carry such an IPv4 address.
INSIDE = [
    "127.0.0.1",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.100.100.200",
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "240.0.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:100.64.0.1",
    "::ffff:10.0.0.1",
    "::127.0.0.1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "2002:6440:1::",  # 6to4 of 100.64.0.1
    "2002:a00:1::",  # 6to4 of 10.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
]
PUBLIC = ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "2002:5db8:d822::1"]


class Recorder(httpx.BaseTransport):
    """Stands in for the network: records where each request would connect, answers 204."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(204)


class Rebinding:
    """A DNS answer that changes: public the first time, the metadata address after."""

    def __init__(self, first: str, later: str) -> None:
        self.answers = [first]
        self.later = later
        self.calls = 0

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        return [self.answers.pop(0) if self.answers else self.later]


@pytest.mark.parametrize("address", INSIDE)
def test_every_form_of_an_inside_address_is_refused(address: str):
    assert not is_public_address(address)
    literal = f"[{address}]" if ":" in address else address
    with pytest.raises(InvalidRequestError, match="not public"):
        check_callback_url(f"http://{literal}/hook", False)
    recorder = Recorder()
    transport = PinnedTransport(lambda h, p: [address], inner=recorder)
    with httpx.Client(transport=transport) as client, pytest.raises(CallbackAddressError, match="not public"):
        client.post("http://hooks.example/hook", content=b"{}")
    assert recorder.requests == []


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str):
    assert is_public_address(address)
    assert check_callback_url("https://hooks.example/x", False, lambda h, p: [address]) == "https://hooks.example/x"


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f000001", "localhost"])
def test_numeric_and_named_spellings_of_loopback_are_refused(host: str):
    with pytest.raises(InvalidRequestError, match="not public"):
        check_callback_url(f"http://{host}:8080/hook", False)


def test_one_inside_answer_among_public_ones_refuses_the_host():
    with pytest.raises(InvalidRequestError, match=r"169\.254\.169\.254"):
        check_callback_url("http://hooks.example/", False, lambda h, p: ["93.184.216.34", "169.254.169.254"])


def test_a_rebinding_answer_cannot_move_the_connection():
    """Checked at filing (public), then the name rebinds to the metadata address: nothing connects there."""
    resolver, recorder = Rebinding("93.184.216.34", "169.254.169.254"), Recorder()
    url = "https://hooks.example:8443/hook"
    assert check_callback_url(url, False, resolver) == url
    transport = PinnedTransport(resolver, inner=recorder)
    with httpx.Client(transport=transport) as client, pytest.raises(CallbackAddressError, match=r"169\.254\.169\.254"):
        client.post(url, content=b"{}")
    assert recorder.requests == [] and resolver.calls == 2

    # Public at the delivery's own resolution, private after it: the one answer checked is the one connected to.
    resolver = Rebinding("93.184.216.34", "169.254.169.254")
    with httpx.Client(transport=PinnedTransport(resolver, inner=recorder)) as client:
        assert client.post(url, content=b"{}").status_code == 204
    assert resolver.calls == 1
    (sent,) = recorder.requests
    assert sent.url.host == "93.184.216.34" and sent.url.port == 8443
    assert sent.headers["Host"] == "hooks.example:8443" and sent.extensions["sni_hostname"] == "hooks.example"


class Listener(BaseHTTPRequestHandler):
    """Records which address each POST arrived on and its Host header."""

    seen: ClassVar[list[tuple[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        Listener.seen.append((self.server.server_address[0], self.headers["Host"]))  # type: ignore[index]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(address: str, handler: type[BaseHTTPRequestHandler], port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_connection_goes_to_the_resolved_address_not_a_later_answer():
    """Real sockets: the name answers 127.0.0.1 once, 127.0.0.2 after; only 127.0.0.1 is ever connected to."""
    first = _serve("127.0.0.1", Listener)
    port = first.server_address[1]
    second = _serve("127.0.0.2", Listener, port)
    Listener.seen = []
    resolver = Rebinding("127.0.0.1", "127.0.0.2")
    try:
        with httpx.Client(transport=PinnedTransport(resolver, allow_private=True)) as client:
            assert client.post(f"http://hooks.test:{port}/hook", content=b"{}").status_code == 204
    finally:
        first.shutdown()
        second.shutdown()
    assert Listener.seen == [("127.0.0.1", f"hooks.test:{port}")] and resolver.calls == 1


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_names_the_original_host_while_connecting_to_the_pinned_address(tmp_path: Path):
    """The certificate names hooks.test only: the pinned connection to 127.0.0.1 verifies it and sends its SNI."""
    cert, key = _certificate(tmp_path, "hooks.test")
    names: list[str | None] = []
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server_context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,func-returns-value]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Listener.seen = []
    client_context = ssl.create_default_context(cafile=str(cert))
    port = server.server_address[1]
    try:
        transport = PinnedTransport(lambda h, p: ["127.0.0.1"], allow_private=True, verify=client_context)
        with httpx.Client(transport=transport) as client:
            assert client.post(f"https://hooks.test:{port}/hook", content=b"{}").status_code == 204
            other = PinnedTransport(lambda h, p: ["127.0.0.1"], allow_private=True, verify=client_context)
            with httpx.Client(transport=other) as wrong, pytest.raises(httpx.ConnectError, match="certificate"):
                wrong.post(f"https://other.test:{port}/hook", content=b"{}")
    finally:
        server.shutdown()
    assert names[0] == "hooks.test" and Listener.seen == [("127.0.0.1", f"hooks.test:{port}")]


def _deliveries(pg_url: str, urls: list[str]) -> sessionmaker[Session]:
    sessions = make_session_factory(make_engine(pg_url))
    with transaction(sessions) as session:
        request = request_row(session, "queued")
        for i, url in enumerate(urls):
            CallbackRepository(session).enqueue(request.id, url, {"n": i})
    return sessions


class Endless(BaseHTTPRequestHandler):
    """Answers 200 with a body that never ends; counts what it managed to send."""

    sent: ClassVar[int] = 0
    stop = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"x" * 65536
        try:
            while not Endless.stop.is_set():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                Endless.sent += len(chunk)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_a_huge_response_body_is_not_read(pg_url: str):
    server = _serve("127.0.0.1", Endless)
    sessions = _deliveries(pg_url, [f"http://127.0.0.1:{server.server_address[1]}/hook"])
    settings = Settings(callback_allow_private=True)
    outcome: list[int] = []
    with callback_client(settings) as client:
        worker = threading.Thread(
            target=lambda: outcome.append(deliver_due_callbacks(sessions, CallbackSigner(b"k"), settings, client))
        )
        worker.start()
        worker.join(15)
        Endless.stop.set()
        worker.join(15)
    server.shutdown()
    assert outcome == [1], "the delivery kept reading an endless response body"
    assert Endless.sent < 64 * 2**20  # what the sockets' buffers took before the client hung up
    with sessions() as session:
        undelivered = text("SELECT count(*) FROM callback_deliveries WHERE delivered_at IS NULL")
        assert session.execute(undelivered).scalar_one() == 0


class Gate(BaseHTTPRequestHandler):
    """The first POST answers at once; the second waits until released."""

    arrived: ClassVar[list[bytes]] = []
    release = threading.Event()
    second_waiting = threading.Event()

    def do_POST(self) -> None:
        Gate.arrived.append(self.rfile.read(int(self.headers["Content-Length"])))
        if len(Gate.arrived) == 2:
            Gate.second_waiting.set()
            Gate.release.wait(20)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _locked_rows(sessions: sessionmaker[Session]) -> Any:
    """Every delivery row locked from another transaction without waiting (fails if one is held)."""
    with sessions() as session:
        rows = session.execute(text("SELECT id FROM callback_deliveries ORDER BY id FOR UPDATE NOWAIT")).all()
        session.rollback()
        return rows


def test_each_delivery_commits_on_its_own_and_no_lock_is_held_during_a_post(pg_url: str):
    server = _serve("127.0.0.1", Gate)
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    sessions = _deliveries(pg_url, [url, url, url])
    settings = Settings(callback_allow_private=True)
    with callback_client(settings) as client:
        worker = threading.Thread(target=deliver_due_callbacks, args=(sessions, CallbackSigner(b"k"), settings, client))
        worker.start()
        try:
            assert Gate.second_waiting.wait(20)
            assert len(_locked_rows(sessions)) == 3  # the POST in flight holds no row lock
            with sessions() as session:
                done = session.execute(text("SELECT id, delivered_at FROM callback_deliveries ORDER BY id")).all()
            assert done[0].delivered_at is not None and done[1].delivered_at is None  # the first one is committed
            # The one in flight is claimed: a second dispatcher does not send it again meanwhile.
            with transaction(sessions) as session:
                claimed = CallbackRepository(session).claim_next(dt.timedelta(seconds=60))
                assert claimed is not None and claimed.id == done[2].id
        finally:
            Gate.release.set()
            worker.join(30)
            server.shutdown()
    with sessions() as session:
        attempts = session.execute(text("SELECT attempts, delivered_at FROM callback_deliveries ORDER BY id")).all()
    assert [a.attempts for a in attempts] == [1, 1, 0] and Gate.arrived[:2] == [b'{"n": 0}', b'{"n": 1}']


@pytest.fixture(autouse=True)
def _reset_handlers() -> Iterator[None]:
    Endless.sent, Endless.stop = 0, threading.Event()
    Gate.arrived, Gate.release, Gate.second_waiting = [], threading.Event(), threading.Event()
    yield
