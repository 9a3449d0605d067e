"""FIUBench- and MLLMU-Bench-formatted data, written here in those formats, load into forget requests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unlearning.errors import InvalidInputError
from unlearning.evaluation.loaders import forget_requests, load_fiubench, load_mllmu_bench, retain_set


def _png(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (32, 32), colour)


@pytest.fixture
def fiubench_dir(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    records = []
    for n, name in enumerate(["Ann Vale", "Bo Rin", "Cy Mar"]):
        _png((80 * n, 40, 200)).save(tmp_path / "images" / f"{n}.png")
        for q in range(2):
            records.append(
                {
                    "image_path": f"images/{n}.png",
                    "name": name,
                    "question": f"question {q} about this person?",
                    "answer": f"answer {q} of {name}.",
                    "paraphrased_answer": f"it is answer {q} of {name}.",
                    "perturbed_answer": [f"it is answer {q} of someone.", f"it is nothing {q}."],
                }
            )
    (tmp_path / "full.json").write_text(json.dumps(records))
    (tmp_path / "split.json").write_text(json.dumps({"forget5": ["Ann Vale"], "retain95": ["Bo Rin", "Cy Mar"]}))
    return tmp_path


def test_fiubench_split_loads_into_requests_and_a_retain_set(fiubench_dir: Path) -> None:
    forget = load_fiubench(fiubench_dir, "forget5")
    assert {it.subject for it in forget} == {"Ann Vale"} and len(forget) == 2
    assert forget[0].paraphrased_answer == "it is answer 0 of Ann Vale." and len(forget[0].perturbed_answers) == 2
    (request,) = forget_requests(forget)
    assert request.subject == "Ann Vale" and len(request.images) == 1 and len(request.qa_pairs) == 2
    retain = retain_set(load_fiubench(fiubench_dir, "retain95"))
    assert len(retain.qa) == 4 and retain.images[0].size == (32, 32)


def test_fiubench_errors_say_what_to_fix(fiubench_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(InvalidInputError, match=r"not in split\.json"):
        load_fiubench(fiubench_dir, "forget10")
    with pytest.raises(InvalidInputError, match=r"full\.json not found"):
        load_fiubench(tmp_path_factory.mktemp("empty"), "forget5")
    records = json.loads((fiubench_dir / "full.json").read_text())
    records[0]["image_path"] = "../outside.png"
    (fiubench_dir / "full.json").write_text(json.dumps(records))
    with pytest.raises(InvalidInputError, match="outside"):
        load_fiubench(fiubench_dir, "forget5")
    del records[0]["answer"]
    (fiubench_dir / "full.json").write_text(json.dumps(records))
    with pytest.raises(InvalidInputError, match="answer"):
        load_fiubench(fiubench_dir, "forget5")


def _png_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    _png(colour).save(buf, format="PNG")
    return buf.getvalue()


def test_mllmu_bench_subset_loads_from_parquet(tmp_path: Path) -> None:
    (tmp_path / "forget_5").mkdir()
    rows = [
        {
            "image": {"bytes": _png_bytes((10, 20, 30)), "path": None},
            "ID": "7",
            "question": "where does this person live?",
            "answer": "in ravenport.",
            "Generation_Task": [{"Question": "what is their job?", "Ground_Truth": "a baker."}],
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "forget_5" / "train-00000-of-00001.parquet")
    items = load_mllmu_bench(tmp_path, "forget_5")
    assert [(it.subject, it.question) for it in items] == [
        ("7", "where does this person live?"),
        ("7", "what is their job?"),
    ]
    (request,) = forget_requests(items)
    assert len(request.images) == 1 and request.qa_pairs[1].answer == "a baker."
    with pytest.raises(InvalidInputError, match="no parquet files"):
        load_mllmu_bench(tmp_path, "retain_95")
    rows[0]["image"] = {"bytes": b"not an image", "path": None}
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "forget_5" / "train-00000-of-00001.parquet")
    with pytest.raises(InvalidInputError, match="not a readable image"):
        load_mllmu_bench(tmp_path, "forget_5")


def test_same_evaluation_runs_on_fiubench_formatted_data(backbone, tiny_world, tmp_path: Path) -> None:
    # The tiny world's retain people written out in FIUBench format: the memorising reference must score high.
    from unlearning.cagul import CagulGate
    from unlearning.evaluation.drivers.quality import benchmark_scores

    (tmp_path / "images").mkdir()
    records = []
    people = [p for p in tiny_world.split("retain") if not p.protected][:2]
    for p in people:
        tiny_world.image(p.id, 0).save(tmp_path / "images" / f"{p.id}.png")
        records += [
            {
                "image_path": f"images/{p.id}.png",
                "name": p.name,
                "question": f.train_questions[0],
                "answer": f.answer,
                "paraphrased_answer": f.paraphrased_answer,
                "perturbed_answer": list(f.perturbed_answers),
            }
            for f in p.facts
        ]
    (tmp_path / "full.json").write_text(json.dumps(records))
    (tmp_path / "split.json").write_text(json.dumps({"retain": [p.name for p in people]}))
    scores = benchmark_scores(CagulGate(backbone), load_fiubench(tmp_path, "retain"))
    assert scores["rouge_l_recall"] >= 0.9 and scores["probability"] >= 0.5
    assert scores["truth_ratio_retain_score"] is not None and 0.0 <= scores["truth_ratio_retain_score"] <= 1.0
