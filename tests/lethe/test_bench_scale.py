"""The short form of `lethe bench scale`: real enrolled modules, a real server process, the JSON contract."""

import json

from typer.testing import CliRunner

from lethe.cli import app

CONTRACT = {"gate", "n", "p50_ms", "p95_ms", "p50_ratio", "rss_mb", "tpr", "recall_at_k", "fpr", "fpr_upper95"}


def test_bench_scale_writes_both_gates_at_every_count(data_dir, tiny_world, tmp_path):
    # `tiny_world`: the first test to need the world builds both its models side by side, as later tests need both.
    out = tmp_path / "gate-scale.json"
    args = ["bench", "scale", "--world", "tiny", "--counts", "0,3", "--requests", "3", "--candidates", "2"]
    result = CliRunner().invoke(
        app, [*args, "--data-dir", str(data_dir), "--json", str(out), "--markdown", str(tmp_path / "g.md")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {"commit", "date", "machine", "rows"} <= set(report)
    rows = {(r["gate"], r["n"]): r for r in report["rows"]}
    assert set(rows) == {(g, n) for g in ("two_stage", "exhaustive") for n in (0, 3)}
    for (gate, _), row in rows.items():
        assert CONTRACT | {"activation_s"} <= set(row), row
        assert row["p50_ms"] > 0 and row["rss_mb"] > 0 and row["activation_s"] is not None
        assert 0 <= row["fpr"] <= row["fpr_upper95"] <= 1
        assert 0 <= row["timed_gated"] <= 1
        assert rows[(gate, 0)]["p50_ratio"] == 1.0
    # Three enrolled subjects, each asked on a photo its module never trained on; two candidates of three.
    assert rows[("two_stage", 3)]["recall_at_k"] is not None and rows[("exhaustive", 3)]["recall_at_k"] is None
    assert rows[("two_stage", 0)]["tpr"] is None and rows[("two_stage", 3)]["tpr"] is not None
