import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lethe.cli import app

runner = CliRunner()
ROOT = str(Path(__file__).resolve().parents[2])


def _run(*args: str, data_dir) -> str:
    result = runner.invoke(app, [*args, "--world", "tiny", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_world_list_prints_people_with_splits(data_dir):
    people = json.loads(_run("world", "list", "--json", data_dir=data_dir))
    assert {"id", "name", "split"} == set(people[0])
    splits = {p["split"] for p in people}
    assert (
        {"forget1", "forget10", "retain", "unseen"} <= splits <= {"forget1", "forget5", "forget10", "retain", "unseen"}
    )


def test_world_export_writes_a_ready_to_file_request(data_dir, tmp_path):
    _run("world", "export", "--subject", "p000", "--out", str(tmp_path), data_dir=data_dir)
    request = json.loads((tmp_path / "request.json").read_text())
    assert request["subject"] and len(request["qa_pairs"]) >= 30
    assert {"question", "answer", "keyword"} == set(request["qa_pairs"][0])
    assert len(request["images"]) == 5 and all((tmp_path / im).is_file() for im in request["images"])
    assert "heldout_images" not in request
    _run("world", "export", "--subject", "p000", "--out", str(tmp_path / "h"), "--heldout", data_dir=data_dir)
    held = json.loads((tmp_path / "h" / "request.json").read_text())
    assert len(held["heldout_images"]) == 1 and len(held["heldout_qa_pairs"]) == 10
    assert not set(held["heldout_images"]) & set(held["images"])


def test_world_export_writes_the_name_as_drawn_and_files_it_as_an_alias(data_dir, tmp_path):
    people = {p["id"]: p["name"] for p in json.loads(_run("world", "list", "--json", data_dir=data_dir))}
    for extra in ((), ("--inline",)):
        out = tmp_path / ("inline" if extra else "files")
        _run("world", "export", "--subject", "p001", "--out", str(out), *extra, data_dir=data_dir)
        request = json.loads((out / "request.json").read_text())
        assert request["name"] == people["p001"]
        assert request["aliases"] == [people["p001"], people["p001"].split()[-1]]


def test_export_of_unknown_subject_fails_with_a_clear_message(data_dir, tmp_path):
    result = runner.invoke(
        app,
        [
            "world",
            "export",
            "--subject",
            "nobody",
            "--out",
            str(tmp_path),
            "--world",
            "tiny",
            "--data-dir",
            str(data_dir),
        ],
    )
    assert result.exit_code != 0
    assert "unknown subject" in result.output


def test_the_in_process_demo_is_one_command_that_says_it_files_nothing():
    from lethe.commands.demo import subject_ids

    assert runner.invoke(app, ["forget", "--subjects", "p000"]).exit_code == 2  # no command to mistake for filing
    shown = " ".join(runner.invoke(app, ["demo", "--help"]).output.replace("│", " ").split())
    assert "nothing filed" in shown and "POST /v1/forget-requests" in shown
    assert subject_ids(None) == ["p000"]
    assert subject_ids(["p000, p001", "p002"]) == ["p000", "p001", "p002"]


@pytest.mark.slow
def test_demo_forgets_the_subject_and_leaves_everyone_else_alone(data_dir, tiny_world, backbone, monkeypatch):
    import unlearning.evaluation.drivers.demo as demo
    from unlearning.backbones import parameters_sha256

    hashes: list[str] = []  # every hash the demo takes of the base model it trains against

    def recording_sha256(model):  # type: ignore[no-untyped-def]
        hashes.append(parameters_sha256(model))
        return hashes[-1]

    monkeypatch.setattr(demo, "parameters_sha256", recording_sha256)
    # p000: the subject these bounds were measured on. On this machine's fp32 tiny build the reference itself
    # reveals only 0.30 of p001's facts on the held-out photo, so p001 cannot show forgetting there.
    out = json.loads(_run("demo", "--subject", "p000", "--json", data_dir=data_dir))
    assert out["subject"] == "p000"
    for when in ("before", "after"):
        assert set(out[when]) == {
            "leak_direct",
            "leak_paraphrase",
            "leak_new_image",
            "leak_named",
            "leak_named_other_photo",
        }
    # The reference model states the subject's facts; after one module it does not, on the training photos with
    # the training questions, with paraphrased questions, and on a photo the module never saw.
    assert out["before"]["leak_direct"] >= 0.9
    assert out["before"]["leak_paraphrase"] >= 0.8 and out["before"]["leak_new_image"] >= 0.8
    assert out["after"]["leak_direct"] <= 0.05
    assert out["after"]["leak_paraphrase"] <= 0.10 and out["after"]["leak_new_image"] <= 0.10
    # Asked by name (held-out phrasings and name variants), with no photo and with another person's.
    assert out["before"]["leak_named"] >= 0.9 and out["before"]["leak_named_other_photo"] >= 0.9
    assert out["after"]["leak_named"] <= 0.05 and out["after"]["leak_named_other_photo"] <= 0.05
    # Everyone else gets the reference model's answers; the gate fires on the subject's photos only.
    assert out["retain_identical"] >= 0.99 and out["unseen_identical"] >= 0.99
    assert out["gate_tpr"] >= 0.9 and out["gate_fpr"] <= 0.01
    # A small module beside a frozen base model whose parameters are bit-for-bit the ones on disk.
    assert 0 < out["module_params"] < out["base_params"]
    assert out["base_model_unchanged"] is True
    assert len(hashes) >= 2 and set(hashes) == {parameters_sha256(backbone.model)}


def test_keys_create_list_revoke(tmp_path, monkeypatch):
    from core.db import make_engine, make_session_factory, transaction
    from core.keys.repository import ApiKeyRepository

    monkeypatch.setenv("LETHE_DATA_DIR", str(tmp_path))
    created = runner.invoke(app, ["keys", "create", "--name", "app", "--scopes", "vqa,forget:read"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    listed = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)
    assert [(k["name"], k["scopes"], k["revoked_at"]) for k in listed] == [("app", ["forget:read", "vqa"], None)]
    assert token not in json.dumps(listed)
    sessions = make_session_factory(make_engine(f"sqlite:///{tmp_path / 'lethe.db'}"))
    with transaction(sessions) as session:
        assert ApiKeyRepository(session).authenticate(token) is not None
    assert runner.invoke(app, ["keys", "revoke", listed[0]["id"]]).exit_code == 0
    with transaction(sessions) as session:
        assert ApiKeyRepository(session).authenticate(token) is None
    bad = runner.invoke(app, ["keys", "create", "--name", "x", "--scopes", "root"])
    assert bad.exit_code != 0 and "root" in bad.output


def test_serve_bootstrap_prints_a_first_admin_key_once(tmp_path, capsys):
    from core.db import make_engine, make_session_factory, transaction, upgrade_database
    from core.keys.repository import ApiKeyRepository
    from core.settings import Settings
    from lethe.runner import bootstrap_admin

    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings.resolved_database_url)
    bootstrap_admin(settings)
    printed = capsys.readouterr().err
    token = printed.split("store it): ")[1].split()[0]
    sessions = make_session_factory(make_engine(settings.resolved_database_url))
    with transaction(sessions) as session:
        key = ApiKeyRepository(session).authenticate(token)
        assert key is not None and key.scopes == ["admin"]
    bootstrap_admin(settings)  # keys exist now: nothing new, nothing printed
    assert "admin key" not in capsys.readouterr().err


def test_serve_with_a_malformed_bootstrap_key_exits_at_once_naming_the_setting(tmp_path):
    """Validated before the world is built (minutes on a first start), and the bad value is never echoed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update({"LETHE_BOOTSTRAP_ADMIN_KEY": "admin-password-123", "LETHE_WORLD": "default", "PYTHONPATH": ROOT})
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lethe.cli", "serve", "--data-dir", str(tmp_path / "data"), "--port", "0"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, errors = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("lethe serve went on starting with a malformed LETHE_BOOTSTRAP_ADMIN_KEY")
    assert proc.returncode != 0 and time.monotonic() - started < 30
    assert "LETHE_BOOTSTRAP_ADMIN_KEY" in errors and "lethe_<12 hex>" in errors, errors
    assert "admin-password-123" not in out + errors
    assert not (tmp_path / "data" / "worlds").exists()


def test_world_build_for_serving_builds_the_reference_model_only(data_dir, tiny_world):
    """Compose's one-shot `world` service: what the API and workers load, without the bench's retain model."""
    result = runner.invoke(
        app,
        ["world", "build", "--serving", "--world", "tiny", "--data-dir", str(data_dir)],
        env={"LETHE_MODEL_PATH": ""},
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tiny_world.root)
    assert "reference:" in result.stderr and "retain:" not in result.stderr


def test_world_build_for_serving_a_checkpoint_checks_it_is_mounted(tmp_path, tiny_world):
    """With LETHE_MODEL_PATH nothing is trained: the checkpoint and its retain set must be there, or nothing starts."""
    from unlearning.world.requests import write_retain_folder

    write_retain_folder(tiny_world, tmp_path / "retain", lookalikes=10, benign=False)
    command = ["world", "build", "--serving", "--world", "tiny", "--data-dir", str(tmp_path / "data")]
    retain = {"LETHE_RETAIN_DIR": str(tmp_path / "retain")}
    missing = runner.invoke(app, command, env={"LETHE_MODEL_PATH": str(tmp_path / "models" / "llava"), **retain})
    assert missing.exit_code == 2
    said = " ".join(missing.stderr.split())  # rich wraps long lines
    assert "holds no checkpoint" in said and "./models" in said
    no_retain = runner.invoke(
        app, command, env={"LETHE_MODEL_PATH": str(tiny_world.reference_model_dir), "LETHE_RETAIN_DIR": ""}
    )
    assert no_retain.exit_code == 2 and "LETHE_RETAIN_DIR" in no_retain.output
    mounted = runner.invoke(app, command, env={"LETHE_MODEL_PATH": str(tiny_world.reference_model_dir), **retain})
    assert mounted.exit_code == 0, mounted.output
    assert "with the retain set at" in " ".join(mounted.stderr.split())  # rich wraps long lines
    assert not (tmp_path / "data").exists()  # nothing built or trained beside the checkpoint


def test_serve_with_a_checkpoint_path_that_holds_none_exits_naming_it(tmp_path):
    """`lethe serve` checks LETHE_MODEL_PATH as compose's world service does: nothing starts without the model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update(
        {
            "LETHE_MODEL_PATH": str(tmp_path / "models" / "llava"),
            "LETHE_RETAIN_DIR": str(tmp_path / "retain"),
            "LETHE_MASTER_KEY_FILE": str(tmp_path / "config" / "master.key"),
            "PYTHONPATH": ROOT,
        }
    )
    command = [sys.executable, "-m", "lethe.cli", "serve", "--data-dir", str(tmp_path / "data"), "--port", "0"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    said = "".join(result.stderr.split())  # rich wraps long lines on stderr
    assert f"LETHE_MODEL_PATH={tmp_path / 'models' / 'llava'}holdsnocheckpoint" in said, result.stderr
    assert not (tmp_path / "data" / "lethe.db").exists()  # no database, no worker, no API


def test_progress_without_a_terminal_is_a_line_at_every_tenth_of_each_phase(capsys, monkeypatch):
    from rich.console import Console

    from lethe.commands import common

    # As a log file or a container's output is (FORCE_COLOR would make pytest's stderr a terminal to Rich).
    monkeypatch.setattr(common, "err", Console(stderr=True, force_terminal=False))
    with common.Bars() as bars:
        for step in range(1, 101):
            bars("reference", step, 100, 2.0 / step)
        for step in range(1, 21):  # the same name, its next stage: a total of its own
            bars("reference", step, 20, float("nan"))  # enrollment reports no loss
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines[:11]] == [f"reference: {s}/100" for s in [1, *range(10, 101, 10)]]
    assert lines[0] == "reference: 1/100, loss 2.000"  # no time left to guess from one step
    assert lines[10] == "reference: 100/100, loss 0.020, about 0 min left"
    assert [line.split(",")[0] for line in lines[11:]] == [f"reference: {s}/20" for s in [1, *range(2, 21, 2)]]
    assert lines[11] == "reference: 1/20" and "loss" not in lines[-1]
