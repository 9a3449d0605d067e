"""`lethe demo`: forgetting in this process, measured on the reference world; it files nothing with a service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from core.settings import get_settings
from lethe.commands.common import Bars, DataDir, Preset, built_world

Params = Annotated[str | None, typer.Option("--params", help="CAGUL parameters as JSON, e.g. '{\"steps\": 400}'.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def demo(
    subject: Annotated[
        list[str] | None,
        typer.Option(
            help="Person id to forget (default p000); repeat it or give ids comma-separated to forget several "
            "people with one module."
        ),
    ] = None,
    as_json: AsJson = False,
    params: Params = None,
    data_dir: DataDir = None,
    world: Preset = None,
) -> None:
    """A demo in this process, nothing filed: forget people on the CPU, print leak before/after and the cost to others.

    A demonstration on the reference world: no request is filed with a service (that is POST /v1/forget-requests).
    """
    _print_result(_run_demo(subject_ids(subject), data_dir, world, params), as_json)


def subject_ids(given: list[str] | None) -> list[str]:
    """The ids of repeated and comma-separated `--subject` options, p000 when none is given."""
    return [s.strip() for ids in given or ["p000"] for s in ids.split(",") if s.strip()]


def _run_demo(subjects: list[str], data_dir: Path | None, world: str | None, params: str | None) -> dict:
    from unlearning.backbones import load_backbone
    from unlearning.cagul import CagulConfig
    from unlearning.errors import InvalidInputError
    from unlearning.evaluation.drivers.demo import run_demo

    built = built_world(data_dir, world, with_retain_model=False)
    try:
        config = CagulConfig.from_dict(json.loads(params)) if params else CagulConfig()
        for s in subjects:
            built.person(s)
    except (InvalidInputError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    backbone = load_backbone(built.reference_model_dir, device=get_settings().device)
    with Bars() as bars:
        return run_demo(backbone, built, subjects, config, bars)


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    for when in ("before", "after"):
        r = result[when]
        by_name = (
            f"  by name {r['leak_named']:.0%} (with another's photo {r['leak_named_other_photo']:.0%})"
            if "leak_named" in r
            else ""
        )
        typer.echo(
            f"{when:>6}: leak direct {r['leak_direct']:.0%}  paraphrase {r['leak_paraphrase']:.0%}  "
            f"new photo {r['leak_new_image']:.0%}{by_name}"
        )
    typer.echo(
        f"identical answers: retain {result['retain_identical']:.1%}, unseen {result['unseen_identical']:.1%}; "
        f"gate TPR {result['gate_tpr']:.1%} FPR {result['gate_fpr']:.1%}; "
        f"module {result['module_params']:,} params, trained in {result['train_seconds']} s"
    )
