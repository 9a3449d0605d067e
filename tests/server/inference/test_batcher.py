"""The batcher answers every request on its one loop thread, batched or not."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.inference.batcher import Batcher


@pytest.mark.parametrize("max_batch", [1, 4])
def test_every_request_is_answered_on_one_thread_whatever_the_batch_size(max_batch: int):
    # Torch on many request threads keeps an OpenMP team per thread, and each slows the others' answers.
    ran_on: set[int] = set()

    def run(items: Sequence[int]) -> list[int]:
        ran_on.add(threading.get_ident())
        return [2 * i for i in items]

    batcher = Batcher(run, max_batch=max_batch, wait_s=0.01)
    with ThreadPoolExecutor(8) as callers:
        answers = list(callers.map(batcher.submit, range(40)))
    assert answers == [2 * i for i in range(40)]
    assert len(ran_on) == 1 and threading.get_ident() not in ran_on
    assert sum(batcher.sizes) == 40 and max(batcher.sizes) <= max_batch
    batcher.stop()


def test_stop_ends_the_loop_thread_after_its_batch_and_a_later_request_starts_another():
    started = threading.Event()
    release = threading.Event()

    loops: list[threading.Thread] = []

    def run(items: Sequence[int]) -> list[int]:
        loops.append(threading.current_thread())
        started.set()
        release.wait(5)
        return list(items)

    batcher = Batcher(run, max_batch=4, wait_s=0.0)
    with ThreadPoolExecutor(1) as caller:
        answer = caller.submit(batcher.submit, 7)
        assert started.wait(5)
        stopping = threading.Thread(target=batcher.stop)
        stopping.start()
        release.set()
        stopping.join(5)
        assert answer.result(5) == 7  # the batch running at the stop is answered
    assert not loops[0].is_alive()
    assert batcher.submit(8) == 8 and loops[1] is not loops[0]  # a new loop thread
    batcher.stop()
    assert not loops[1].is_alive()
