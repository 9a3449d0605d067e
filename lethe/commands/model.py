"""`lethe model`: what a checkpoint directory will be to Lethe, before the service is pointed at it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

model_app = typer.Typer(help="Base-model checkpoints: check one before serving it (LETHE_MODEL_PATH).")
err = Console(stderr=True)


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise typer.BadParameter(f"{text!r} is not a size: write WIDTHxHEIGHT in pixels, e.g. 640x480")
    return int(width), int(height)


@model_app.command("check")
def model_check(
    directory: Annotated[Path, typer.Argument(help="A Hugging Face checkpoint directory on disk.")],
    size: Annotated[
        list[str] | None,
        typer.Option("--size", help="An image size WIDTHxHEIGHT to count visual tokens for (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Annotated[str, typer.Option(help="Device for the forward pass.")] = "cpu",
) -> None:
    """Load DIRECTORY offline, name its backbone and shapes, the bytes one request's module costs, run one forward.

    Exits 2 when the directory is not a checkpoint Lethe can serve (unsupported architecture, missing or broken
    files), naming the architecture and the supported ones.
    """
    from unlearning.backbones.check import DEFAULT_SIZES, check_checkpoint
    from unlearning.errors import UnsupportedModelError

    sizes = [_size(s) for s in size] if size else list(DEFAULT_SIZES)
    try:
        report = check_checkpoint(directory, sizes, device)
    except (UnsupportedModelError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    tokens = ", ".join(f"{k}: {v}" for k, v in report.visual_tokens.items())
    typer.echo(f"{report.path}: {report.architecture} -> backbone {report.backbone} ({report.model_type})")
    typer.echo(f"parameters {report.parameters:,}; hidden size {report.hidden_size}; {report.layers} layers")
    resolution = "dynamic resolution" if report.dynamic_resolution else "fixed resolution"
    typer.echo(f"visual tokens per image ({resolution}): {tokens}; the gate reads {report.gate_tokens}")
    identity = "its identity encoder" if report.identity_encoder else "no identity encoder: modules use 'flatten'"
    typer.echo(f"module per request: {report.module_bytes:,} bytes ({identity})")
    typer.echo(f"one forward: {report.forward_seconds} s, logits {report.forward_shape}")
