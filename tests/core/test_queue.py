"""The queue contract on kombu's SQLAlchemy broker (the embedded default): the train queue is declared once, ahead."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from core.queue import TRAIN_QUEUE, declare_train_queue, make_celery
from core.settings import Settings


def test_train_queue_is_declared_once_however_often_asked(tmp_path: Path):
    app = make_celery(Settings(data_dir=tmp_path))
    declare_train_queue(app)
    declare_train_queue(app)  # a second start-up finds the row and inserts none
    rows = sqlite3.connect(tmp_path / "broker.db").execute("SELECT name FROM kombu_queue").fetchall()
    assert rows == [(TRAIN_QUEUE,)]
