"""The Celery app the training worker runs; its command line is `core.processes.worker_command()`."""

from __future__ import annotations

from core.queue import make_celery
from core.settings import get_settings

celery_app = make_celery(get_settings())

import workers.tasks  # noqa: E402,F401  (registers the tasks on the app)
