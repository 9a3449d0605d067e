"""`lethe model check` on checkpoints in the Hugging Face layout (tests/checkpoints.py) and on ones it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lethe.cli import app
from tests.checkpoints import write_llava_checkpoint, write_qwen2_vl_checkpoint, write_unsupported_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {"llava": write_llava_checkpoint(root / "llava"), "qwen2_vl": write_qwen2_vl_checkpoint(root / "qwen")}


def _check(*args: str) -> dict:
    result = runner.invoke(app, ["model", "check", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_llava_report_names_backbone_shapes_cost_and_runs_a_forward(checkpoints):
    report = _check(str(checkpoints["llava"]))
    assert report["architecture"] == "LlavaForConditionalGeneration" and report["backbone"] == "LlavaBackbone"
    assert report["hidden_size"] == 64 and report["gate_tokens"] == 16 and not report["dynamic_resolution"]
    assert set(report["visual_tokens"].values()) == {16}  # fixed resolution: every size becomes 16 tokens
    # No identity encoder beside a downloaded checkpoint: a flattened-token discriminator (16 x 64 -> 128 -> 1, fp32)
    # and the encoder (LayerNorm + 64 -> 256 -> 64, bf16), plus the threshold.
    disc = (16 * 64 * 128 + 128 + 128 + 1 + 1) * 4
    encoder = (64 + 64 + 64 * 256 + 256 + 256 * 64 + 64) * 2
    assert report["module_bytes"] == disc + encoder
    assert report["forward_shape"][0] == 1 and report["forward_seconds"] >= 0


def test_qwen2_vl_report_counts_visual_tokens_per_image_size(checkpoints):
    report = _check(str(checkpoints["qwen2_vl"]), "--size", "48x48", "--size", "80x64", "--size", "640x480")
    assert report["architecture"] == "Qwen2VLForConditionalGeneration" and report["dynamic_resolution"]
    # patch 8, 2x2 merge: 48x48 -> 3x3, 80x64 -> 5x4; 640x480 is shrunk under max_pixels (96x96) to 6x5.
    assert report["visual_tokens"] == {"48x48": 9, "80x64": 20, "640x480": 30}
    assert report["gate_tokens"] == 16


def test_plain_output_is_readable(checkpoints):
    result = runner.invoke(app, ["model", "check", str(checkpoints["qwen2_vl"]), "--size", "48x48"])
    assert result.exit_code == 0, result.output
    assert "Qwen2VLBackbone" in result.stdout and "48x48: 9" in result.stdout and "bytes" in result.stdout


def test_unsupported_architecture_exits_non_zero_naming_it_and_the_supported_ones(tmp_path: Path):
    result = runner.invoke(app, ["model", "check", str(write_unsupported_checkpoint(tmp_path / "llama"))])
    assert result.exit_code == 2
    assert "LlamaForCausalLM" in result.stderr
    assert "LlavaForConditionalGeneration" in result.stderr and "Qwen2VLForConditionalGeneration" in result.stderr


def test_broken_directories_exit_non_zero_saying_what_is_wrong(tmp_path: Path, checkpoints):
    result = runner.invoke(app, ["model", "check", str(tmp_path)])
    assert result.exit_code == 2 and "no config.json" in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((checkpoints["llava"] / "config.json").read_text())
    result = runner.invoke(app, ["model", "check", str(broken)])
    assert result.exit_code == 2 and "LlavaForConditionalGeneration checkpoint that does not load" in result.stderr
    (broken / "config.json").write_text("{not json")
    result = runner.invoke(app, ["model", "check", str(broken)])
    assert result.exit_code == 2 and "not readable JSON" in result.stderr


def test_a_bad_size_is_a_usage_error(checkpoints):
    result = runner.invoke(app, ["model", "check", str(checkpoints["llava"]), "--size", "big"])
    assert result.exit_code == 2 and "WIDTHxHEIGHT" in result.output
