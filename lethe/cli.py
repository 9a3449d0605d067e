"""The `lethe` command: build the reference world, export deletion requests, run the forgetting demo."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from core.settings import get_settings
from lethe.model import model_app

if TYPE_CHECKING:
    from core.certificates.verify import Check

app = typer.Typer(help="Lethe: unlearning as a service for vision-language models.", no_args_is_help=True)
world_app = typer.Typer(help="The reference world: fictitious people and models that memorised them.")
app.add_typer(world_app, name="world")
bench_app = typer.Typer(help="Benchmarks that print their figures beside the baselines'.")
app.add_typer(bench_app, name="bench")
app.add_typer(model_app, name="model")
err = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (default: LETHE_DATA_DIR or .lethe).")]
Preset = Annotated[
    str | None, typer.Option("--world", help="World preset: default, tiny or scale (default: LETHE_WORLD).")
]


class _Bars:
    """Rich progress bars on stderr, one per training phase, fed by library progress callbacks."""

    def __init__(self) -> None:
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
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total, loss=float("nan"))
        self.progress.update(self.tasks[phase], completed=step, loss=loss)

    def __enter__(self) -> _Bars:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the CLI draws its own bars; transformers' would interleave
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _config(preset: str | None):  # type: ignore[no-untyped-def]
    from unlearning.world import WORLD_PRESETS

    name = preset or get_settings().world
    if name not in WORLD_PRESETS:
        raise typer.BadParameter(f"unknown world {name!r}; choose one of {sorted(WORLD_PRESETS)}", param_hint="--world")
    return WORLD_PRESETS[name]


def _data_dir(data_dir: Path | None) -> Path:
    return data_dir or get_settings().data_dir


def _built_world(data_dir: Path | None, preset: str | None, with_retain_model: bool = True):  # type: ignore[no-untyped-def]
    from unlearning.world.builder import build_world

    with _Bars() as bars:
        return build_world(_data_dir(data_dir), _config(preset), bars, with_retain_model)


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
    settings = _checked_settings()
    if serving and settings.model_path is not None:
        _checkpoint_ready(settings)
        return
    built = _built_world(data_dir, world, with_retain_model=not serving)
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


def _checkpoint_ready(settings) -> None:  # type: ignore[no-untyped-def]
    """The checkpoint the service will load is there and its retain set reads, or exit 2 saying what to mount."""
    model_path = settings.model_path
    if not (model_path / "config.json").is_file():
        err.print(
            f"LETHE_MODEL_PATH={model_path} holds no checkpoint (no config.json): mount the checkpoint directory "
            "there (compose: put it under ./models, mounted at /models) or unset LETHE_MODEL_PATH to "
            "serve the reference world's model",
            soft_wrap=True,  # a path broken over lines cannot be copied
        )
        raise typer.Exit(2)
    _retain_ready(settings)
    err.print(f"serving the checkpoint at {model_path} with the retain set at {settings.retain_dir}", soft_wrap=True)


@world_app.command("list")
def world_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = None,
    world: Preset = None,
) -> None:
    """List the world's people with their split."""
    from unlearning.world.builder import ensure_people

    people = ensure_people(_data_dir(data_dir), _config(world)).people
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
    """Write one person's photos and QA pairs as a ready-to-file deletion request."""
    if inline and heldout:
        raise typer.BadParameter("--inline writes an API body, which has no held-out fields: drop --heldout")
    from unlearning.errors import InvalidInputError
    from unlearning.world.builder import ensure_people

    built = ensure_people(_data_dir(data_dir), _config(world))
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


def _run_demo(subjects: list[str], data_dir: Path | None, world: str | None, params: str | None) -> dict:
    from unlearning.backbones import load_backbone
    from unlearning.cagul import CagulConfig
    from unlearning.errors import InvalidInputError
    from unlearning.evaluation.drivers.demo import run_demo

    built = _built_world(data_dir, world, with_retain_model=False)
    try:
        config = CagulConfig.from_dict(json.loads(params)) if params else CagulConfig()
        for s in subjects:
            built.person(s)
    except (InvalidInputError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    backbone = load_backbone(built.reference_model_dir, device=get_settings().device)
    with _Bars() as bars:
        return run_demo(backbone, built, subjects, config, bars)


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    for when in ("before", "after"):
        r = result[when]
        typer.echo(
            f"{when:>6}: leak direct {r['leak_direct']:.0%}  paraphrase {r['leak_paraphrase']:.0%}  "
            f"new photo {r['leak_new_image']:.0%}"
        )
    typer.echo(
        f"identical answers: retain {result['retain_identical']:.1%}, unseen {result['unseen_identical']:.1%}; "
        f"gate TPR {result['gate_tpr']:.1%} FPR {result['gate_fpr']:.1%}; "
        f"module {result['module_params']:,} params, trained in {result['train_seconds']} s"
    )


Params = Annotated[str | None, typer.Option("--params", help="CAGUL parameters as JSON, e.g. '{\"steps\": 400}'.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.command()
def demo(
    subject: Annotated[str, typer.Option(help="Person id to forget.")] = "p000",
    as_json: AsJson = False,
    params: Params = None,
    data_dir: DataDir = None,
    world: Preset = None,
) -> None:
    """Forget one person on the CPU and print leak before/after and what it cost everyone else."""
    _print_result(_run_demo([subject], data_dir, world, params), as_json)


@app.command()
def forget(
    subjects: Annotated[str, typer.Option(help="Comma-separated person ids forgotten by one module.")],
    as_json: AsJson = False,
    params: Params = None,
    data_dir: DataDir = None,
    world: Preset = None,
) -> None:
    """Train one CAGUL module that forgets the given people, and measure it."""
    _print_result(_run_demo([s.strip() for s in subjects.split(",") if s.strip()], data_dir, world, params), as_json)


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
    built = _built_world(data_dir, world)
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
    from lethe.scale import markdown, run_scale_bench, write

    try:
        wanted = sorted({int(c) for c in counts.split(",") if c.strip()})
    except ValueError:
        raise typer.BadParameter("counts must be whole numbers, comma-separated", param_hint="--counts") from None
    if not wanted or wanted[0] < 0:
        raise typer.BadParameter("give at least one count, none negative", param_hint="--counts")
    k = get_settings().gate_candidates if candidates is None else candidates
    if k <= 0:
        raise typer.BadParameter("the two-stage gate needs at least one candidate", param_hint="--candidates")
    _config(world)  # an unknown preset is a usage error before anything is built
    result = run_scale_bench(_data_dir(data_dir), wanted, k, requests, lambda line: err.print(line), world)
    write(result, json_path, markdown_path)
    Console().print(markdown(result))


retain_app = typer.Typer(help="The operator's retain set: what every module is trained and checked against.")
app.add_typer(retain_app, name="retain")


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

    built = ensure_people(_data_dir(data_dir), _config(world))
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


def _retain_ready(settings) -> None:  # type: ignore[no-untyped-def]
    """The operator's retain folder reads and checks, or exit 2 saying what to fix (before the worker starts)."""
    if settings.retain_dir is None:
        return
    from unlearning.errors import UnlearningError
    from unlearning.retain import RetainFolder

    try:
        folder = RetainFolder(settings.retain_dir)
    except UnlearningError as exc:
        typer.echo(f"invalid setting LETHE_RETAIN_DIR: {exc}", err=True)  # unwrapped: it names a file and line
        raise typer.Exit(2) from None
    err.print(
        f"retain set {settings.retain_dir}: {len(folder.samples)} samples, {len(folder.canary_samples)} canary "
        f"questions, {len(folder.negatives)} negatives, {len(folder.benign())} benign photos"
    )


db_app = typer.Typer(help="The service's database.")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to the database of LETHE_DATABASE_URL (default: SQLite in the data dir)."""
    from core.db import upgrade_database

    url = get_settings().resolved_database_url()
    upgrade_database(url)
    err.print(f"database at {url.split('@')[-1]} is at the newest schema")


keys_app = typer.Typer(help="API keys: stored hashed, each with scopes (forget:write, forget:read, vqa, admin).")
app.add_typer(keys_app, name="keys")


def _sessions():  # type: ignore[no-untyped-def]
    from core.db import make_engine, make_session_factory, upgrade_database

    url = get_settings().resolved_database_url()
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


@app.command("verify-certificate")
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
) -> None:
    """Check an erasure certificate against a pinned key: exit 0 valid, 1 invalid, 3 revoked, 4 expired."""
    from core.certificates.verify import Verdict, check_certificate, load_public_key

    if (salt is None) != (subject is None):
        raise typer.BadParameter("give --salt and --subject together")
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
        _check_subject(doc, salt, subject)
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
    )


_VERDICT_EXIT_CODES = {"valid": 0, "invalid": 1, "revoked": 3, "expired": 4}


def _verdict_exit(check: Check) -> NoReturn:
    typer.echo(check.message, err=True)
    raise typer.Exit(_VERDICT_EXIT_CODES[str(check.verdict)])


def _check_subject(doc: dict[str, Any], salt: str, subject: str) -> None:
    """Exit 1 unless `subject` under `salt` is what the certificate committed to."""
    import hmac

    from core.certificates.verify import commitment

    try:
        salt_bytes = bytes.fromhex(salt)
    except ValueError as exc:
        raise typer.BadParameter(f"--salt is not hex: {exc}") from exc
    committed = (doc.get("commitments") or {}).get("subject")
    if not isinstance(committed, str) or not hmac.compare_digest(committed, commitment(salt_bytes, subject.encode())):
        typer.echo("INVALID: the subject does not match the certificate's commitment (wrong subject or salt)", err=True)
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


def _die_with_parent() -> None:
    """In the worker child: Linux sends it SIGTERM if `lethe serve` dies without stopping it (e.g. SIGKILL)."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:  # type: ignore[type-arg]
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown: the running step finishes, the task is redelivered
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _bootstrap_admin(settings) -> None:  # type: ignore[no-untyped-def]
    """Never run open: on a database without keys, create the first admin key and say where it came from."""
    from core.db import make_engine, make_session_factory, transaction
    from core.keys.repository import ApiKeyRepository

    with transaction(make_session_factory(make_engine(settings.resolved_database_url()))) as session:
        configured = settings.bootstrap_admin_key.get_secret_value() if settings.bootstrap_admin_key else None
        token = ApiKeyRepository(session).ensure_admin(configured)
    if token is None:
        return
    if settings.bootstrap_admin_key:
        err.print("first admin key taken from LETHE_BOOTSTRAP_ADMIN_KEY")
    else:
        err.print(f"first admin key (shown once; store it): {token}")


def _master_key_ready(settings) -> None:  # type: ignore[no-untyped-def]
    """The master key exists (created once, before the API and the worker both read it) and says where it is."""
    from core.crypto import DataKeyError, master_key, master_key_file

    try:
        master_key(settings)
        where = "LETHE_MASTER_KEY" if settings.master_key is not None else str(master_key_file(settings))
    except DataKeyError as exc:
        raise typer.BadParameter(str(exc)) from exc
    err.print(f"master key from {where} (keep it out of the data dir's backups)")


def _checked_settings():  # type: ignore[no-untyped-def]
    """The settings, or exit 2 naming each bad one: before any minutes-long start-up work, never after it."""
    from pydantic import ValidationError

    from core.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "LETHE_" + "_".join(str(part) for part in error["loc"]).upper()
            err.print(f"invalid setting {name}: {error['msg']}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDir = None,
    world: Preset = None,
) -> None:
    """The embedded default: SQLite, a serverless broker, one worker process and the API, in the foreground."""
    import os
    import sys

    import uvicorn

    from core.db import upgrade_database
    from core.processes import API_APP, python_module, worker_command

    # The worker process reads the same settings from the environment.
    if data_dir is not None:
        os.environ["LETHE_DATA_DIR"] = str(data_dir)
    if world is not None:
        os.environ["LETHE_WORLD"] = world
    settings = _checked_settings()
    _master_key_ready(settings)  # a misplaced key file is reported before the minutes-long build, not after
    if settings.model_path is None:
        _retain_ready(settings)
    else:  # as compose's `world` service: the checkpoint and its retain set are there, or nothing starts
        _checkpoint_ready(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.model_path is None:
        _built_world(settings.data_dir, settings.world, with_retain_model=False)
    upgrade_database(settings.resolved_database_url())
    _bootstrap_admin(settings)
    worker = subprocess.Popen(
        python_module(worker_command(f"lethe-embedded-{os.getpid()}@%h")), preexec_fn=_die_with_parent
    )
    err.print(f"worker started (pid {worker.pid}); API on http://{host}:{port} (docs at /docs)")
    # uvicorn shuts down gracefully, then re-raises the signal it caught: these handlers turn that into a
    # normal exit, so the worker is stopped below instead of being orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        # By import string: the command line starts the service but does not import it.
        uvicorn.run(API_APP, factory=True, host=host, port=port, log_level="info")
    except KeyboardInterrupt:
        pass
    finally:
        _stop(worker)
        err.print("API and worker stopped")


if __name__ == "__main__":
    app()
