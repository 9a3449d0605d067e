"""Thin Celery tasks: ids in, everything else from the database."""

from __future__ import annotations

import logging

from celery.signals import worker_init

from core.queue import TRAIN_TASK, TrainPayload
from core.settings import get_settings
from unlearning.errors import UnlearningError
from workers.app import celery_app
from workers.runtime import retain_source, runtime
from workers.training import run_training_job

log = logging.getLogger(__name__)


@worker_init.connect
def check_retain_set(**_: object) -> None:
    """Read and check the retain set as the worker starts: a bad folder stops it here, saying what to fix, instead
    of failing every job it takes."""
    settings = get_settings()
    if settings.retain_dir is None:
        return  # the reference world: built by `lethe serve` or `lethe world build` before any job needs it
    try:
        retain_source(settings)
    except UnlearningError as exc:
        log.critical("the retain set cannot be used: %s", exc)
        raise SystemExit(f"lethe worker: the retain set cannot be used: {exc}") from None


@celery_app.task(name=TRAIN_TASK)
def train_forget_request(request_id: str, job_id: str) -> str:
    return run_training_job(runtime(), TrainPayload(request_id=request_id, job_id=job_id))
