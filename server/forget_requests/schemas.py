"""Request and response bodies of /v1/forget-requests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from server.schemas import StrictModel


class QAPairIn(StrictModel):
    question: str = Field(min_length=1, description="A question the model must stop answering.")
    answer: str = Field(min_length=1, description="The private answer it currently gives.")
    keyword: str | None = Field(
        default=None, description="Optional: the private value itself (e.g. a phone number), for leak checks."
    )


class ForgetRequestIn(StrictModel):
    subject: str = Field(min_length=1, description="A label for the person to forget.")
    qa_pairs: list[QAPairIn] = Field(min_length=1, description="Question/answer pairs to forget.")
    images: list[str] = Field(min_length=1, description="Photos of the person: base64-encoded PNG or JPEG files.")
    aliases: list[str] = Field(
        default_factory=list,
        description="Optional: the person's names and aliases "
        '(e.g. ["Kamiro Tale", "K. Tale"]), at most 16, each 1 to 100 characters with a letter or digit, no two '
        "the same ignoring case. Once the module is active, a "
        "`/v1/vqa` question that names one of them is refused, with a photo or without one: case, spacing, "
        "possessives and a misspelling of one letter do not get past it. Sealed with the QA pairs under the "
        "request's data key and purged with them; responses show only their count (`n_aliases`).",
    )
    name: str | None = Field(
        default=None,
        description="Optional: the person's name (as `lethe world export` writes it); one more alias, under the "
        "same rules, unless `aliases` already holds it.",
    )
    method: str = Field(default="cagul", description="Unlearning method; the service trains per-request modules.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Method parameters a request may set, each within the operator's bounds (the 422 of any other "
        "lists them); the refusal text is operator configuration, not a parameter.",
    )
    callback_url: str | None = Field(default=None, description="Optional URL told about status changes.")


class ForgetRequestOut(BaseModel):
    id: str
    subject_label: str = Field(
        description="HMAC of the subject under the request's own data key: never the name, and unlinkable to it "
        "once the key is destroyed (when the request ends)."
    )
    status: str
    method: str
    params: dict[str, Any]
    n_qa_pairs: int
    n_aliases: int = Field(description="How many aliases were filed; the names themselves are never shown.")
    n_images: int
    adapter_id: str | None
    error: str | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    commitment_salt: str | None = Field(
        default=None,
        description="Hex salt of the certificate's commitments: shown only to the API key that filed the request, "
        "and only until its uploads are purged (on activation). Keep it to open the commitments later.",
    )


class EventOut(BaseModel):
    id: int
    kind: str
    status: str | None
    phase: str | None
    step: int | None
    total: int | None
    loss: float | None
    eta_seconds: float | None
    message: str | None
    created_at: datetime


class ReportOut(BaseModel):
    id: str
    status: str
    report: dict[str, Any] | None
