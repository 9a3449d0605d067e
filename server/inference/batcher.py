"""Requests that arrive together answered in one pass: the loop apart from the model it feeds."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: Future[Out]


class Batcher(Generic[In, Out]):
    """Collects items for up to `wait_s` (or `max_batch` of them) and answers them with one `run(items)` call.

    Every call runs on the one loop thread, batched or not (`max_batch` 1): torch on many request threads keeps an
    OpenMP team alive per thread, and each slowed the others' answers (docs/scale.md, "The N = 10 gap explained").
    """

    def __init__(self, run: Callable[[Sequence[In]], list[Out]], max_batch: int, wait_s: float) -> None:
        self.run = run
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.sizes: deque[int] = deque(maxlen=10_000)
        # Each loop thread reads a queue of its own, so a stop (None) reaches the thread it was meant for.
        self._pending: queue.Queue[_Pending[In, Out] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, item: In, timeout_s: float = 120) -> Out:
        pending: _Pending[In, Out] = _Pending(item, Future())
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._pending = queue.Queue()
                self._thread = threading.Thread(
                    target=self._loop, args=(self._pending,), name="vqa-batcher", daemon=True
                )
                self._thread.start()
            self._pending.put(pending)
        return pending.future.result(timeout=timeout_s)

    def stop(self, timeout_s: float = 15) -> None:
        """End the loop thread once it has answered what was queued (a later `submit` starts another): a thread
        that ran torch keeps an OpenMP team that slows every other thread's torch until it ends."""
        with self._start_lock:
            thread, self._thread = self._thread, None
            if thread is None or not thread.is_alive():
                return
            self._pending.put(None)
        thread.join(timeout_s)

    def _loop(self, pending: queue.Queue[_Pending[In, Out] | None]) -> None:
        while True:
            batch, stopping = self._collect(pending)
            if batch:
                self.sizes.append(len(batch))
                try:
                    results = self.run([p.item for p in batch])
                except Exception as exc:
                    for p in batch:
                        p.future.set_exception(exc)
                else:
                    for p, result in zip(batch, results, strict=True):
                        p.future.set_result(result)
            if stopping:
                return

    def _collect(self, pending: queue.Queue[_Pending[In, Out] | None]) -> tuple[list[_Pending[In, Out]], bool]:
        """The next batch, and whether the loop ends after it."""
        first = pending.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = pending.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False
