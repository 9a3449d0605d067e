"""The Celery app the training worker runs, and nothing else: `workers.main` registers the tasks on it."""

from __future__ import annotations

from core.queue import make_celery
from core.settings import get_settings

celery_app = make_celery(get_settings())
