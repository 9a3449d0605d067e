"""The queue contract between the API and the workers: names, payloads and the Celery app's settings."""

from __future__ import annotations

from celery import Celery
from pydantic import BaseModel, ConfigDict

from core.settings import Settings

TRAIN_QUEUE = "train"
TRAIN_TASK = "lethe.train_forget_request"


class TrainPayload(BaseModel):
    """Ids only: the worker reloads everything else from the database, the source of truth."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str
    job_id: str


def make_celery(settings: Settings) -> Celery:
    """The Celery app both sides use; the worker registers the tasks on it."""
    broker = settings.resolved_broker_url
    app = Celery("lethe", broker=broker)
    app.conf.update(
        task_default_queue=TRAIN_QUEUE,
        task_routes={TRAIN_TASK: {"queue": TRAIN_QUEUE}},
        task_ignore_result=True,  # state lives in the database, never in a result backend
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # a worker killed mid-training gets its task redelivered
        worker_prefetch_multiplier=1,
        # The budget holds inside the worker (checked between steps, `train_time_limit_s`): the solo pool ignores
        # Celery's limits, which stay a backstop, a little later, for pools that enforce them.
        task_soft_time_limit=settings.train_time_limit_s + 60,
        task_time_limit=settings.train_time_limit_s + 120,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    if broker.startswith(("redis", "rediss", "sqs")):
        # Longer than any job, or a running task is redelivered to a second worker mid-training.
        # (Kombu's SQLAlchemy transport hands transport options to create_engine, which rejects this one.)
        app.conf.broker_transport_options = {"visibility_timeout": settings.train_time_limit_s + 600}
    return app


def declare_train_queue(app: Celery) -> None:
    """Create the train queue on the broker once, before the API and the worker start: kombu's SQLAlchemy transport
    creates a queue's row on first use, and two processes doing so at once fail its UNIQUE constraint (the embedded
    worker died of it at start-up, 1 start in 6 here, and requests queued with no one to run them)."""
    with app.connection_for_write() as connection:
        app.amqp.queues[TRAIN_QUEUE].bind(connection.default_channel).declare()


def enqueue_training(app: Celery, payload: TrainPayload) -> None:
    app.send_task(TRAIN_TASK, kwargs=payload.model_dump(), queue=TRAIN_QUEUE)
