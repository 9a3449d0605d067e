"""Bearer API keys: every endpoint names the scope it needs; `admin` holds every scope."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.db import transaction
from core.errors import ForbiddenError, UnauthorizedError
from core.keys.models import ADMIN
from core.keys.repository import ApiKeyRepository

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer lethe_...`")


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: tuple[str, ...]
    name: str = ""

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"


def _principal(request: Request, token: str) -> Principal | None:
    with transaction(request.app.state.sessions) as session:
        key = ApiKeyRepository(session).authenticate(token)
        return None if key is None else Principal(key.id, tuple(key.scopes), key.name)


def optional_admin(request: Request) -> bool:
    """Whether the request carries an admin key; never refuses (for endpoints open to all, fuller for admins)."""
    # Read from the header, not through `bearer`: the endpoint stays documented as open, which it is.
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    principal = _principal(request, token.strip())
    return principal is not None and ADMIN in principal.scopes


def authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """Any valid key, whatever its scopes (for a key to learn what it may do)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise UnauthorizedError("send an API key as `Authorization: Bearer <key>`")
    principal = _principal(request, credentials.credentials)
    if principal is None:
        raise UnauthorizedError("the API key is unknown or revoked")
    return principal


def require(scope: str) -> Callable[..., Principal]:
    def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        principal = authenticated(request, credentials)
        if scope not in principal.scopes and ADMIN not in principal.scopes:
            raise ForbiddenError(f"this API key lacks the {scope!r} scope")
        return principal

    check.__name__ = f"require_{scope.replace(':', '_')}"
    return check
