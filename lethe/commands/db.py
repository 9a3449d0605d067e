"""`lethe db`: the service's database schema."""

from __future__ import annotations

import typer

from core.settings import get_settings
from lethe.commands.common import err

db_app = typer.Typer(help="The service's database.")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to the database of LETHE_DATABASE_URL (default: SQLite in the data dir)."""
    from core.db import upgrade_database

    url = get_settings().resolved_database_url
    upgrade_database(url)
    err.print(f"database at {url.split('@')[-1]} is at the newest schema")
