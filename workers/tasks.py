"""Thin Celery tasks: ids in, everything else from the database."""

from __future__ import annotations

from core.queue import TRAIN_TASK, TrainPayload
from workers.app import celery_app
from workers.runtime import runtime
from workers.training import run_training_job


@celery_app.task(name=TRAIN_TASK)
def train_forget_request(request_id: str, job_id: str) -> str:
    return run_training_job(runtime(), TrainPayload(request_id=request_id, job_id=job_id))
