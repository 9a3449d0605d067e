"""The inference engine: the frozen VLM loaded once, answers through the CAGUL gate of the active set.

The only place the server imports the science library. A request reads in-memory state only: background
passes keep the set equal to the registry (`sync`) and re-verify artifacts (`check_integrity`). It fails
closed: while any active module is not loaded, nothing is answered (an answer without that module would reveal
what a request asked to forget).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.db import transaction
from core.errors import InvalidRequestError, NotReadyError
from core.settings import Settings
from server.inference.active_set import ActiveSet, EncoderCache, SetState
from server.inference.batcher import Batcher

log = logging.getLogger(__name__)
SERVABLE_METHODS = ("cagul",)
_CALIBRATION: dict[tuple[str, str], Any] = {}


class InferenceEngine:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        on_gated: Callable[[list[str | None]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        # Told, per answered batch, which module each row was routed to (None: none fired), for the metrics.
        self.on_gated = on_gated
        self.gate: Any = None
        self.active: ActiveSet | None = None
        self.fingerprint: str | None = None
        self.loading_error: str | None = None
        self.load_seconds: float | None = None
        self._sync_lock = threading.Lock()
        self.batcher: Batcher[tuple[Image.Image | None, str], tuple[str, int]] = Batcher(
            self._answer_batch, settings.vqa_max_batch, settings.vqa_batch_wait_s
        )

    # ---- lifecycle -----------------------------------------------------------------------------
    def load(self) -> None:
        """Load the base model once, then the active set; meant for a background thread at start-up."""
        from unlearning.backbones import load_backbone
        from unlearning.world import WORLD_PRESETS
        from unlearning.world.builder import serving_model_dir

        started = time.perf_counter()
        try:
            model_dir = serving_model_dir(
                self.settings.model_path, self.settings.data_dir, WORLD_PRESETS[self.settings.world]
            )
            backbone = load_backbone(model_dir, device=self.settings.device, dtype=self.settings.resolved_model_dtype)
            backbone.freeze()
            self.attach(backbone)
        except Exception as exc:
            log.exception("base model failed to load")
            self.loading_error = f"the base model failed to load: {type(exc).__name__}: {exc}"
            return
        self.load_seconds = round(time.perf_counter() - started, 2)
        try:
            self.sync()
        except Exception:
            # Not ready until a later sync pass reaches the database.
            log.exception("loading the active set failed; will retry")

    def attach(self, backbone: Any) -> None:
        """Serve with `backbone` (loaded and frozen): an empty gate until the first sync."""
        from unlearning.cagul.gate import CagulGate

        encoders = EncoderCache(self.settings.engine_encoder_cache, self.settings.device)
        gate = CagulGate(
            backbone, candidates=self.settings.gate_candidates, rewrites=encoders, known_names=self._known_names()
        )
        fingerprint = backbone.fingerprint()
        active = ActiveSet(gate, fingerprint, self.settings.device, encoders)
        active.calibration = self._calibration(backbone)
        active.system_fpr = self.settings.gate_system_fpr
        active.calibration_scale = self.settings.gate_calibration
        # The active set last: background passes and requests start using the engine once it is there.
        self.gate, self.fingerprint, self.active = gate, fingerprint, active

    def _calibration(self, backbone: Any) -> Any:
        """Visual tokens of the benign set (the operator's retain folder's, else the reference world's), which the
        set's thresholds are calibrated on."""
        if self.settings.gate_system_fpr <= 0:
            return None
        from unlearning.retain import RetainFolder
        from unlearning.world import WORLD_PRESETS, World
        from unlearning.world.builder import world_dir
        from unlearning.world.requests import world_benign_set

        root = self.settings.retain_dir or world_dir(self.settings.data_dir, WORLD_PRESETS[self.settings.world])
        key = (str(root.resolve()), backbone.fingerprint())
        if key not in _CALIBRATION:  # seconds to render and encode: once per process and model
            source = RetainFolder(root).benign() if self.settings.retain_dir else world_benign_set(World(root))
            _CALIBRATION[key] = backbone.tokens_of([im for im, _ in source])
        return _CALIBRATION[key]

    def _known_names(self) -> list[str]:
        """Names of people the model knows and no request forgets (the retain folder's names.txt, else the reference
        world's people): never taken for a misspelt forgotten name."""
        from unlearning.retain import read_names
        from unlearning.world import WORLD_PRESETS, World
        from unlearning.world.builder import world_dir
        from unlearning.world.requests import world_names

        if self.settings.retain_dir:
            return read_names(self.settings.retain_dir)
        root = world_dir(self.settings.data_dir, WORLD_PRESETS[self.settings.world])
        if not root.is_dir():  # fewer names known: more false fires, never a leak
            return []
        return world_names(World(root))

    @property
    def loaded(self) -> bool:
        return self.active is not None

    @property
    def ready(self) -> bool:
        return self.active is not None and self.active.state == SetState.SERVING

    @property
    def served_version(self) -> int | None:
        return self.active.version if self.active is not None else None

    @property
    def batch_sizes(self) -> Any:
        return self.batcher.sizes

    def status(self) -> str:
        if self.loading_error:
            return self.loading_error
        if self.active is None:
            return "the base model is still loading"
        if self.active.state == SetState.FAILED:
            return str(self.active.error)
        return "ready" if self.active.state == SetState.SERVING else "the active module set is not loaded yet"

    def public_status(self) -> str:
        """The state without the reasons, which name files and exceptions: for anonymous probes."""
        if self.loading_error:
            return "the base model failed to load; the reason is in the server log and shown to admin keys here"
        if self.active is not None and self.active.state == SetState.FAILED:
            return (
                "the active module set cannot be served; the reason is in the server log and shown to admin keys here"
            )
        return self.status()

    def close(self) -> None:
        """End the answering thread (at shutdown; a later answer starts it again)."""
        self.batcher.stop()

    # ---- background passes ---------------------------------------------------------------------
    def sync(self) -> None:
        """Make the served set the registry's newest version; fail closed if it drifts from the active rows."""
        if self.active is None:
            return
        with self._sync_lock:
            with transaction(self.sessions) as session:
                current, active_ids = AdapterSetRepository(session).snapshot()
                version = current.version if current else 0
                ids = list(current.adapter_ids) if current else []
                drift = _drift(version, ids, active_ids)
                if drift is None and version == self.active.target_version and self.active.complete:
                    return
                rows = {a.id: (a.path, a.sha256) for a in AdapterRepository(session).by_ids(ids)}
            if drift is not None:
                # The newest version lacks a change (or holds one undone) that the rows record.
                self.active.fail(f"the active adapter set cannot be served: {drift}")
                return
            if missing := [aid for aid in ids if aid not in rows]:
                self.active.fail(f"active adapter set version {version} cannot be served: {missing[0]} has no record")
                return
            _on_passing_thread(self.active.apply, version, {aid: rows[aid] for aid in ids})

    def check_integrity(self) -> None:
        """One background pass re-verifying the next few served artifacts against the registry's checksums."""
        if self.active is not None and self.active.loaded:  # dropping a failing artifact is torch work
            _on_passing_thread(self.active.check_integrity, self.settings.engine_integrity_batch)

    # ---- requests ------------------------------------------------------------------------------
    def answer(self, image: Image.Image | None, question: str) -> tuple[str, int]:
        """One answer (no image: a text-only question), batched with whatever other requests arrive meanwhile."""
        if not self.ready:
            raise NotReadyError(f"not answering: {self.status()}")
        return self.batcher.submit((image, question))

    def _answer_batch(self, items: Sequence[tuple[Image.Image | None, str]]) -> list[tuple[str, int]]:
        assert self.active is not None
        with self.active.lock:
            if not self.ready:  # the set may have failed while these requests waited
                raise NotReadyError(f"not answering: {self.status()}")
            # A row without an image stays None: the gate answers it from the text and checks its names.
            results = self.gate.answer([im for im, _ in items], [q for _, q in items])
            version = int(self.served_version or 0)
        if self.on_gated is not None:
            self.on_gated([r.module_id for r in results])
        return [(r.answer, version) for r in results]

    def validate_aliases(self, aliases: list[str]) -> list[str]:
        """The request's aliases, stripped, once the science library's rules accept them (else a 422 naming one)."""
        from unlearning.data import validate_aliases
        from unlearning.errors import UnlearningError

        try:
            validate_aliases(aliases)
        except UnlearningError as exc:
            raise InvalidRequestError(str(exc)) from None
        return [alias.strip() for alias in aliases]

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


def _on_passing_thread(work: Callable[..., None], *args: Any) -> None:
    """Run `work` on a thread that ends with it. A long-lived thread that once ran torch keeps an OpenMP team beside
    the answering thread's, and every answer took 1.6x as long (10 modules, tiny world, `lethe bench scale`: p50 29 ->
    47 ms, 17% of the timed photos gated; 31.8 ms with the set's loading on a passing thread)."""
    with ThreadPoolExecutor(1, thread_name_prefix="engine-pass") as thread:
        thread.submit(work, *args).result()


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
