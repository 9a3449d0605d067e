"""`lethe keys`: API keys (stored hashed, each with scopes) and the rotation of the master key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from core.settings import get_settings
from lethe.commands.common import err

keys_app = typer.Typer(help="API keys: stored hashed, each with scopes (forget:write, forget:read, vqa, admin).")


def _sessions():  # type: ignore[no-untyped-def]
    from core.db import make_engine, make_session_factory, upgrade_database

    url = get_settings().resolved_database_url
    upgrade_database(url)
    return make_session_factory(make_engine(url))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what holds the key.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: forget:write, forget:read, vqa, admin.")],
) -> None:
    """Create a key and print its token (shown once; only its hash is stored)."""
    from core.audit.repository import AuditRepository
    from core.db import transaction
    from core.errors import InvalidRequestError
    from core.keys.repository import ApiKeyRepository

    try:
        with transaction(_sessions()) as session:
            key, token = ApiKeyRepository(session).create(name, [x.strip() for x in scopes.split(",") if x.strip()])
            key_id = key.id
            AuditRepository(session).record("cli", "api_key.create", key_id, scopes=key.scopes)
    except InvalidRequestError as exc:
        raise typer.BadParameter(exc.detail, param_hint="--scopes") from exc
    err.print(f"key {key_id} created; the token is shown once:")
    typer.echo(token)


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List keys (never their tokens)."""
    from core.db import transaction
    from core.keys.repository import ApiKeyRepository

    with transaction(_sessions()) as session:
        rows: list[dict[str, Any]] = [
            {
                "id": k.id,
                "name": k.name,
                "scopes": k.scopes,
                "created_at": k.created_at.isoformat(),
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in ApiKeyRepository(session).all()
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        typer.echo(
            f"{r['id']}  {','.join(r['scopes']):<32} {'revoked' if r['revoked_at'] else 'active':<8} {r['name']}"
        )


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `lethe keys list`).")]) -> None:
    """Revoke a key: it stops working at once."""
    from core.audit.repository import AuditRepository
    from core.db import transaction
    from core.errors import NotFoundError
    from core.keys.repository import ApiKeyRepository

    try:
        with transaction(_sessions()) as session:
            ApiKeyRepository(session).revoke(key_id)
            AuditRepository(session).record("cli", "api_key.revoke", key_id)
    except NotFoundError as exc:
        raise typer.BadParameter(exc.detail) from exc
    err.print(f"key {key_id} revoked")


@keys_app.command("rotate-data-key")
def keys_rotate_data_key(
    old_key_file: Annotated[
        Path | None,
        typer.Option(help="The master key the data keys are wrapped under now; default: the configured one."),
    ] = None,
    new_key_file: Annotated[
        Path | None,
        typer.Option(
            help="The new master key, generated there if absent; default: a new key replaces the configured key file."
        ),
    ] = None,
) -> None:
    """Re-wrap every request's data key under a new master key (payloads untouched); stop the service first."""
    import os

    from core.audit.repository import AuditRepository
    from core.crypto import DataKeyError, MasterKey, master_key, master_key_at, master_key_file
    from core.db import transaction
    from core.forget_requests.repository import ForgetRequestRepository

    settings = get_settings()
    try:
        if old_key_file is not None:
            old = MasterKey(old_key_file.read_bytes().strip())
        elif settings.master_key is None and not master_key_file(settings).is_file():
            raise DataKeyError(f"no master key at {master_key_file(settings)}: give --old-key-file")
        else:
            old = master_key(settings)
        replaced = None
        if new_key_file is None:
            if settings.master_key is not None:
                raise DataKeyError("LETHE_MASTER_KEY is set: give --new-key-file, then set LETHE_MASTER_KEY to it")
            replaced = master_key_file(settings)
            new_key_file = replaced.with_name(replaced.name + ".new")  # kept until the re-wrap is committed
        new = master_key_at(new_key_file, settings)
        with transaction(_sessions()) as session:
            moved = ForgetRequestRepository(session).rewrap_keys(old, new)
            AuditRepository(session).record("cli", "master_key.rotate", old=old.key_id, new=new.key_id, rewrapped=moved)
    except (DataKeyError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if replaced is not None:
        os.replace(new_key_file, replaced)
        new_key_file = replaced
    err.print(
        f"{moved} data keys re-wrapped from master key {old.key_id} to {new.key_id} (in {new_key_file}); restart "
        "the API and workers with it, then destroy every copy of the old key: backups taken before now open nothing"
    )
