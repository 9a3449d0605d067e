"""The served module set, changed one adapter at a time, like an adapter cache (lorax's load/offload).

A change of the registry's set loads only the adapters that joined and drops only those that left; the swap
happens at once under the lock answers are served under, so no answer sees half a change. Encoders load on
first use and stay under an LRU bound. Integrity is checked when an adapter loads and afterwards by a
background pass, never on the request path; an adapter that fails it is dropped and the set fails closed
until it loads again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)
Artifact = tuple[str, str]  # (path, registry checksum)
JOIN_CHUNK = 256


class SetState(StrEnum):
    LOADING = "loading"
    SERVING = "serving"
    FAILED = "failed"


class EncoderCache:
    """Served modules' rewrites (encoder, refusal prefix), read from their artifacts on first use, least recently used
    dropped first."""

    def __init__(self, capacity: int, device: str) -> None:
        self.capacity = max(1, capacity)
        self.device = device
        self.loads = 0
        self._artifacts: dict[str, Artifact] = {}
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def register(self, adapter_id: str, artifact: Artifact) -> None:
        with self._lock:
            self._artifacts[adapter_id] = artifact
            self._cache.pop(adapter_id, None)

    def forget(self, adapter_id: str) -> None:
        with self._lock:
            self._artifacts.pop(adapter_id, None)
            self._cache.pop(adapter_id, None)

    def __len__(self) -> int:
        return len(self._cache)

    def __call__(self, adapter_id: str) -> Any:
        from unlearning.artifacts import load_rewrite

        with self._lock:
            if adapter_id in self._cache:
                self._cache.move_to_end(adapter_id)
                return self._cache[adapter_id]
            path, digest = self._artifacts[adapter_id]
            encoder = load_rewrite(path, digest, self.device)
            self.loads += 1
            self._put(adapter_id, encoder)
            return encoder

    def _put(self, adapter_id: str, encoder: Any) -> None:
        self._cache[adapter_id] = encoder
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)


class ActiveSet:
    """Which adapters the gate holds, at which registry version, and whether that version is served."""

    def __init__(self, gate: Any, fingerprint: str, device: str, encoders: EncoderCache) -> None:
        self.gate = gate
        self.fingerprint = fingerprint
        self.device = device
        self.encoders = encoders
        self.lock = threading.RLock()  # answers are served under it; a change swaps under it
        self.state = SetState.LOADING
        self.error: str | None = None
        self.version: int | None = None  # the registry version being served; None unless SERVING
        self.target_version: int | None = None
        self.target: dict[str, Artifact] = {}
        self.loaded: dict[str, Artifact] = {}
        self.loads = 0
        self._cursor = 0
        # Benign photos' visual tokens: after each change the set's thresholds are raised to meet `system_fpr`.
        self.calibration: Any = None
        self.system_fpr = 0.0
        self.calibration_scale = "cosine"

    @property
    def complete(self) -> bool:
        return self.state == SetState.SERVING and self.loaded == self.target

    def apply(self, version: int, target: dict[str, Artifact]) -> None:
        """Serve registry version `version` holding `target`: load what joined, drop what left, then swap.

        Joining modules are added in chunks as they load (only their gate: tens of KB each), so 10,000 of them
        never pass through memory at once; until the swap the old version is served, with some joined modules
        already gating (more forgetting, never less). What left is dropped at the swap, with the version.
        """
        from unlearning.artifacts import load_gate

        joined = {aid: art for aid, art in target.items() if self.loaded.get(aid) != art}
        with self.lock:  # a changed artifact is dropped first and loads again below
            for adapter_id in [a for a in joined if a in self.loaded]:
                self._drop(adapter_id)
        failure = None
        pending = list(joined.items())
        for start in range(0, len(pending), JOIN_CHUNK):
            gates = {}
            for adapter_id, (path, digest) in pending[start : start + JOIN_CHUNK]:  # outside the lock: disk reads
                try:
                    gates[adapter_id] = load_gate(path, self.fingerprint, digest, self.device)
                except Exception as exc:
                    failure = f"active adapter set version {version} cannot be served: adapter {adapter_id}: {exc}"
                    break
            with self.lock:
                for adapter_id, part in gates.items():
                    self.gate.add_discriminator(
                        adapter_id, part.discriminator, part.config, part.shape["identity_dim"], part.aliases
                    )
                    self.encoders.register(adapter_id, joined[adapter_id])
                    self.loaded[adapter_id] = joined[adapter_id]
                self.loads += len(gates)
            if failure is not None:
                break
        with self.lock:
            for adapter_id in [a for a in self.loaded if a not in target]:
                self._drop(adapter_id)
            if self.calibration is not None and self.system_fpr > 0:
                self.gate.calibrate(self.calibration, self.system_fpr, scale=self.calibration_scale)
            self.target_version, self.target = version, dict(target)
            if failure is None:
                self.state, self.version, self.error = SetState.SERVING, version, None
        if failure is not None:
            self.fail(failure)
        else:
            log.info("serving adapter set version %s (%d modules, %d joined)", version, len(target), len(joined))

    def fail(self, error: str) -> None:
        """Stop serving: every answer is refused until a later `apply` succeeds."""
        with self.lock:
            changed = error != self.error
            self.state, self.version, self.error = SetState.FAILED, None, error
        if changed:  # checks repeat every pass: log a failure once, not once per pass
            log.error(error)

    def check_integrity(self, count: int) -> None:
        """Re-verify the next `count` loaded artifacts (round robin); drop any that fails and stop serving."""
        from unlearning.artifacts import verify_artifact

        ids = sorted(self.loaded)
        if not ids:
            return
        for i in range(min(count, len(ids))):
            adapter_id = ids[(self._cursor + i) % len(ids)]
            path, digest = self.loaded.get(adapter_id, ("", ""))
            try:
                verify_artifact(path, expected_digest=digest)
            except Exception as exc:
                with self.lock:
                    if self.loaded.get(adapter_id) == (path, digest):
                        self._drop(adapter_id)
                self.fail(f"an active module cannot be served: adapter {adapter_id}: {exc}")
        self._cursor = (self._cursor + count) % len(ids)

    def _drop(self, adapter_id: str) -> None:
        self.gate.remove_module(adapter_id)
        self.encoders.forget(adapter_id)
        del self.loaded[adapter_id]
