"""`lethe retain`: the operator's retain set, written from the reference world as a working example."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lethe.commands.common import DataDir, Preset, data_dir_or_default, err, world_config

retain_app = typer.Typer(help="The operator's retain set: what every module is trained and checked against.")


@retain_app.command("init")
def retain_init(
    out: Annotated[Path, typer.Argument(help="A new folder to write the retain set into.")],
    negatives: Annotated[int, typer.Option(help="Look-alike photos written as discriminator negatives.")] = 1500,
    benign: Annotated[
        bool, typer.Option("--benign/--no-benign", help="Write the benign set admission control scores gates on.")
    ] = True,
    data_dir: DataDir = None,
    world: Preset = None,
) -> None:
    """Write the reference world's retain set as a retain folder: a working example of the layout LETHE_RETAIN_DIR
    reads (samples, canaries, negatives, benign photos)."""
    from unlearning.errors import InvalidInputError
    from unlearning.retain import RetainFolder
    from unlearning.world.builder import ensure_people
    from unlearning.world.requests import write_retain_folder

    built = ensure_people(data_dir_or_default(data_dir), world_config(world))
    try:
        count = write_retain_folder(built, out, negatives, benign)
        folder = RetainFolder(out)  # what a worker will read: checked here, not at its start
    except InvalidInputError as exc:
        raise typer.BadParameter(str(exc), param_hint="OUT") from exc
    err.print(
        f"{count} retain samples, {len(folder.canary_samples)} canary questions, {len(folder.negatives)} negatives, "
        f"{len(folder.benign())} benign photos; serve with LETHE_RETAIN_DIR={out.resolve()}"
    )
    typer.echo(str(out))
