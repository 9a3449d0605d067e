"""`lethe serve`: the embedded service in the foreground (the runner is `lethe.runner`)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from lethe.commands.common import DataDir, Preset, checked_settings


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDir = None,
    world: Preset = None,
) -> None:
    """The embedded default: SQLite, a serverless broker, one worker process and the API, in the foreground."""
    from lethe import runner

    # The worker process reads the same settings from the environment.
    if data_dir is not None:
        os.environ["LETHE_DATA_DIR"] = str(data_dir)
    if world is not None:
        os.environ["LETHE_WORLD"] = world
    settings = checked_settings()
    runner.prepare(settings)
    runner.run(host, port)
