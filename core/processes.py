"""The command lines of the service's processes, written once: `lethe serve`, docker-compose.yml (checked against
these by its test) and the system tests start the same API and the same training worker."""

from __future__ import annotations

import sys

from core.queue import TRAIN_QUEUE

# By import string: whoever starts the API does not import it.
API_APP = "server.app:create_app"
CELERY_APP = "workers.main:celery_app"


def api_command(host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    """The API under uvicorn (the app factory builds everything from the environment's settings)."""
    return ["uvicorn", "--factory", API_APP, "--host", host, "--port", str(port)]


def worker_command(name: str | None = None) -> list[str]:
    """A training worker on the train queue: one job at a time in the worker process itself, which keeps the frozen
    model loaded between jobs (prefetch 1 and acks_late are the app's settings); `name` is its Celery node name."""
    command = ["celery", "-A", CELERY_APP, "worker", "-Q", TRAIN_QUEUE, "--pool=solo", "--concurrency=1"]
    return [*command, "--loglevel=INFO", *(["-n", name] if name else [])]


def python_module(command: list[str]) -> list[str]:
    """`command` as `python -m ...` under this interpreter: the same virtualenv, whatever is on PATH."""
    return [sys.executable, "-m", *command]
