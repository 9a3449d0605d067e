"""Deletion requests: validate everything before storing anything, queue the training job, cancel."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from celery import Celery
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.audit.repository import AuditRepository
from core.certificates.verify import new_salt, request_commitments
from core.crypto import MasterKey, seal_request
from core.db import transaction
from core.errors import ConflictError, InvalidRequestError, QueueUnavailableError
from core.forget_requests.models import TERMINAL, ForgetRequest, JobEvent, RequestStatus
from core.forget_requests.params import check_params
from core.forget_requests.repository import ForgetRequestRepository
from core.forget_requests.sealed_text import pack_text
from core.keys.repository import IdempotencyRepository
from core.queue import TrainPayload, enqueue_training
from core.settings import Settings
from server.callbacks import check_callback_url
from server.forget_requests.schemas import ForgetRequestIn, ForgetRequestOut
from server.images import check_image, decode_base64
from server.inference import InferenceEngine


class _DuplicateKey(Exception):
    """Another call stored a request under the same idempotency key first."""


def to_out(request: ForgetRequest, commitment_salt: str | None = None) -> ForgetRequestOut:
    return ForgetRequestOut(
        id=request.id,
        subject_label=request.subject_label,
        status=request.status,
        method=request.method,
        params=request.params,
        n_qa_pairs=request.n_qa_pairs,
        n_aliases=request.n_aliases,
        n_images=len(request.images),
        adapter_id=request.adapter_id,
        error=request.error,
        cancel_requested=request.cancel_requested,
        created_at=request.created_at,
        updated_at=request.updated_at,
        commitment_salt=commitment_salt,
    )


class ForgetRequestService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        celery: Celery,
        engine: InferenceEngine,
        master_key: MasterKey,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.celery = celery
        self.engine = engine
        self.master_key = master_key

    def _out(self, request: ForgetRequest, viewer: str | None) -> ForgetRequestOut:
        """The request as `viewer` (an API key id) sees it: the salt only for the key that filed it, until purged."""
        return to_out(request, self._salt(request) if viewer is not None and viewer == request.filed_by else None)

    def _salt(self, request: ForgetRequest) -> str | None:
        """The commitment salt, kept under the request's own data key: gone with that key at purge."""
        if request.key is None or request.commitment_salt_ciphertext is None:
            return None
        return self.master_key.open(request.key.wrapped_key).decrypt(request.commitment_salt_ciphertext).hex()

    def _check_text(self, name: str, value: str) -> str:
        if not value.strip():
            raise InvalidRequestError(f"{name} is blank")
        if len(value) > self.settings.max_text_chars:
            raise InvalidRequestError(
                f"{name} has {len(value)} characters; the limit is {self.settings.max_text_chars}"
            )
        return value

    def _replay(self, api_key_id: str, key: str, body_sha256: str) -> ForgetRequestOut | None:
        """The request an earlier call with this key created (same body), a 409 (other body), or None."""
        with transaction(self.sessions) as session:
            record = IdempotencyRepository(session).find(api_key_id, key)
            if record is None:
                return None
            if record.body_sha256 != body_sha256:
                raise ConflictError(f"Idempotency-Key {key!r} was already used with a different body")
            return self._out(ForgetRequestRepository(session).get(record.request_id), api_key_id)

    def create(
        self,
        body: ForgetRequestIn,
        image_files: list[bytes] | None = None,
        api_key_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[ForgetRequestOut, bool]:
        """Validate, store and queue a request; with an idempotency key, replays return the first (True)."""
        fields = body.model_dump()
        if image_files is not None:
            fields["images"] = [hashlib.sha256(data).hexdigest() for data in image_files]
        body_sha256 = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
        keyed = api_key_id is not None and idempotency_key is not None
        if keyed:
            if not idempotency_key.strip():  # type: ignore[union-attr]
                raise InvalidRequestError("Idempotency-Key is blank")
            replay = self._replay(str(api_key_id), str(idempotency_key), body_sha256)
            if replay is not None:
                return replay, True
        s = self.settings
        self._check_text("subject", body.subject)
        if len(body.qa_pairs) > s.max_qa_pairs:
            raise InvalidRequestError(f"{len(body.qa_pairs)} qa_pairs; the limit is {s.max_qa_pairs}")
        qa_pairs: list[dict[str, Any]] = []
        for i, qa in enumerate(body.qa_pairs):
            pair = {
                "question": self._check_text(f"qa_pairs[{i}].question", qa.question),
                "answer": self._check_text(f"qa_pairs[{i}].answer", qa.answer),
            }
            if qa.keyword is not None:
                pair["keyword"] = self._check_text(f"qa_pairs[{i}].keyword", qa.keyword)
            qa_pairs.append(pair)
        named = (
            [body.name]
            if body.name and body.name.strip().lower() not in {a.strip().lower() for a in body.aliases}
            else []
        )
        aliases = self.engine.validate_aliases(body.aliases + named)
        raw = image_files if image_files is not None else [decode_base64(v, i) for i, v in enumerate(body.images)]
        if not raw:
            raise InvalidRequestError("no images: send at least one photo of the person")
        if len(raw) > s.max_images:
            raise InvalidRequestError(f"{len(raw)} images; the limit is {s.max_images}")
        images = [check_image(data, i, s) for i, data in enumerate(raw)]
        params = self.engine.validate_method(body.method, check_params(body.params, s))
        if body.callback_url is not None:
            check_callback_url(body.callback_url, s.callback_allow_private)
        sealed = seal_request(
            self.master_key,
            body.subject,
            pack_text(qa_pairs, aliases),
            [(im.media_type, im.sha256, im.data) for im in images],
        )

        salt = new_salt()
        commitments = request_commitments(salt, body.subject, qa_pairs, [im.data for im in images], aliases)
        try:
            with transaction(self.sessions) as session:
                repo = ForgetRequestRepository(session)
                request = repo.create(
                    sealed,
                    method=body.method,
                    params=params,
                    qa_sha256=[hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest() for p in qa_pairs],
                    callback_url=body.callback_url,
                    status=RequestStatus.VALIDATING,
                    n_aliases=len(aliases),
                )
                request.filed_by = api_key_id
                request.commitments = commitments
                request.commitment_salt_ciphertext = self.master_key.open(sealed.wrapped_key).encrypt(salt)
                # Queued before the task is sent: a fast worker must never see an older status than its own.
                repo.set_status(request, RequestStatus.QUEUED)
                job = repo.create_job(request)
                request_id, job_id = request.id, job.id
                AuditRepository(session).record(
                    f"key:{api_key_id}" if api_key_id else "anonymous",
                    "forget_request.create",
                    request_id,
                    n_images=len(images),
                    n_qa_pairs=len(qa_pairs),
                    n_aliases=len(aliases),
                    image_sha256=[im.sha256 for im in images],
                )
                if keyed:
                    try:
                        IdempotencyRepository(session).add(
                            str(api_key_id), str(idempotency_key), body_sha256, request_id
                        )
                    except IntegrityError:
                        raise _DuplicateKey from None  # a concurrent call with this key won: keep nothing of ours
        except _DuplicateKey:
            replay = self._replay(str(api_key_id), str(idempotency_key), body_sha256)
            if replay is None:
                raise ConflictError("a concurrent request with the same Idempotency-Key failed; retry") from None
            return replay, True
        try:
            enqueue_training(self.celery, TrainPayload(request_id=request_id, job_id=job_id))
        except Exception as exc:
            with transaction(self.sessions) as session:
                repo = ForgetRequestRepository(session)
                repo.set_status(repo.get(request_id), RequestStatus.FAILED, f"could not queue the training job: {exc}")
            raise QueueUnavailableError(f"the job queue is unavailable ({type(exc).__name__}); retry later") from exc
        return self.get(request_id).model_copy(update={"commitment_salt": salt.hex()}), False

    def get(self, request_id: str, viewer: str | None = None) -> ForgetRequestOut:
        with transaction(self.sessions) as session:
            return self._out(ForgetRequestRepository(session).get(request_id), viewer)

    def page(
        self, limit: int, offset: int, status: str | None, label: str | None = None
    ) -> tuple[list[ForgetRequestOut], int]:
        with transaction(self.sessions) as session:
            items, total = ForgetRequestRepository(session).page(limit=limit, offset=offset, status=status, label=label)
            return [to_out(r) for r in items], total

    def events(self, request_id: str, after: int, limit: int) -> list[JobEvent]:
        with transaction(self.sessions) as session:
            repo = ForgetRequestRepository(session)
            repo.get(request_id)
            return repo.events(request_id, after=after, limit=limit)

    def report(self, request_id: str) -> tuple[str, dict[str, Any] | None]:
        with transaction(self.sessions) as session:
            request = ForgetRequestRepository(session).get(request_id)
            return request.status, request.report

    def cancel(self, request_id: str, actor: str) -> ForgetRequestOut:
        with transaction(self.sessions) as session:
            repo = ForgetRequestRepository(session)
            request = repo.get(request_id, for_update=True)
            if request.status in TERMINAL:
                raise ConflictError(f"request {request_id} is already {request.status}; nothing to cancel")
            request.cancel_requested = True
            AuditRepository(session).record(actor, "forget_request.cancel", request_id, status=request.status)
            if request.status in (RequestStatus.VALIDATING, RequestStatus.QUEUED):
                repo.set_status(request, RequestStatus.CANCELLED, "cancelled before training started")
            else:
                repo.add_event(request.id, kind="status", status=request.status, message="cancellation requested")
        return self.get(request_id)
