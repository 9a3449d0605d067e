"""The registry rows `lethe bench scale` writes: enrolled requests and their adapters, activated N at a time as the
service activates them, and the time until the server serves each set version."""

from __future__ import annotations

import time
from typing import Any

import httpx

from core.adapters.models import AdapterState
from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.crypto import MasterKey, seal_request
from core.db import transaction
from core.forget_requests.models import RequestStatus
from core.forget_requests.repository import ForgetRequestRepository
from core.keys.repository import ApiKeyRepository

TOKEN = "lethe_0123456789ab_scale-bench-key-not-secret"


def register(sessions: Any, modules: list, count: int) -> list[str]:
    """Adapter rows for `count` enrolled modules, all inactive, with the request rows they belong to."""
    ids = []
    with transaction(sessions) as session:
        requests, adapters = ForgetRequestRepository(session), AdapterRepository(session)
        ApiKeyRepository(session).create("scale bench", ["admin"], token=TOKEN)
        master = MasterKey(MasterKey.generate())  # enrolled requests carry no uploads anyone reads back
        for i, (path, digest) in enumerate(modules[:count]):
            request = requests.create(
                seal_request(master, f"enrolled {i}", b"[]", []),
                method="cagul",
                params={},
                qa_sha256=[],
                callback_url=None,
                status=RequestStatus.ACTIVE,
            )
            adapter = adapters.create(
                request_id=request.id,
                method="cagul",
                state=AdapterState.INACTIVE,
                path=path,
                sha256=digest,
                base_fingerprint="",
                trainable_params=0,
                report={},
            )
            ids.append(adapter.id)
        AdapterSetRepository(session).record("scale bench: none active")
    return ids


def deactivate_all(sessions: Any) -> None:
    with transaction(sessions) as session:
        sets, adapters = AdapterSetRepository(session), AdapterRepository(session)
        sets.lock()
        for adapter in adapters.active():
            adapters.set_state(adapter, AdapterState.INACTIVE)
        sets.record("scale bench: none active")


def set_active(sessions: Any, client: httpx.Client, adapter_ids: list[str], n: int) -> float:
    """Make exactly the first `n` adapters active in one set version; seconds until the server serves it."""
    return served_after(client, activate_first(sessions, adapter_ids, n), timeout=3600)


def activate_first(sessions: Any, adapter_ids: list[str], n: int) -> int:
    """Make exactly the first `n` adapters active in one set version; its number."""
    with transaction(sessions) as session:
        sets, adapters = AdapterSetRepository(session), AdapterRepository(session)
        sets.lock()
        first = set(adapter_ids[:n])
        for adapter in adapters.by_ids(adapter_ids):
            wanted = AdapterState.ACTIVE if adapter.id in first else AdapterState.INACTIVE
            if adapter.state != wanted:
                adapters.set_state(adapter, wanted)
        return int(sets.record(f"scale bench: {n} active").version)


def one_more_activation(sessions: Any, client: httpx.Client, adapter_ids: list[str], n: int) -> float | None:
    """Seconds from one activation's commit until the server serves its set version, at `n` active.

    Below the registered count one more adapter joins (N+1), then leaves; at it, the last one leaves and its
    re-activation (N-1 to N) is timed.
    """
    if not adapter_ids:
        return None
    extra = adapter_ids[n] if n < len(adapter_ids) else adapter_ids[n - 1]
    on, off = (AdapterState.ACTIVE, True), (AdapterState.INACTIVE, False)
    steps = [on, off] if n < len(adapter_ids) else [off, on]
    timed = None
    for state, measured in steps:
        with transaction(sessions) as session:
            sets, adapters = AdapterSetRepository(session), AdapterRepository(session)
            sets.lock()
            adapters.set_state(adapters.get(extra), state)
            version = sets.record(f"scale bench: one {state}").version
        seconds = served_after(client, version, timeout=120)
        timed = seconds if measured else timed
    return timed


def served_after(client: httpx.Client, version: int, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if client.get("/readyz").json().get("adapter_set_version") == version:
            return round(time.perf_counter() - started, 3)
        time.sleep(0.01)
    raise RuntimeError(f"the server did not serve set version {version} within {timeout} s")
