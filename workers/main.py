"""The training worker's entry: the app with its tasks registered; `core.processes.worker_command()` starts it."""

from __future__ import annotations

import workers.tasks  # noqa: F401  (registers the tasks on the app)
from workers.app import celery_app

__all__ = ["celery_app"]
