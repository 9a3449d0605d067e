"""Schema pieces every domain shares: the error shape and pages."""

from __future__ import annotations

import uuid
from typing import Annotated, Generic, TypeVar

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import InvalidRequestError

T = TypeVar("T")
UUIDPath = Annotated[uuid.UUID, Path(description="A UUID.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Rows to skip.")]


def check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    if value is not None and value not in choices:
        raise InvalidRequestError(f"{name} {value!r} unknown; choose one of {', '.join(choices)}")
    return value


def validation_message(exc: ValidationError) -> str:
    """Every problem of a body a route parses itself, each with where it is."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class StrictModel(BaseModel):
    """Request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    error: str = Field(description="Stable machine-readable code, e.g. invalid_request, not_found.")
    detail: str = Field(description="What went wrong and what to fix.")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "The body could not be parsed (not JSON)",
        401: "No API key, or an unknown or revoked one",
        403: "The API key lacks the scope",
        404: "Not found",
        409: "Conflict",
        413: "Payload too large",
        422: "Invalid request",
        503: "Not ready",
    }.items()
}
