"""Many requests, one service: every known person filed one after another into the same `lethe serve`.

    python bench/many_requests.py [--world default] [--subjects p000,p001] [--no-keyword-sample 6]
                                  [--timeout 1200] [--json PATH] [--markdown PATH] [--quick]

Each person's body is what `lethe world export --inline` writes; the
first `--no-keyword-sample` of them are filed again, without keywords, into a second fresh service (one
after another too), so each is measured on its own. Before anything is filed, the reference model (the
service with no module) answers every person's *held-out* material, which the service never sees: the
held-out photo views x each fact's held-out question. After each request is terminal, and before the next
is filed, that person's held-out cases are asked again: leak after = cases leaking now among those the
reference leaked. At the end every filed person is asked again (earlier modules still hold?) and everyone
never filed is compared with the reference ("others identical").

`--quick` (CI, smoke): the tiny world, p000 and the first retain person, no second service.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from unlearning.evaluation.metrics.leakage import leak_rate_after, leaked
from unlearning.world import WORLD_PRESETS, World

TOKEN = "lethe_0123456789ab_many-requests-bench-key-not-secret"
IN_FLIGHT = frozenset({"validating", "queued", "training", "verifying"})
NOTHING_TO_FORGET = "nothing_to_forget"
# The target: an active request's held-out leak after, baselined on the reference, is at most this.
MAX_LEAK = 0.05
KNOWN_SPLITS = ("forget1", "forget5", "forget10", "retain")
RESULTS = Path(__file__).resolve().parent / "results"

EVENTS_PAGE = 1000  # the most /events returns at once


@dataclass(frozen=True)
class Case:
    """One held-out question about one held-out photo of a person, with the fact's private keyword."""

    person: str
    view: int
    question: str
    keyword: str
    image: str  # base64 PNG


@dataclass
class Row:
    """One filed request: how it ended and what its person's held-out cases leak."""

    id: str
    split: str
    protected: bool
    status: str = "not filed"
    message: str | None = None
    attempts: int = 0
    attempt_details: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    reference_leaking: int = 0
    leak_after: float | None = None
    leak_end: float | None = None


def leak_share(answers: Sequence[str], cases: Sequence[Case], reference: Sequence[str]) -> float | None:
    """Share of the reference-leaking cases that leak in answers (None when the reference leaks none)."""
    return leak_rate_after(answers, [c.keyword for c in cases], reference)


# ---- the world and its held-out material -------------------------------------------------------------------


def heldout_cases(world: World, person_id: str) -> list[Case]:
    """Held-out photo views x held-out question of each fact: material the service never sees."""
    person = world.person(person_id)
    images = {v: base64.b64encode(world.image_path(person_id, v).read_bytes()).decode() for v in world.heldout_views()}
    return [
        Case(person_id, v, f.heldout_question, f.keyword, images[v])
        for v in world.heldout_views()
        for f in person.facts
    ]


def known_people(world: World) -> list[str]:
    """Everyone the model was trained on (not `unseen`), in id order."""
    return sorted(p.id for p in world.people if p.split in KNOWN_SPLITS)


def built_world(name: str, cache: Path) -> World:
    """The world with its reference model, built once into (or reused from) the cache dir."""
    from unlearning.world.builder import build_world  # torch: loaded only when a run needs it

    return build_world(cache, WORLD_PRESETS[name], with_retain_model=False)


def exported_body(world: World, cache: Path, person_id: str, keywords: bool) -> dict[str, Any]:
    """The API body `lethe world export --inline` writes for one person, keywords dropped on request."""
    from lethe.commands.world import world_export  # the command itself, called in this process (no start-up per person)

    with tempfile.TemporaryDirectory(prefix="lethe-export-") as out, redirect_stdout(io.StringIO()):
        world_export(person_id, Path(out), inline=True, data_dir=cache, world=world.config.name)
        body = json.loads((Path(out) / "request.json").read_text())
    if not keywords:
        for qa in body["qa_pairs"]:
            qa.pop("keyword", None)
    return body


# ---- the service -------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_data_dir(world: World, parent: Path | None, name: str) -> Path:
    """An empty data dir for one service, the built world linked into its worlds/ (no rebuild)."""
    if parent is None:
        root = Path(tempfile.mkdtemp(prefix=f"lethe-many-{name}-"))
    else:
        root = parent / name
        if root.exists() and any(root.iterdir()):
            raise SystemExit(f"{root} is not empty: a reused service would replay earlier requests")
    (root / "worlds").mkdir(parents=True, exist_ok=True)
    (root / "worlds" / world.root.name).symlink_to(world.root.resolve())
    return root


def service_env(data_dir: Path, world: str) -> dict[str, str]:
    """The caller's environment, with the embedded defaults for storage and this run's data dir and key."""
    dropped = ("LETHE_DATABASE_URL", "LETHE_BROKER_URL", "LETHE_MODEL_PATH", "LETHE_ARTIFACT_ROOT")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update({"LETHE_DATA_DIR": str(data_dir), "LETHE_WORLD": world, "LETHE_BOOTSTRAP_ADMIN_KEY": TOKEN})
    return env


def wait_ready(http: httpx.Client, proc: subprocess.Popen, log: Path, seconds: float = 900) -> None:
    """Until /readyz answers 200; the service's log tail if it exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lethe serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"lethe serve not ready after {seconds:.0f} s; see {log}")


@contextmanager
def running_service(world: World, data_dir: Path, log: Path) -> Iterator[httpx.Client]:
    """`lethe serve` on a free port in a subprocess; a client holding the admin key once it is ready."""
    port = free_port()
    args = ["serve", "--data-dir", str(data_dir), "--world", world.config.name, "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lethe.cli", *args],
            env=service_env(data_dir, world.config.name),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, headers=auth) as http:
            wait_ready(http, proc, log)
            yield http
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def ask_all(http: httpx.Client, cases: Sequence[Case], clients: int = 8) -> list[str]:
    """The service's answers to the cases, in order (a few concurrent clients: the server batches)."""

    def ask(case: Case) -> str:
        response = http.post("/v1/vqa", json={"image": case.image, "question": case.question})
        response.raise_for_status()
        return str(response.json()["answer"])

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(ask, cases))


def file_request(http: httpx.Client, body: dict[str, Any], key: str) -> str:
    """POST the body as a new deletion request; its id."""
    response = http.post("/v1/forget-requests", json=body, headers={"Idempotency-Key": key})
    if response.status_code != 202:
        raise SystemExit(f"filing {key} failed: {response.status_code} {response.text}")
    return str(response.json()["id"])


def wait_terminal(http: httpx.Client, request_id: str, timeout: float) -> dict[str, Any]:
    """Poll the request until its status is no longer in flight, or cancel it at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        request = http.get(f"/v1/forget-requests/{request_id}").json()
        if request["status"] not in IN_FLIGHT:
            return dict(request)
        if time.monotonic() > deadline:
            http.post(f"/v1/forget-requests/{request_id}/cancel")
            return {**request, "status": f"timeout ({request['status']})", "error": f"not terminal in {timeout:.0f} s"}
        time.sleep(1.0)


def request_events(http: httpx.Client, request_id: str, after: int = 0) -> list[dict[str, Any]]:
    """Every event of the request after id `after`, page by page: a page holds 500 unless asked for more (at most
    `EVENTS_PAGE`), and a request that trains for minutes writes hundreds of progress events."""
    events: list[dict[str, Any]] = []
    while True:
        response = http.get(f"/v1/forget-requests/{request_id}/events", params={"after": after, "limit": EVENTS_PAGE})
        response.raise_for_status()
        page = response.json()
        events += page
        if len(page) < EVENTS_PAGE:
            return events
        after = events[-1]["id"]


def status_message(http: httpx.Client, request: dict[str, Any]) -> str | None:
    """The request's error, else the message of its last status event."""
    if request.get("error"):
        return str(request["error"])
    events = request_events(http, request["id"])
    messages = [e["message"] for e in events if e.get("kind") != "progress" and e.get("message")]
    return messages[-1] if messages else None


def attempts_of(http: httpx.Client, request_id: str) -> list[dict[str, Any]]:
    """The report's attempts (attempt, passed, reasons); one from the verification alone on older reports."""
    report = http.get(f"/v1/forget-requests/{request_id}/report").json().get("report")
    if not report:
        return []
    if isinstance(report.get("attempts"), list):
        return [
            {k: a.get(k) for k in ("attempt", "passed", "reasons")} for a in report["attempts"] if isinstance(a, dict)
        ]
    verification = report.get("verification") or {}
    return [{"attempt": 1, "passed": verification.get("passed"), "reasons": verification.get("reasons", [])}]


# ---- one pass: file subjects one after another into one service -------------------------------------------


def served_version(http: httpx.Client) -> int:
    """The adapter set version the service answers with now (-1 while it has none)."""
    version = http.get("/readyz").json().get("adapter_set_version")
    return -1 if version is None else int(version)


def wait_served(http: httpx.Client, newer_than: int, seconds: float = 120) -> int:
    """Until the service answers with a set newer than the given one (a module just went active)."""
    deadline = time.monotonic() + seconds
    while (version := served_version(http)) <= newer_than and time.monotonic() < deadline:
        time.sleep(0.2)
    return version


def file_one(http: httpx.Client, body: dict[str, Any], key: str, timeout: float) -> dict[str, Any]:
    """File one request and wait for it (and for its module to be served); status, attempts and wall time."""
    started, before = time.perf_counter(), served_version(http)
    request = wait_terminal(http, file_request(http, body, key), timeout)
    if request["status"] == "active":
        wait_served(http, before)
    attempts = attempts_of(http, request["id"])
    return {
        "status": request["status"],
        "message": status_message(http, request),
        "attempts": attempts,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def file_subject(http: httpx.Client, world: World, cache: Path, pid: str, keywords: bool, timeout: float) -> Row:
    """File one person's exported body and wait for it; the row without its held-out leak yet."""
    person = world.person(pid)
    body = exported_body(world, cache, pid, keywords)
    outcome = file_one(http, body, f"many-{'kw' if keywords else 'nokw'}-{pid}", timeout)
    return Row(
        pid,
        person.split,
        person.protected,
        status=outcome["status"],
        message=outcome["message"],
        attempts=len(outcome["attempts"]),
        attempt_details=outcome["attempts"],
        wall_s=outcome["wall_s"],
    )


def others_identical(http: httpx.Client, cases: dict[str, list[Case]], reference: dict[str, list[str]]) -> dict:
    """Share of the held-out answers of the given people that are identical to the reference's."""
    asked = [c for pid in cases for c in cases[pid]]
    before = [a for pid in cases for a in reference[pid]]
    same = sum(a == r for a, r in zip(ask_all(http, asked), before, strict=True))
    return {"share": same / len(asked) if asked else None, "cases": len(asked)}


def run_pass(
    http: httpx.Client, world: World, cache: Path, subjects: list[str], keywords: bool, timeout: float
) -> dict:
    """Baseline on the reference, file each subject in turn (leak after each), then re-ask everything."""
    cases = {p.id: heldout_cases(world, p.id) for p in world.people}
    reference = {pid: ask_all(http, person_cases) for pid, person_cases in cases.items()}
    rows = []
    for pid in subjects:
        row = file_subject(http, world, cache, pid, keywords, timeout)
        row.reference_leaking = sum(leaked(a, c.keyword) for a, c in zip(reference[pid], cases[pid], strict=True))
        row.leak_after = leak_share(ask_all(http, cases[pid]), cases[pid], reference[pid])
        rows.append(row)
        print(f"  {pid}: {row.status} after {row.wall_s} s, attempts {row.attempts}, leak after {pct(row.leak_after)}")
    for row in rows:
        row.leak_end = leak_share(ask_all(http, cases[row.id]), cases[row.id], reference[row.id])
    others = others_identical(http, {pid: c for pid, c in cases.items() if pid not in subjects}, reference)
    return {"rows": [asdict(r) for r in rows], "summary": summarise(rows, others)}


# ---- summary and tables ------------------------------------------------------------------------------------


def summarise(rows: Sequence[Row], others: dict[str, Any]) -> dict[str, Any]:
    """The issue's target figures over one pass's rows."""
    revealed = [r for r in rows if r.reference_leaking > 0 and not r.protected]
    quiet = [r for r in rows if r not in revealed]
    active = [r for r in rows if r.status == "active"]
    over = [r for r in active if r.leak_after is not None and r.leak_after > MAX_LEAK]
    revealed_ok = [r for r in revealed if r.status == "active" and (r.leak_after or 0.0) <= MAX_LEAK]
    quiet_ok = [r for r in quiet if r.status == NOTHING_TO_FORGET]
    filed = [r for r in rows if r.attempts]
    return {
        "subjects": len(rows),
        "revealed": len(revealed),
        "revealed_active": sum(r.status == "active" for r in revealed),
        "share_active_revealed": share(sum(r.status == "active" for r in revealed), len(revealed)),
        "revealed_active_within_threshold": len(revealed_ok),
        "nothing_to_reveal": len(quiet),
        "nothing_to_reveal_ended_nothing_to_forget": len(quiet_ok),
        "active_over_threshold": len(over),
        "active_over_threshold_at_end": sum(r.leak_end is not None and r.leak_end > MAX_LEAK for r in active),
        "mean_attempts": share(sum(r.attempts for r in filed), len(filed)),
        "others_identical": others["share"],
        "others_cases": others["cases"],
        "target_met": len(revealed_ok) == len(revealed) and len(quiet_ok) == len(quiet) and not over,
    }


def share(part: float, whole: int) -> float | None:
    """part / whole, or None for an empty whole."""
    return part / whole if whole else None


def pct(x: float | None) -> str:
    """A share as a percentage, or '-' when there is none."""
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown_pass(name: str, result: dict[str, Any]) -> list[str]:
    """One pass as a markdown table plus its summary lines."""
    header = ("person", "split", "protected", "status", "attempts", "wall s", "reference-leaking held-out cases",
              "held-out leak after", "leak at end", "message")  # fmt: skip
    lines = [f"### {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in result["rows"]:
        message = (r["message"] or "").replace("|", "/").replace("\n", " ")[:120]
        lines.append(
            f"| {r['id']} | {r['split']} | {'yes' if r['protected'] else ''} | {r['status']} | {r['attempts']} | "
            f"{r['wall_s']} | {r['reference_leaking']} | {pct(r['leak_after'])} | {pct(r['leak_end'])} | {message} |"
        )
    s = result["summary"]
    mean = "-" if s["mean_attempts"] is None else f"{s['mean_attempts']:.2f}"
    lines += [
        "",
        f"- active among people the reference reveals: {s['revealed_active']}/{s['revealed']} "
        f"({pct(s['share_active_revealed'])}); active with held-out leak after <= {MAX_LEAK:.0%}: "
        f"{s['revealed_active_within_threshold']}/{s['revealed']}",
        f"- protected or nothing to reveal, ended `{NOTHING_TO_FORGET}`: "
        f"{s['nothing_to_reveal_ended_nothing_to_forget']}/{s['nothing_to_reveal']}",
        f"- active requests with held-out leak after > {MAX_LEAK:.0%}: {s['active_over_threshold']} (target 0); "
        f"at the end: {s['active_over_threshold_at_end']}",
        f"- mean attempts of requests that trained: {mean}",
        f"- others identical to the reference: {pct(s['others_identical'])} of {s['others_cases']} held-out answers "
        "of people never filed",
        f"- target met: {'yes' if s['target_met'] else 'no'}",
        "",
    ]
    return lines


def machine() -> dict[str, Any]:
    """Where and when this ran."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def markdown(report: dict[str, Any]) -> str:
    """The whole report: header with the machine, then one table per pass."""
    m = report["machine"]
    lines = [
        f"## Many requests, one service: {report['world']} world",
        "",
        f"{m['date']}; {m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}. Held-out material: "
        "held-out photo views x each fact's held-out question, never sent to the service; leak baselined on the "
        "reference model's answers before anything was filed.",
        "",
    ]
    for name, result in report["passes"].items():
        lines += markdown_pass(name, result)
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; --quick fills in the tiny world and two subjects."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default=None, help="World preset (default: default; tiny with --quick).")
    parser.add_argument("--subjects", default=None, help="Comma-separated ids (default: every known person).")
    parser.add_argument("--no-keyword-sample", type=int, default=None, help="First N filed again without keywords.")
    parser.add_argument("--data-dir", type=Path, default=None, help="Parent of the services' data dirs (empty).")
    parser.add_argument("--world-cache", type=Path, default=Path(".lethe"), help="Where the world is built/reused.")
    parser.add_argument("--timeout", type=float, default=1200, help="Seconds one request may take.")
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    parser.add_argument("--markdown", dest="markdown_path", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="Tiny world, p000 and one retain person, one service.")
    args = parser.parse_args(argv)
    args.world = args.world or ("tiny" if args.quick else "default")
    if args.no_keyword_sample is None:
        args.no_keyword_sample = 0 if args.quick else 6
    stem = f"many-requests-{args.world}{'-quick' if args.quick else ''}"
    args.json_path = args.json_path or RESULTS / f"{stem}.json"
    args.markdown_path = args.markdown_path or RESULTS / f"{stem}.md"
    return args


def choose_subjects(world: World, subjects: str | None, quick: bool) -> list[str]:
    """The ids to file: as given, p000 and the first retain person with --quick, else every known person."""
    if subjects:
        ids = [s.strip() for s in subjects.split(",") if s.strip()]
        for pid in ids:
            world.person(pid)  # unknown ids fail here, before any service starts
        return ids
    if quick:
        return [world.split("forget1")[0].id, world.split("retain")[0].id]
    return known_people(world)


def run_service_pass(args: argparse.Namespace, world: World, name: str, subjects: list[str], keywords: bool) -> dict:
    """A fresh service, one pass of filing into it, the service stopped."""
    data_dir = fresh_data_dir(world, args.data_dir, name)
    log = data_dir / "serve.log"
    print(f"{name}: {len(subjects)} requests into a fresh service (data dir {data_dir}, log {log})", flush=True)
    with running_service(world, data_dir, log) as http:
        return run_pass(http, world, args.world_cache, subjects, keywords, args.timeout)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the passes, print the tables, write JSON and markdown."""
    args = parse_args(argv)
    world = built_world(args.world, args.world_cache)
    subjects = choose_subjects(world, args.subjects, args.quick)
    passes = {"as exported": run_service_pass(args, world, "as-exported", subjects, keywords=True)}
    sample = subjects[: args.no_keyword_sample]
    if sample:
        passes["without keywords"] = run_service_pass(args, world, "no-keywords", sample, keywords=False)
    report = {"world": args.world, "subjects": subjects, "machine": machine(), "max_leak": MAX_LEAK, "passes": passes}
    text = markdown(report)
    print("\n" + text)
    for path, content in ((args.json_path, json.dumps(report, indent=1)), (args.markdown_path, text + "\n")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    print(f"wrote {args.json_path} and {args.markdown_path}")


if __name__ == "__main__":
    main()
