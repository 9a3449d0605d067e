"""Celery workers: train a deletion request's module, verify it, publish it (state in the database)."""
