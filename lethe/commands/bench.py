"""`lethe bench`: the forgetting table and the gate at scale, each printed beside its baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from core.settings import get_settings
from lethe.commands.common import DataDir, Preset, built_world, data_dir_or_default, err, world_config

bench_app = typer.Typer(help="Benchmarks that print their figures beside the baselines'.")


class _RowBars:
    """One bar over the table's rows, one for the running row's current phase."""

    def __init__(self, rows: list[str]) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), console=err
        )
        self.rows = rows
        self.overall = self.progress.add_task("rows", total=len(rows))
        self.phase = self.progress.add_task("", total=1)
        self.current: tuple[str, str] | None = None

    def __call__(self, row: str, phase: str, step: int, total: int) -> None:
        if self.current != (row, phase):
            self.current = (row, phase)
            self.progress.reset(self.phase, total=total, description=f"{row}: {phase}")
            self.progress.update(self.overall, completed=self.rows.index(row))
        self.progress.update(self.phase, completed=step)


@bench_app.command("quality")
def bench_quality(
    split: Annotated[str, typer.Option(help="Forget split: forget1, forget5 or forget10.")] = "forget5",
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods or ablation rows (default: every method).")
    ] = None,
    ablations: Annotated[bool, typer.Option("--ablations/--no-ablations", help="Add the CAGUL ablation rows.")] = True,
    quick: Annotated[bool, typer.Option("--quick", help="Few training steps: a smoke run, not for reporting.")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
    markdown_path: Annotated[Path | None, typer.Option("--markdown", help="Write the table as Markdown here.")] = None,
    data_dir: DataDir = None,
    world: Preset = None,
) -> None:
    """Run every unlearning method on a forget split of the reference world and print the table."""
    from rich.table import Table

    from unlearning.errors import InvalidInputError
    from unlearning.evaluation.drivers.bench import COLUMNS, format_value, markdown_table, plan_rows, run_quality_bench

    try:
        rows = plan_rows([m.strip() for m in methods.split(",") if m.strip()] if methods else None, ablations, quick)
    except InvalidInputError as exc:
        raise typer.BadParameter(str(exc), param_hint="--methods") from exc
    built = built_world(data_dir, world)
    bars = _RowBars([r.name for r in rows])
    bars.progress.start()
    try:
        result = run_quality_bench(built, split, rows, bars)
    except InvalidInputError as exc:
        raise typer.BadParameter(str(exc)) from exc
    finally:
        bars.progress.stop()
    table = Table(title=f"{result['split']} on {result['world']} ({result['machine']})")
    for column in ("method", *COLUMNS):
        table.add_column(column.replace("_", " "), justify="right")
    for row in result["rows"]:
        table.add_row(*(format_value(row.get(c)) for c in ("method", *COLUMNS)))
    Console().print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(markdown_table(result))


@bench_app.command("scale")
def bench_scale(
    counts: Annotated[str, typer.Option(help="Active module counts, comma-separated.")] = "0,10,100,1000,10000",
    json_path: Annotated[Path, typer.Option("--json", help="Write the results as JSON here.")] = Path(
        "bench/results/gate-scale.json"
    ),
    markdown_path: Annotated[Path, typer.Option("--markdown", help="Write the table as Markdown here.")] = Path(
        "bench/results/gate-scale.md"
    ),
    candidates: Annotated[
        int | None, typer.Option(help="Two-stage candidates (default: LETHE_GATE_CANDIDATES).")
    ] = None,
    requests: Annotated[int, typer.Option(help="/v1/vqa requests timed per row.")] = 100,
    data_dir: DataDir = None,
    world: Annotated[
        str, typer.Option("--world", help="World preset (tiny: a smoke run, not for reporting).")
    ] = "scale",
) -> None:
    """The gate at 0 to 10,000 enrolled requests on the scale world: two-stage and exhaustive side by side."""
    from lethe.scale.bench import run_scale_bench
    from lethe.scale.report import markdown, write

    try:
        wanted = sorted({int(c) for c in counts.split(",") if c.strip()})
    except ValueError:
        raise typer.BadParameter("counts must be whole numbers, comma-separated", param_hint="--counts") from None
    if not wanted or wanted[0] < 0:
        raise typer.BadParameter("give at least one count, none negative", param_hint="--counts")
    k = get_settings().gate_candidates if candidates is None else candidates
    if k <= 0:
        raise typer.BadParameter("the two-stage gate needs at least one candidate", param_hint="--candidates")
    world_config(world)  # an unknown preset is a usage error before anything is built
    result = run_scale_bench(data_dir_or_default(data_dir), wanted, k, requests, lambda line: err.print(line), world)
    write(result, json_path, markdown_path)
    Console().print(markdown(result))
