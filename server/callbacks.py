"""Deliver status-change callbacks from the outbox: HMAC-signed POSTs to a checked, pinned address, retried."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from core.callbacks.repository import CallbackRepository
from core.crypto import CallbackSigner
from core.db import transaction
from core.errors import InvalidRequestError
from core.settings import Settings

Resolver = Callable[[str, int], Sequence[str]]
# Shared address space (RFC 6598): carrier NAT, and where some clouds put their metadata service (100.100.100.200).
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
RESPONSE_BYTES_READ = 4096
TIMEOUT_S = 10.0
# Longer than one delivery can take (connect, send and first bytes each bounded by TIMEOUT_S): no second
# dispatcher takes a delivery while its POST is in flight.
CLAIM_LEASE = timedelta(seconds=6 * TIMEOUT_S)


class CallbackAddressError(httpx.TransportError):
    """The callback host resolves to an address the service must not connect to."""


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses, as the operating system resolves them."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo client, NAT64), which is where it leads."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    """Whether `address` is globally routable, and so is any IPv4 address it embeds."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    embedded = _embedded_ipv4(ip)
    if embedded is not None and not is_public_address(str(embedded)):
        return False
    if isinstance(ip, ipaddress.IPv4Address) and ip in SHARED_ADDRESS_SPACE:
        return False
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified
    )


def resolve_checked(host: str, port: int, resolver: Resolver, allow_private: bool) -> list[str]:
    """The host's addresses, each one public unless `allow_private`; CallbackAddressError otherwise."""
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = list(dict.fromkeys(resolver(host, port)))
        except (OSError, UnicodeError):
            raise CallbackAddressError(f"callback host {host!r} does not resolve") from None
    if not addresses:
        raise CallbackAddressError(f"callback host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            if not is_public_address(address):
                # One bad answer rejects the host: an attacker's name may mix public and internal addresses.
                raise CallbackAddressError(f"callback host {host!r} resolves to {address}, which is not public")
    return addresses


class PinnedTransport(httpx.BaseTransport):
    """Resolves each request's host once, checks every address, and connects only to a checked one.

    The request keeps its Host header and its TLS server name (SNI, and the name the certificate must match),
    so a DNS answer that changes between check and connect (rebinding) cannot redirect the connection.
    """

    def __init__(
        self,
        resolver: Resolver = system_resolver,
        allow_private: bool = False,
        inner: httpx.BaseTransport | None = None,
        verify: Any = True,
    ) -> None:
        self.resolver = resolver
        self.allow_private = allow_private
        # No kept-alive connections: one to an IP, verified for one host name, must not carry another's request.
        self.inner = inner or httpx.HTTPTransport(verify=verify, limits=httpx.Limits(max_keepalive_connections=0))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.raw_host.decode("ascii")
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        addresses = resolve_checked(host, port, self.resolver, self.allow_private)
        failure: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=address),
                headers=request.headers,  # the Host header of the original URL
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": host},
            )
            try:
                return self.inner.handle_request(pinned)
            except httpx.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    def close(self) -> None:
        self.inner.close()


def callback_client(settings: Settings, resolver: Resolver = system_resolver, **transport: Any) -> httpx.Client:
    """The HTTP client callbacks go out through: pinned, checked addresses, no redirects, no proxies from env."""
    return httpx.Client(
        transport=PinnedTransport(resolver, settings.callback_allow_private, **transport),
        timeout=TIMEOUT_S,
        follow_redirects=False,
        trust_env=False,
    )


def check_callback_url(url: str, allow_private: bool, resolver: Resolver = system_resolver) -> str:
    """An http(s) URL whose host resolves to public addresses only (unless allowed); checked again on delivery."""
    if len(url) > 2000:
        raise InvalidRequestError("callback_url is longer than 2000 characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidRequestError(f"callback_url is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise InvalidRequestError("callback_url must be an absolute http(s) URL")
    if not allow_private:
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            resolve_checked(parsed.raw_host.decode("ascii"), port, resolver, False)
        except CallbackAddressError as exc:
            raise InvalidRequestError(f"callback_url: {exc}; it must reach a public address") from None
    return url


def _post(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> str | None:
    """POST once; None on a 2xx, else what went wrong. The response body is never read past a few KB."""
    try:
        with client.stream("POST", url, content=body, headers=headers) as response:
            read = 0
            for chunk in response.iter_raw(RESPONSE_BYTES_READ):
                read += len(chunk)
                if read >= RESPONSE_BYTES_READ:
                    break  # the rest is dropped with the connection
            return None if response.is_success else f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"


def deliver_due_callbacks(
    sessions: sessionmaker[Session],
    signer: CallbackSigner,
    settings: Settings,
    client: httpx.Client,
    limit: int = 20,
) -> int:
    """One pass over due deliveries, each claimed, sent and recorded in transactions of its own; how many succeeded.

    No transaction is open while a POST is in flight: a slow receiver holds no row lock and no connection.
    """
    delivered = 0
    for _ in range(limit):
        with transaction(sessions) as session:
            claimed = CallbackRepository(session).claim_next(CLAIM_LEASE)
            if claimed is None:
                break
            delivery_id, url, payload = claimed.id, claimed.url, claimed.payload
        body = json.dumps(payload, sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "Lethe-Signature": signer.header(body, int(time.time())),
            "Lethe-Delivery": str(delivery_id),
        }
        error = _post(client, url, body, headers)
        with transaction(sessions) as session:
            CallbackRepository(session).record_attempt(
                delivery_id, error, timedelta(seconds=settings.callback_backoff_s), settings.callback_max_attempts
            )
        delivered += error is None
    return delivered
