"""The embedded runner behind `lethe serve`: start-up checks, one supervised Celery worker (started again if it
exits) and the API in the foreground; the worker is stopped with the API, and dies with its parent."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import typer

from lethe.commands.common import built_world, err


def checkpoint_ready(settings) -> None:  # type: ignore[no-untyped-def]
    """The checkpoint the service will load is there and its retain set reads, or exit 2 saying what to mount."""
    model_path = settings.model_path
    if not (model_path / "config.json").is_file():
        err.print(
            f"LETHE_MODEL_PATH={model_path} holds no checkpoint (no config.json): mount the checkpoint directory "
            "there (compose: put it under ./models, mounted at /models) or unset LETHE_MODEL_PATH to "
            "serve the reference world's model",
            soft_wrap=True,  # a path broken over lines cannot be copied
        )
        raise typer.Exit(2)
    retain_ready(settings)
    err.print(f"serving the checkpoint at {model_path} with the retain set at {settings.retain_dir}", soft_wrap=True)


def retain_ready(settings) -> None:  # type: ignore[no-untyped-def]
    """The operator's retain folder reads and checks, or exit 2 saying what to fix (before the worker starts)."""
    if settings.retain_dir is None:
        return
    from unlearning.errors import UnlearningError
    from unlearning.retain import RetainFolder

    try:
        folder = RetainFolder(settings.retain_dir)
    except UnlearningError as exc:
        typer.echo(f"invalid setting LETHE_RETAIN_DIR: {exc}", err=True)  # unwrapped: it names a file and line
        raise typer.Exit(2) from None
    err.print(
        f"retain set {settings.retain_dir}: {len(folder.samples)} samples, {len(folder.canary_samples)} canary "
        f"questions, {len(folder.negatives)} negatives, {len(folder.benign())} benign photos"
    )


def master_key_ready(settings) -> None:  # type: ignore[no-untyped-def]
    """The master key exists (created once, before the API and the worker both read it) and says where it is."""
    from core.crypto import DataKeyError, master_key, master_key_file

    try:
        master_key(settings)
        where = "LETHE_MASTER_KEY" if settings.master_key is not None else str(master_key_file(settings))
    except DataKeyError as exc:
        raise typer.BadParameter(str(exc)) from exc
    err.print(f"master key from {where} (keep it out of the data dir's backups)")


def bootstrap_admin(settings) -> None:  # type: ignore[no-untyped-def]
    """Never run open: on a database without keys, create the first admin key and say where it came from."""
    from core.db import make_engine, make_session_factory, transaction
    from core.keys.repository import ApiKeyRepository

    with transaction(make_session_factory(make_engine(settings.resolved_database_url))) as session:
        configured = settings.bootstrap_admin_key.get_secret_value() if settings.bootstrap_admin_key else None
        token = ApiKeyRepository(session).ensure_admin(configured)
    if token is None:
        return
    if settings.bootstrap_admin_key:
        err.print("first admin key taken from LETHE_BOOTSTRAP_ADMIN_KEY")
    else:
        err.print(f"first admin key (shown once; store it): {token}")


def die_with_parent() -> None:
    """In the worker child: Linux sends it SIGTERM if `lethe serve` dies without stopping it (e.g. SIGKILL)."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop(proc: subprocess.Popen, grace: float = 30.0) -> None:  # type: ignore[type-arg]
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown: the running step finishes, the task is redelivered
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def prepare(settings) -> None:  # type: ignore[no-untyped-def]
    """Every start-up check and the one-time work (world, schema, first key), before any process starts."""
    from core.db import upgrade_database
    from core.queue import declare_train_queue, make_celery

    master_key_ready(settings)  # a misplaced key file is reported before the minutes-long build, not after
    if settings.model_path is None:
        retain_ready(settings)
    else:  # as compose's `world` service: the checkpoint and its retain set are there, or nothing starts
        checkpoint_ready(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.model_path is None:
        built_world(settings.data_dir, settings.world, with_retain_model=False)
    upgrade_database(settings.resolved_database_url)
    declare_train_queue(make_celery(settings))
    bootstrap_admin(settings)


class SupervisedWorker:
    """The embedded worker process, started again whenever it exits on its own (after a pause that doubles, up to
    30 s, while it keeps dying within a minute of starting), and stopped with the API."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.proc = self._start()
        self._watcher = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._watcher.start()

    def _start(self) -> subprocess.Popen:  # type: ignore[type-arg]
        self.started = time.monotonic()
        return subprocess.Popen(self.command, preexec_fn=die_with_parent)

    def _watch(self) -> None:
        young_deaths = 0
        while not self._stopping.wait(1.0):
            code = self.proc.poll()
            if code is None:
                continue
            young_deaths = young_deaths + 1 if time.monotonic() - self.started < 60 else 1
            pause = min(30.0, 2.0 ** (young_deaths - 1))
            # Requests are accepted meanwhile: their jobs wait on the broker for the next worker.
            err.print(f"worker (pid {self.proc.pid}) exited with code {code}; starting it again in {pause:.0f} s")
            if self._stopping.wait(pause):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.proc = self._start()
            err.print(f"worker started again (pid {self.proc.pid})")

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            stop(self.proc)
        self._watcher.join(5)


def run(host: str, port: int) -> None:
    """One supervised worker process and the API in the foreground, until Ctrl-C or SIGTERM stops both."""
    import os
    import sys

    import uvicorn

    from core.processes import API_APP, python_module, worker_command

    worker = SupervisedWorker(python_module(worker_command(f"lethe-embedded-{os.getpid()}@%h")))
    err.print(f"worker started (pid {worker.proc.pid}); API on http://{host}:{port} (docs at /docs)")
    # uvicorn shuts down gracefully, then re-raises the signal it caught: these handlers turn that into a
    # normal exit, so the worker is stopped below instead of being orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        # By import string: the command line starts the service but does not import it.
        uvicorn.run(API_APP, factory=True, host=host, port=port, log_level="info")
    except KeyboardInterrupt:
        pass
    finally:
        worker.stop()
        err.print("API and worker stopped")
