"""The inference engine: the frozen VLM loaded once, the whole active module set applied through the CAGUL gate.

The only place the server imports the science library. It fails closed: if any active module cannot be
loaded, nothing is answered (an answer without that module would reveal what a request asked to forget).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.db import transaction
from core.errors import InvalidRequestError, NotReadyError
from core.settings import Settings

log = logging.getLogger(__name__)
SERVABLE_METHODS = ("cagul",)


@dataclass
class _Pending:
    image: Image.Image
    question: str
    future: Future[tuple[str, int]]


class InferenceEngine:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self.gate: Any = None
        self.fingerprint: str | None = None
        self.served_version: int | None = None
        self.error: str | None = None
        self.loading_error: str | None = None
        self.load_seconds: float | None = None
        self._served_artifacts: dict[str, tuple[str, str]] = {}  # adapter id -> (path, registry checksum)
        self._artifacts_checked_at = float("-inf")
        self._pending: queue.Queue[_Pending] = queue.Queue()
        self._batcher: threading.Thread | None = None
        self._batcher_lock = threading.Lock()
        self.batch_sizes: deque[int] = deque(maxlen=10_000)

    # ---- lifecycle -----------------------------------------------------------------------------
    def load(self) -> None:
        """Load the base model once, then the active set; meant for a background thread at start-up."""
        from unlearning.backbones import load_backbone
        from unlearning.cagul.gate import CagulGate
        from unlearning.world import WORLD_PRESETS
        from unlearning.world.builder import serving_model_dir

        started = time.perf_counter()
        try:
            model_dir = serving_model_dir(
                self.settings.model_path, self.settings.data_dir, WORLD_PRESETS[self.settings.world]
            )
            backbone = load_backbone(model_dir, device=self.settings.device)
            backbone.freeze()
            self.fingerprint = backbone.fingerprint()
            self.gate = CagulGate(backbone, candidates=self.settings.gate_candidates)
        except Exception as exc:
            log.exception("base model failed to load")
            self.loading_error = f"the base model failed to load: {type(exc).__name__}: {exc}"
            return
        self.load_seconds = round(time.perf_counter() - started, 2)
        try:
            self.sync()
        except Exception:
            # Not ready until a later sync (on /readyz or a request) reaches the database.
            log.exception("loading the active set failed; will retry")

    @property
    def loaded(self) -> bool:
        return self.gate is not None

    @property
    def ready(self) -> bool:
        return self.loaded and self.error is None and self.served_version is not None

    def status(self) -> str:
        if self.loading_error:
            return self.loading_error
        if not self.loaded:
            return "the base model is still loading"
        if self.error:
            return self.error
        return "ready" if self.served_version is not None else "the active module set is not loaded yet"

    # ---- active set ----------------------------------------------------------------------------
    def sync(self) -> None:
        """Load the newest active set if it changed; stop answering while it cannot load or drifts from the rows."""
        if not self.loaded:
            return
        from unlearning.artifacts import load_module

        with self._sync_lock:
            with transaction(self.sessions) as session:
                current, active_ids = AdapterSetRepository(session).snapshot()
                version = current.version if current else 0
                ids = list(current.adapter_ids) if current else []
                drift = _drift(version, ids, active_ids)
                if drift is None and version == self.served_version and self.error is None:
                    return
                rows = {a.id: (a.path, a.sha256) for a in AdapterRepository(session).by_ids(ids)}
            if drift is not None:
                # Fail closed: the newest version lacks a change (or holds one undone) that the rows record.
                self._fail(f"the active adapter set cannot be served: {drift}")
                return
            modules = {}
            try:
                for adapter_id in ids:
                    if adapter_id not in rows:
                        raise RuntimeError(f"adapter {adapter_id} of set version {version} has no record")
                    path, digest = rows[adapter_id]
                    modules[adapter_id] = load_module(
                        path, str(self.fingerprint), device=self.settings.device, expected_digest=digest
                    )
                with self._lock:
                    self.gate.set_modules(modules)
                    self.served_version = version
                    self.error = None
                    self._served_artifacts = {aid: rows[aid] for aid in ids}
                log.info("serving adapter set version %s (%d modules)", version, len(modules))
            except Exception as exc:
                self._fail(f"active adapter set version {version} cannot be served: {exc}")

    def _fail(self, error: str) -> None:
        with self._lock:
            self.served_version = None
            self._served_artifacts = {}  # nothing is served; the next sync re-verifies whatever it loads
            changed, self.error = error != self.error, error
        if changed:  # sync runs per request: log a failure once, not once per refused request
            log.error(error)

    def check_artifacts(self) -> None:
        """Fail closed when a served module's manifest or files went missing or changed since it was loaded."""
        from unlearning.artifacts import verify_artifact
        from unlearning.errors import ArtifactIntegrityError

        now = time.monotonic()
        if now - self._artifacts_checked_at < self.settings.engine_sync_interval_s:
            return
        self._artifacts_checked_at = now
        for adapter_id, (path, digest) in list(self._served_artifacts.items()):
            try:
                verify_artifact(path, expected_digest=digest)
            except (ArtifactIntegrityError, OSError) as exc:
                self._fail(f"an active module cannot be served: adapter {adapter_id}: {exc}")
                return

    # ---- requests ------------------------------------------------------------------------------
    def answer(self, image: Image.Image, question: str) -> tuple[str, int]:
        """One answer, batched with whatever other requests arrive within the batching window."""
        self.check_artifacts()
        self.sync()
        if not self.ready:
            raise NotReadyError(f"not answering: {self.status()}")
        if self.settings.vqa_max_batch <= 1:
            return self._answer_batch([image], [question])[0]
        pending = _Pending(image, question, Future())
        self._ensure_batcher()
        self._pending.put(pending)
        return pending.future.result(timeout=120)

    def _answer_batch(self, images: list[Image.Image], questions: list[str]) -> list[tuple[str, int]]:
        with self._lock:
            if not self.ready:  # the set may have failed to load while these requests waited
                raise NotReadyError(f"not answering: {self.status()}")
            results = self.gate.answer(images, questions)
            version = int(self.served_version or 0)
        return [(r.answer, version) for r in results]

    def _ensure_batcher(self) -> None:
        with self._batcher_lock:
            if self._batcher is None or not self._batcher.is_alive():
                self._batcher = threading.Thread(target=self._batch_loop, name="vqa-batcher", daemon=True)
                self._batcher.start()

    def _batch_loop(self) -> None:
        """Collect requests for up to `vqa_batch_wait_s` (or `vqa_max_batch` of them), answer in one pass."""
        while True:
            batch = [self._pending.get()]
            deadline = time.monotonic() + self.settings.vqa_batch_wait_s
            while len(batch) < self.settings.vqa_max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(self._pending.get(timeout=remaining))
                except queue.Empty:
                    break
            self.batch_sizes.append(len(batch))
            try:
                answers = self._answer_batch([p.image for p in batch], [p.question for p in batch])
            except Exception as exc:
                for p in batch:
                    p.future.set_exception(exc)
                continue
            for p, answer in zip(batch, answers, strict=True):
                p.future.set_result(answer)

    def validate_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The request's method parameters, checked by the method's own config (unknown keys fail)."""
        from unlearning.errors import UnlearningError
        from unlearning.methods import METHODS, method_config

        if method not in SERVABLE_METHODS:
            if method in METHODS:
                raise InvalidRequestError(
                    f"method {method!r} fine-tunes the shared model (a benchmark baseline); the service trains "
                    f"per-request modules: use one of {list(SERVABLE_METHODS)}"
                )
            raise InvalidRequestError(f"method {method!r} unknown; use one of {list(SERVABLE_METHODS)}")
        try:
            method_config(method, params)
        except UnlearningError as exc:
            raise InvalidRequestError(f"params: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"params: a value has the wrong type ({exc})") from None
        return params


def _drift(version: int, served: list[str], active: list[str]) -> str | None:
    """Why set version `version` holding `served` is not the ACTIVE rows `active`, or None when it is."""
    if sorted(served) == sorted(active):
        return None
    missing, extra = sorted(set(active) - set(served)), sorted(set(served) - set(active))
    return (
        f"adapter set version {version} holds {_ids(served)} but the registry's active rows are {_ids(active)} "
        f"(active but not in the set: {_ids(missing)}; in the set but not active: {_ids(extra)})"
    )


def _ids(ids: list[str], shown: int = 8) -> str:
    listed = ", ".join(sorted(ids)[:shown])
    return f"[{listed}{f', ... {len(ids) - shown} more' if len(ids) > shown else ''}]"
