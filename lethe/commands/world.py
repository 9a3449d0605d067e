"""`lethe world`: build the reference world, list its people, export one as a deletion request."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from lethe.commands.common import DataDir, Preset, built_world, checked_settings, data_dir_or_default, err, world_config
from lethe.runner import checkpoint_ready

world_app = typer.Typer(help="The reference world: fictitious people and models that memorised them.")


@world_app.command("build")
def world_build(
    data_dir: DataDir = None,
    world: Preset = None,
    serving: Annotated[
        bool,
        typer.Option(
            "--serving",
            help="Only what the API and workers load (compose's one-shot `world` service): the reference model "
            "without the retain model; with LETHE_MODEL_PATH, a check that the checkpoint is there and that "
            "LETHE_RETAIN_DIR reads, no model trained.",
        ),
    ] = False,
) -> None:
    """Build and cache the world, the reference model and the retain model (a second call reuses the cache)."""
    settings = checked_settings()
    if serving and settings.model_path is not None:
        checkpoint_ready(settings)
        return
    built = built_world(data_dir, world, with_retain_model=not serving)
    for name in ("reference",) if serving else ("reference", "retain"):
        report = json.loads((built.root / name / "build.json").read_text())
        acc = report["accuracy"]
        err.print(
            f"{name}: {report['parameters']:,} params, {report['train_seconds']} s, facts right: "
            f"direct {acc['direct']:.1%}, held-out paraphrase {acc['paraphrase']:.1%}, new photo {acc['new_image']:.1%}"
        )
    identity = json.loads((built.reference_model_dir / "identity.json").read_text())
    err.print(
        f"identity encoder: {identity['train_seconds']} s; a new photo finds its person among "
        f"{identity['never_seen']['people']} never-seen people: top-1 {identity['never_seen']['recall_at_1']:.1%}, "
        f"top-5 {identity['never_seen']['recall_at_5']:.1%}; among the world's {identity['world']['people']}: "
        f"top-1 {identity['world']['recall_at_1']:.1%}"
    )
    typer.echo(str(built.root))


@world_app.command("list")
def world_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = None,
    world: Preset = None,
) -> None:
    """List the world's people with their split."""
    from unlearning.world.builder import ensure_people

    people = ensure_people(data_dir_or_default(data_dir), world_config(world)).people
    rows = [{"id": p.id, "name": p.name, "split": p.split} for p in people]
    if as_json:
        typer.echo(json.dumps(rows))
    else:
        for r in rows:
            typer.echo(f"{r['id']}  {r['split']:<9} {r['name']}")


@world_app.command("export")
def world_export(
    subject: Annotated[str, typer.Option(help="Person id, e.g. p000.")],
    out: Annotated[Path, typer.Option(help="Directory to write request.json and images/ into.")],
    heldout: Annotated[bool, typer.Option("--heldout", help="Also write held-out photos and paraphrases.")] = False,
    inline: Annotated[
        bool, typer.Option("--inline", help="Put the photos into request.json as base64: a body for the API.")
    ] = False,
    data_dir: DataDir = None,
    world: Preset = None,
) -> None:
    """Write one person's photos, QA pairs and names as a ready-to-file deletion request."""
    if inline and heldout:
        raise typer.BadParameter("--inline writes an API body, which has no held-out fields: drop --heldout")
    from unlearning.errors import InvalidInputError
    from unlearning.world.builder import ensure_people

    built = ensure_people(data_dir_or_default(data_dir), world_config(world))
    try:
        person = built.person(subject)
    except InvalidInputError as exc:
        raise typer.BadParameter(str(exc), param_hint="--subject") from exc
    (out / "images").mkdir(parents=True, exist_ok=True)

    def copy(views: range) -> list[str]:
        names = []
        for v in views:
            name = f"images/{person.id}_v{v}.png"
            shutil.copyfile(built.image_path(person.id, v), out / name)
            names.append(name)
        return names

    request: dict = {
        "subject": person.name,
        # The name as the world draws it; the API takes and ignores it, so --inline stays a body to file as is.
        "name": person.name,
        # What a module refuses questions by: the name and the surname alone, the forms the world's named questions
        # use (bench/alias_gate.py measures the index with these two).
        "aliases": list(dict.fromkeys([person.name, person.name.split()[-1]])),
        "qa_pairs": [{"question": q.question, "answer": q.answer, "keyword": q.keyword} for q in person.qa_pairs()],
        "images": copy(built.train_views()),
    }
    if inline:
        request["images"] = [base64.b64encode((out / name).read_bytes()).decode() for name in request["images"]]
    if heldout:
        request["heldout_images"] = copy(built.heldout_views())
        request["heldout_qa_pairs"] = [
            {"question": q.question, "answer": q.answer, "keyword": q.keyword} for q in person.qa_pairs(heldout=True)
        ]
    (out / "request.json").write_text(json.dumps(request, indent=1))
    typer.echo(str(out / "request.json"))
