"""The `lethe` command: one group per module under `lethe.commands`, put together here."""

from __future__ import annotations

import typer

from core.settings import get_settings
from lethe.commands.bench import bench_app
from lethe.commands.certificates import verify_certificate_command
from lethe.commands.db import db_app
from lethe.commands.demo import demo
from lethe.commands.keys import keys_app
from lethe.commands.model import model_app
from lethe.commands.retain import retain_app
from lethe.commands.serve import serve
from lethe.commands.world import world_app

app = typer.Typer(help="Lethe: unlearning as a service for vision-language models.", no_args_is_help=True)


@app.callback()
def settings_as_the_command_starts() -> None:
    # One process can run many commands (the test runner does): each reads the environment it starts in.
    get_settings.cache_clear()


app.add_typer(world_app, name="world")
app.add_typer(bench_app, name="bench")
app.add_typer(model_app, name="model")
app.command()(demo)
app.add_typer(retain_app, name="retain")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.command("verify-certificate")(verify_certificate_command)
app.command()(serve)

if __name__ == "__main__":
    app()
