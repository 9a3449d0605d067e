"""The retain set at start: `lethe serve` and a worker refuse a bad folder at once, saying what to fix; a real
checkpoint without one is refused naming the setting; `lethe retain init` writes a folder that loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from core.processes import python_module, worker_command
from core.settings import Settings
from lethe.cli import app
from unlearning.retain import RetainFolder
from unlearning.world import World

ROOT = str(Path(__file__).resolve().parents[2])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update({"PYTHONPATH": ROOT, "LETHE_DATA_DIR": str(tmp_path / "data"), **extra})
    env["LETHE_MASTER_KEY_FILE"] = str(tmp_path / "config" / "master.key")
    return env


def _run_briefly(command: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run `command` expecting it to exit by itself within a minute; its exit status and stderr."""
    proc = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, errors = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{command[2:5]} went on starting with a bad retain set")
    return proc.returncode, out + errors


def test_a_checkpoint_without_a_retain_set_is_refused_naming_the_setting(tmp_path: Path):
    with pytest.raises(ValidationError, match="LETHE_RETAIN_DIR must name the operator's retain set"):
        Settings(model_path=tmp_path / "llava")
    assert Settings(model_path=tmp_path / "llava", retain_dir=tmp_path / "r").retain_dir == tmp_path / "r"
    assert Settings().resolved_model_dtype == "float32"
    assert Settings(device="cuda:0").resolved_model_dtype == "bfloat16"


def test_serve_and_a_worker_exit_at_once_on_a_bad_retain_folder(tmp_path: Path):
    bad = tmp_path / "retain"
    bad.mkdir()
    (bad / "retain.jsonl").write_text('{"image": "images/a.png", "question": "q?"}\n')
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "config.json").write_text("{}")  # a checkpoint is there: the retain set is what is wrong
    env = _env(tmp_path, LETHE_RETAIN_DIR=str(bad), LETHE_MODEL_PATH=str(tmp_path / "llava"))
    started = time.monotonic()
    code, errors = _run_briefly([sys.executable, "-m", "lethe.cli", "serve", "--port", "0"], env, tmp_path)
    assert code == 2 and "invalid setting LETHE_RETAIN_DIR" in errors and "lacks ['answer']" in errors, errors
    assert "retain.jsonl:1" in errors and time.monotonic() - started < 60
    code, errors = _run_briefly(python_module(worker_command()), env, tmp_path)
    assert code != 0 and "the retain set cannot be used" in errors and "lacks ['answer']" in errors, errors


def test_retain_init_writes_a_folder_that_loads(tiny_world: World, tmp_path: Path):
    out = tmp_path / "retain"
    args = ["retain", "init", str(out), "--negatives", "20", "--no-benign", "--world", "tiny"]
    result = CliRunner().invoke(app, [*args, "--data-dir", str(tiny_world.root.parent.parent)])
    assert result.exit_code == 0, result.output
    folder = RetainFolder(out)
    lines = [json.loads(x) for x in (out / "retain.jsonl").read_text().splitlines()]
    assert {"image", "question", "answer", "keyword", "person"} == set(lines[0])
    assert len(folder.negatives) == 20 and {s.person for s in folder.samples}.isdisjoint(
        {s.person for s in folder.canary_samples}
    )
    again = CliRunner().invoke(app, [*args, "--data-dir", str(tiny_world.root.parent.parent)])
    assert again.exit_code == 2 and "is not empty" in " ".join(again.output.replace("│", " ").split())
