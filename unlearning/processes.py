"""Run functions in fresh spawned processes, side by side, with their progress relayed to the parent.

A fresh process keeps jobs from sharing adapters, caches, the peak-memory high-water mark or thread pools.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from unlearning.errors import UnlearningError
from unlearning.progress import ProgressFn

JobFn = Callable[..., Any]  # called as fn(*args, progress=callback); what it reports reaches the parent's callback
Job = tuple[JobFn, tuple[Any, ...]]


def _child(conn: Connection, fn: JobFn, args: tuple[Any, ...], threads: int | None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress goes to the parent, which draws the bars
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        result = fn(*args, progress=lambda *values: conn.send(("progress", values)))
        conn.send(("done", result))
    except BaseException as exc:
        conn.send(("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc())))
    finally:
        conn.close()


def run_in_processes(
    jobs: dict[str, Job], progress: ProgressFn | None = None, threads: int | None = None
) -> dict[str, Any]:
    """Run every job at once, one process each; their progress relayed to `progress`; results by name."""
    ctx = mp.get_context("spawn")
    running: dict[Connection, tuple[str, Any]] = {}
    started: list[Any] = []
    results: dict[str, Any] = {}
    try:
        for name, (fn, args) in jobs.items():
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(child, fn, args, threads), daemon=True)
            proc.start()
            child.close()
            running[parent] = (name, proc)
            started.append(proc)
        while running:
            for conn in wait(list(running)):
                assert isinstance(conn, Connection)
                name, proc = running[conn]
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    proc.join(timeout=5)
                    raise UnlearningError(f"{name}: its process died (exit code {proc.exitcode})") from None
                if kind == "progress":
                    if progress is not None:
                        progress(*payload)
                    continue
                del running[conn]
                if kind == "error":
                    raise UnlearningError(f"{name} failed: {payload[0]}\n{payload[1]}")
                results[name] = payload
    finally:
        for _, proc in running.values():
            proc.kill()
        for proc in started:
            proc.join(timeout=30)
    return results
