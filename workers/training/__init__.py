"""One training job, by concept: `flow` runs it, `job` says what it works on, `reporter` tells the database how it
goes, `publish` verifies and publishes its module, `records` writes what it leaves behind."""

from workers.training.flow import run_training_job
from workers.training.job import job_config

__all__ = ["job_config", "run_training_job"]
