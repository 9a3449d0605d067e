"""`lethe verify-certificate`: check an erasure certificate against a pinned key, offline or live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from core.certificates.verify import Check


def verify_certificate_command(
    path: Annotated[Path, typer.Argument(help="A certificate as returned by GET .../certificate (JSON).")],
    public_key: Annotated[
        Path,
        typer.Option(
            "--public-key",
            help="The pinned signing key, obtained once over a channel you trust: a PEM file, the JSON of "
            "/.well-known/lethe-signing-key, or the base64 raw key.",
        ),
    ],
    server: Annotated[
        str | None,
        typer.Option(help="Also ask SERVER whether the certificate still holds; its answer must carry the pinned key."),
    ] = None,
    salt: Annotated[str | None, typer.Option(help="The hex salt the requester was given when filing.")] = None,
    subject: Annotated[
        str | None, typer.Option(help="The subject label as filed: checked against the commitment (needs --salt).")
    ] = None,
    alias: Annotated[
        list[str] | None,
        typer.Option(help="A name filed as an alias, exactly as filed: must be among the commitments (repeatable)."),
    ] = None,
) -> None:
    """Check an erasure certificate against a pinned key: exit 0 valid, 1 invalid, 3 revoked, 4 expired."""
    from core.certificates.verify import Verdict, check_certificate, load_public_key

    if (salt is None) != (subject is None):
        raise typer.BadParameter("give --salt and --subject together")
    if alias and salt is None:
        raise typer.BadParameter("--alias needs --salt and --subject")
    try:
        key = load_public_key(public_key.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"--public-key {public_key}: {exc}") from exc
    try:
        signed = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc
    check = check_certificate(signed, key)
    if check.verdict is Verdict.INVALID:
        _verdict_exit(check)
    doc = signed["certificate"]
    if salt is not None and subject is not None:
        _check_subject(doc, salt, subject, alias or [])
    if server is not None and check.verdict is not Verdict.REVOKED:
        live = _live_status(server, doc, key)
        if live.verdict is not Verdict.VALID:
            _verdict_exit(live)
    if check.verdict is not Verdict.VALID:
        _verdict_exit(check)
    confirmed = f"; status confirmed by {server}" if server else "; status not checked live (give --server)"
    typer.echo(
        f"valid: erasure of request {doc['request_id']} by adapter {doc.get('adapter_id')}, key {signed['key_id']}, "
        f"{check.message}{confirmed}{'; subject matches' if subject is not None else ''}"
        f"{'; every alias given matches' if alias else ''}"
    )


_VERDICT_EXIT_CODES = {"valid": 0, "invalid": 1, "revoked": 3, "expired": 4}


def _verdict_exit(check: Check) -> NoReturn:
    typer.echo(check.message, err=True)
    raise typer.Exit(_VERDICT_EXIT_CODES[str(check.verdict)])


def _check_subject(doc: dict[str, Any], salt: str, subject: str, aliases: list[str]) -> None:
    """Exit 1 unless `subject` and each of `aliases` under `salt` are what the certificate committed to."""
    import hmac

    from core.certificates.verify import commitment

    try:
        salt_bytes = bytes.fromhex(salt)
    except ValueError as exc:
        raise typer.BadParameter(f"--salt is not hex: {exc}") from exc
    commitments = doc.get("commitments") or {}

    def opens(committed: Any, value: str) -> bool:
        return isinstance(committed, str) and hmac.compare_digest(committed, commitment(salt_bytes, value.encode()))

    if not opens(commitments.get("subject"), subject):
        typer.echo("INVALID: the subject does not match the certificate's commitment (wrong subject or salt)", err=True)
        raise typer.Exit(1)
    for name in aliases:
        if not any(opens(committed, name) for committed in commitments.get("aliases") or []):
            typer.echo(f"INVALID: the alias {name!r} is not among the certificate's commitments", err=True)
            raise typer.Exit(1)


def _live_status(server: str, doc: dict[str, Any], key: str) -> Check:
    """The server's signed answer on whether `doc` still holds; fails closed when it cannot be had."""
    import secrets

    import httpx

    from core.certificates.verify import Check, Verdict, check_status

    nonce = secrets.token_hex(16)
    url = f"{server.rstrip('/')}/v1/certificate-status/{doc.get('request_id')}"
    try:
        response = httpx.get(url, params={"adapter_id": doc.get("adapter_id"), "nonce": nonce}, timeout=30)
        response.raise_for_status()
        answer = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return Check(Verdict.INVALID, f"INVALID: cannot confirm the status at {server}: {exc}")
    return check_status(answer, doc, key, nonce)
