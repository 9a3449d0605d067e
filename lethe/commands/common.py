"""What the command groups share: the stderr console, the world options, progress bars, the checked settings."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from core.settings import get_settings

if TYPE_CHECKING:
    from core.settings import Settings

err = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (default: LETHE_DATA_DIR or .lethe).")]
Preset = Annotated[
    str | None,
    typer.Option("--world", help="World preset: default, tiny or scale (LETHE_WORLD)."),
]


class Bars:
    """Rich progress bars on stderr, one per training phase, fed by library progress callbacks; where stderr is no
    terminal (a log file, a container's output), a line at every tenth of each phase instead."""

    def __init__(self) -> None:
        self.lines = not err.is_terminal
        self.started: dict[tuple[str, int], float] = {}
        self.tenths: dict[tuple[str, int], int] = {}
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, step: int, total: int, loss: float) -> None:
        if self.lines:
            self._line(phase, step, total, loss)
            return
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total, loss=float("nan"))
        # One name can report several stages (a model's tower pre-training, then its training), each its own total.
        self.progress.update(self.tasks[phase], completed=step, total=total, loss=loss)

    def _line(self, phase: str, step: int, total: int, loss: float) -> None:
        # Rich draws nothing to a non-terminal until the end: a 20-min world build would look hung in a log.
        key, now = (phase, total), time.monotonic()
        if step <= 1 or key not in self.started:
            self.started[key] = now
        started = self.started[key]
        tenth = step * 10 // total if total > 0 else 10
        if self.tenths.get(key) == tenth and step > 1:
            return
        self.tenths[key] = tenth
        parts = [f"{phase}: {step}/{total}"] + ([] if math.isnan(loss) else [f"loss {loss:.3f}"])
        if step > 1:
            parts.append(f"about {(now - started) / (step - 1) * (total - step) / 60:.0f} min left")
        err.print(", ".join(parts), highlight=False, markup=False)

    def __enter__(self) -> Bars:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the CLI draws its own bars; transformers' would interleave
        if not self.lines:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.lines:
            self.progress.stop()


def world_config(preset: str | None):  # type: ignore[no-untyped-def]
    """The preset's world config, or a usage error naming the presets."""
    from unlearning.world import WORLD_PRESETS

    name = preset or get_settings().world
    if name not in WORLD_PRESETS:
        raise typer.BadParameter(f"unknown world {name!r}; choose one of {sorted(WORLD_PRESETS)}", param_hint="--world")
    return WORLD_PRESETS[name]


def data_dir_or_default(data_dir: Path | None) -> Path:
    return data_dir or get_settings().data_dir


def built_world(data_dir: Path | None, preset: str | None, with_retain_model: bool = True):  # type: ignore[no-untyped-def]
    """The world and its models, built with progress bars or read from the cache."""
    from unlearning.world.builder import build_world

    with Bars() as bars:
        return build_world(data_dir_or_default(data_dir), world_config(preset), bars, with_retain_model)


def checked_settings() -> Settings:
    """The settings, or exit 2 naming each bad one: before any minutes-long start-up work, never after it."""
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "LETHE_" + "_".join(str(part) for part in error["loc"]).upper()
            err.print(f"invalid setting {name}: {error['msg']}")
        raise typer.Exit(2) from None
