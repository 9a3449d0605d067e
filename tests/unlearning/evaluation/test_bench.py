"""The forgetting table, reduced (quick steps, two methods, forget1) on the tiny world's real models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lethe.cli import app
from unlearning.errors import InvalidInputError
from unlearning.evaluation.drivers.bench import COLUMNS, RowSpec, plan_rows, run_in_process
from unlearning.world import World

REQUIRED = (
    "method", "leak_direct", "leak_paraphrase", "leak_new_image", "refusal_rate", "swap_rate", "rouge_forget",
    "rouge_retain", "truth_ratio_forget", "forget_quality", "mia_auc", "model_utility", "trainable_params",
    "wall_seconds", "peak_mem_mb",
)  # fmt: skip
RATES = [c for c in COLUMNS if c not in ("trainable_params", "wall_seconds", "peak_mem_mb")]


@pytest.fixture(scope="module")
def quick_table(tiny_world: World, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", "quality", "--split", "forget1", "--methods", "cagul,idk", "--no-ablations", "--quick"]
    args += ["--json", str(out / "q.json"), "--markdown", str(out / "q.md"), "--world", "tiny"]
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "| cagul |" in (out / "q.md").read_text()
    return json.loads((out / "q.json").read_text())


def test_table_has_every_required_column_for_each_row(quick_table: dict) -> None:
    assert [r["method"] for r in quick_table["rows"]] == ["reference", "retain", "cagul", "idk"]
    assert quick_table["split"] == "forget1" and quick_table["date"] and quick_table["machine"]
    for row in quick_table["rows"]:
        assert set(REQUIRED) <= set(row)
        for column in RATES:
            assert row[column] is None or 0.0 <= row[column] <= 1.0, (row["method"], column, row[column])


def test_table_tells_the_models_apart(quick_table: dict) -> None:
    rows = {r["method"]: r for r in quick_table["rows"]}
    reference, retain, cagul, idk = rows["reference"], rows["retain"], rows["cagul"], rows["idk"]
    # The reference memorised the subject; the model that never saw them does not state their facts.
    assert reference["leak_direct"] >= 0.9 and retain["leak_direct"] <= 0.2
    assert reference["retain_identical"] == 1.0 and reference["trainable_params"] == 0
    # Exact unlearning retrains every parameter; CAGUL trains a small module.
    assert retain["trainable_params"] > cagul["trainable_params"] > 0
    # Only CAGUL has a gate; the gate leaves everyone else's answers alone.
    assert cagul["gate_tpr"] is not None and idk["gate_tpr"] is None
    assert cagul["retain_identical"] >= 0.95 and cagul["model_utility"] == pytest.approx(
        reference["model_utility"], rel=0.05
    )
    assert idk["trainable_params"] > 0


PROBES = ("leak_direct", "leak_paraphrase", "leak_new_image")


def test_cagul_forgets_what_the_reference_leaks(quick_table: dict) -> None:
    rows = {r["method"]: r for r in quick_table["rows"]}
    reference, cagul = rows["reference"], rows["cagul"]
    # Measured on the tiny world, quick settings (one core): the reference leaks 1.0 on every probe (direct,
    # paraphrase, new photo), CAGUL 0.0, refusing 100% of the time, gate TPR 1.0, FPR 0.0. A gate that never fires
    # serves the reference's answers: leak 1.0 and TPR 0.0 fail here.
    for probe in PROBES:
        assert reference[probe] >= 0.8, (probe, reference[probe])
        assert cagul[probe] <= 0.10, (probe, cagul[probe])
    assert cagul["gate_tpr"] >= 0.9 and cagul["gate_fpr"] <= 0.05
    assert cagul["refusal_rate"] >= 0.8  # forgotten by refusing, not by naming someone else
    assert cagul["swap_rate"] <= 0.05


def test_rows_are_reproducible(tiny_world: World, quick_table: dict) -> None:
    spec = next(r for r in plan_rows(["idk"], ablations=False, quick=True) if r.name == "idk")
    again = run_in_process(str(tiny_world.root), "forget1", spec)["row"]
    first = next(r for r in quick_table["rows"] if r["method"] == "idk")
    for column in ("leak_direct", "leak_paraphrase", "rouge_forget", "rouge_retain", "truth_ratio_forget", "mia_auc"):
        assert again[column] == first[column], column


def test_plan_refuses_unknown_methods_and_bad_parameters() -> None:
    with pytest.raises(InvalidInputError, match="unknown methods"):
        plan_rows(["cagul", "retrain-everything"], ablations=False)
    rows = plan_rows(None, ablations=True)
    assert [r.name for r in rows[:8]] == ["reference", "retain", "cagul", "ga", "gd", "kl", "idk", "npo"]
    assert any(r.name == "cagul-lowest-25" and r.params["token_rule"] == "lowest" for r in rows)
    assert RowSpec("reference").method is None
