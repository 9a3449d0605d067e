"""ORM models of a deletion request and the jobs that train it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, new_id, utcnow


class RequestStatus(StrEnum):
    VALIDATING = "validating"
    QUEUED = "queued"
    TRAINING = "training"
    VERIFYING = "verifying"
    ACTIVE = "active"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected_verification"
    # The reference model does not reveal the request's answers on held-out variants: no module to train or serve.
    NOTHING_TO_FORGET = "nothing_to_forget"
    REVOKED = "revoked"


STATUSES = tuple(str(s) for s in RequestStatus)
# No training will run any more for a request in one of these: its uploaded data is purged on entry.
TERMINAL = frozenset(
    {
        RequestStatus.ACTIVE,
        RequestStatus.FAILED,
        RequestStatus.CANCELLED,
        RequestStatus.REJECTED,
        RequestStatus.NOTHING_TO_FORGET,
        RequestStatus.REVOKED,
    }
)
IN_FLIGHT = frozenset({RequestStatus.VALIDATING, RequestStatus.QUEUED, RequestStatus.TRAINING, RequestStatus.VERIFYING})


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # The job reached an outcome (published, rejected, nothing to forget, cancelled); FAILED: it could not.
    FINISHED = "finished"
    FAILED = "failed"


class ForgetRequest(Base):
    __tablename__ = "forget_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # The name itself is only in `subject_ciphertext`; the label is what lists show.
    subject_label: Mapped[str] = mapped_column(String(64))
    subject_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(32), index=True)
    method: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]]
    # Uploaded data is kept encrypted under the request's own data key, and only until the request is terminal;
    # then the key is destroyed and only hashes remain. `qa_ciphertext` seals the QA pairs and the subject's
    # aliases together (core.forget_requests.sealed_text); of the aliases only their count stays readable.
    qa_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    qa_sha256: Mapped[list[Any]]
    n_qa_pairs: Mapped[int]
    n_aliases: Mapped[int] = mapped_column(default=0)
    purged_at: Mapped[datetime | None]
    callback_url: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
    report: Mapped[dict[str, Any] | None]
    adapter_id: Mapped[str | None] = mapped_column(String(36))
    # The API key that filed the request: the only one shown the commitment salt.
    filed_by: Mapped[str | None] = mapped_column(String(36))
    # Salted commitments (core.certificates.verify) the certificate states instead of reversible bare hashes.
    commitments: Mapped[dict[str, Any] | None]
    # The salt, encrypted, until the purge: afterwards only the requester, who was given it, can open a commitment.
    commitment_salt_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    images: Mapped[list[RequestImage]] = relationship(
        back_populates="request", order_by="RequestImage.position", cascade="all, delete-orphan"
    )
    key: Mapped[RequestKey | None] = relationship(cascade="all, delete-orphan")


class RequestKey(Base):
    """A request's data key, wrapped by the master key; deleting the row is the erasure (crypto-shredding)."""

    __tablename__ = "request_keys"

    # A table of its own, written once and deleted once: as a column of forget_requests, every status update
    # would leave one more copy of the wrapped key in PostgreSQL's dead row versions.
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id", ondelete="CASCADE"), primary_key=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RequestImage(Base):
    __tablename__ = "request_images"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]
    media_type: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)

    request: Mapped[ForgetRequest] = relationship(back_populates="images")


class Job(Base):
    """One training attempt of a request; a redelivered task resumes the same job."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    deliveries: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None]
    # When the task was last sent: the reconciler re-sends a job that is silent past this for too long.
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    """What operators watch: status changes and training progress, in order."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_request_seq", "request_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(16))  # "status" or "progress"
    status: Mapped[str | None] = mapped_column(String(32))
    phase: Mapped[str | None] = mapped_column(String(32))
    step: Mapped[int | None]
    total: Mapped[int | None]
    loss: Mapped[float | None]
    eta_seconds: Mapped[float | None]
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
