"""All SQL about API keys and idempotency records."""

from __future__ import annotations

import hmac

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import fetch_one, utcnow
from core.errors import InvalidRequestError
from core.keys.models import ADMIN, SCOPES, ApiKey, IdempotencyRecord
from core.keys.tokens import TOKEN_FORMAT, new_token, split_token, token_sha256


class ApiKeyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create(self, name: str, scopes: list[str], token: str | None = None) -> tuple[ApiKey, str]:
        """A new key; the token is returned once and never stored."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise InvalidRequestError(f"scopes {unknown or scopes} invalid; choose from {', '.join(SCOPES)}")
        token = token or new_token()
        prefix = split_token(token)
        if prefix is None:
            raise InvalidRequestError(f"a key looks like {TOKEN_FORMAT}")
        key = ApiKey(prefix=prefix, token_sha256=token_sha256(token), name=name, scopes=sorted(set(scopes)))
        self.session.add(key)
        self.session.flush()
        return key, token

    def authenticate(self, token: str) -> ApiKey | None:
        prefix = split_token(token)
        if prefix is None:
            return None
        key = self.session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()
        if key is None or key.revoked_at is not None:
            return None
        return key if hmac.compare_digest(key.token_sha256, token_sha256(token)) else None

    def all(self) -> list[ApiKey]:
        return list(self.session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all())

    def any_exist(self) -> bool:
        return self.session.scalars(select(ApiKey.id).limit(1)).first() is not None

    def ensure_admin(self, token: str | None) -> str | None:
        """On a database with no keys, create the first admin key (from `token` if given); its token, else None."""
        if self.any_exist():
            return None
        return self.create("bootstrap admin", [ADMIN], token)[1]

    def revoke(self, key_id: str) -> ApiKey:
        key = fetch_one(self.session, ApiKey, key_id, "API key")
        key.revoked_at = key.revoked_at or utcnow()
        return key


class IdempotencyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def find(self, api_key_id: str, key: str) -> IdempotencyRecord | None:
        return self.session.get(IdempotencyRecord, (api_key_id, key))

    def add(self, api_key_id: str, key: str, body_sha256: str, request_id: str) -> None:
        self.session.add(
            IdempotencyRecord(api_key_id=api_key_id, key=key, body_sha256=body_sha256, request_id=request_id)
        )
        self.session.flush()
