"""Deliver status-change callbacks from the outbox: HMAC-signed POSTs, retried with exponential backoff."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy.orm import Session, sessionmaker

from core.callbacks.repository import CallbackRepository
from core.crypto import CallbackSigner
from core.db import transaction
from core.errors import InvalidRequestError
from core.settings import Settings


def check_callback_url(url: str, allow_private: bool) -> str:
    """An http(s) URL whose host is public (no loopback, private or link-local address, unless allowed)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError("callback_url must be an absolute http(s) URL")
    if len(url) > 2000:
        raise InvalidRequestError("callback_url is longer than 2000 characters")
    if allow_private:
        return url
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except (OSError, UnicodeError):
        raise InvalidRequestError(f"callback_url host {parts.hostname!r} does not resolve") from None
    for address in addresses:
        ip = ipaddress.ip_address(str(address).split("%")[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast:
            raise InvalidRequestError(f"callback_url host {parts.hostname!r} is not a public address")
    return url


def deliver_due_callbacks(
    sessions: sessionmaker[Session], signer: CallbackSigner, settings: Settings, client: httpx.Client
) -> int:
    """One pass over due deliveries; how many succeeded."""
    delivered = 0
    with transaction(sessions) as session:
        repo = CallbackRepository(session)
        for delivery in repo.due(limit=20):
            body = json.dumps(delivery.payload, sort_keys=True).encode()
            headers = {
                "Content-Type": "application/json",
                "Lethe-Signature": signer.header(body, int(time.time())),
                "Lethe-Delivery": str(delivery.id),
            }
            error = None
            try:
                if not settings.callback_allow_private:
                    check_callback_url(delivery.url, False)  # DNS may have changed since the request was filed
                response = client.post(delivery.url, content=body, headers=headers)
                if not response.is_success:
                    error = f"HTTP {response.status_code}"
            except (httpx.HTTPError, InvalidRequestError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            repo.record_attempt(
                delivery, error, timedelta(seconds=settings.callback_backoff_s), settings.callback_max_attempts
            )
            delivered += error is None
    return delivered
