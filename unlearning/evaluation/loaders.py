"""Local loaders for FIUBench- and MLLMU-Bench-formatted data, so the same evaluation runs on the real benchmarks.

Nothing is downloaded: point a loader at a directory that already holds the files.

FIUBench layout (TOFU-style records, as the authors' scripts read them):
  `full.json`   a list of {"image_path", "name", "question", "answer"[, "paraphrased_answer"][, "perturbed_answer"]}
  `split.json`  {split name: [identity names]}, e.g. {"forget5": [...], "retain95": [...]}
  image files   at `image_path`, relative to the directory.

MLLMU-Bench layout (the Hugging Face release): one folder per subset (`forget_5`, `retain_95`, `Test_Set`, ...)
holding parquet files with columns `image` ({"bytes": ...}), `ID`, `question`, `answer` and optionally
`Generation_Task` (a list of {"Question", "Ground_Truth"}).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from unlearning.data import QA, ForgetData, RetainSet, validate_image
from unlearning.errors import InvalidInputError


@dataclass(frozen=True)
class BenchmarkItem:
    """One image + question + answer of a benchmark, with what the truth ratio needs when present."""

    subject: str
    image: Image.Image
    question: str
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = field(default_factory=tuple)


def _require(record: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if not isinstance(record.get(k), str) or not record[k].strip()]
    if missing:
        raise InvalidInputError(f"{where} lacks {missing}: every record needs non-empty {list(keys)}")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InvalidInputError(f"{path} not found: a FIUBench directory holds full.json and split.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path} is not valid JSON: {exc}") from exc


def load_fiubench(root: str | Path, split: str) -> list[BenchmarkItem]:
    """The records of `split` (a key of split.json) from a FIUBench-formatted directory."""
    root = Path(root)
    records = _read_json(root / "full.json")
    splits = _read_json(root / "split.json")
    if not isinstance(records, list) or not isinstance(splits, dict):
        raise InvalidInputError("full.json must be a list of records and split.json an object of name lists")
    if split not in splits:
        raise InvalidInputError(f"split {split!r} not in split.json; it has {sorted(splits)}")
    names = set(splits[split])
    items = []
    images: dict[Path, Image.Image] = {}  # records share photos: load each file once
    for i, record in enumerate(records):
        _require(record, ("image_path", "name", "question", "answer"), f"full.json[{i}]")
        if record["name"] not in names:
            continue
        image_path = (root / record["image_path"]).resolve()
        if root.resolve() not in image_path.parents:
            raise InvalidInputError(f"full.json[{i}].image_path points outside {root}")
        if not image_path.is_file():
            raise InvalidInputError(f"full.json[{i}].image_path {record['image_path']!r} not found")
        if image_path not in images:
            with Image.open(image_path) as im:
                images[image_path] = validate_image(im, f"full.json[{i}] image")
        image = images[image_path]
        perturbed = record.get("perturbed_answer") or []
        items.append(
            BenchmarkItem(
                subject=record["name"],
                image=image,
                question=record["question"],
                answer=record["answer"],
                paraphrased_answer=record.get("paraphrased_answer"),
                perturbed_answers=tuple([perturbed] if isinstance(perturbed, str) else perturbed),
            )
        )
    if not items:
        raise InvalidInputError(f"split {split!r} matched no record in full.json")
    return items


def load_mllmu_bench(root: str | Path, subset: str) -> list[BenchmarkItem]:
    """The QA pairs of one MLLMU-Bench subset folder (e.g. `forget_5`) read from its parquet files."""
    import pyarrow.parquet as pq

    folder = Path(root) / subset
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise InvalidInputError(f"no parquet files under {folder}: expected an MLLMU-Bench subset folder")
    items = []
    for path in files:
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            where = f"{path.name} row {i}"
            image_field = row.get("image")
            data = image_field.get("bytes") if isinstance(image_field, dict) else image_field
            if not isinstance(data, bytes | bytearray):
                raise InvalidInputError(f"{where} has no image bytes")
            try:
                with Image.open(io.BytesIO(data)) as im:
                    image = validate_image(im, f"{where} image")
            except OSError as exc:
                raise InvalidInputError(f"{where}: the image bytes are not a readable image") from exc
            subject = str(row.get("ID") or "").strip()
            if not subject:
                raise InvalidInputError(f"{where} has no ID")
            pairs = []
            if row.get("question") and row.get("answer"):
                pairs.append((row["question"], row["answer"]))
            for task in row.get("Generation_Task") or []:
                if task.get("Question") and task.get("Ground_Truth"):
                    pairs.append((task["Question"], task["Ground_Truth"]))
            if not pairs:
                raise InvalidInputError(f"{where} has no question/answer pair")
            items += [BenchmarkItem(subject, image, q, a) for q, a in pairs]
    return items


def forget_requests(items: list[BenchmarkItem]) -> list[ForgetData]:
    """One deletion request per subject: their distinct images and QA pairs."""
    by_subject: dict[str, list[BenchmarkItem]] = defaultdict(list)
    for item in items:
        by_subject[item.subject].append(item)
    requests = []
    for subject, group in by_subject.items():
        images = list({id(it.image): it.image for it in group}.values())
        requests.append(ForgetData(subject, images, [QA(it.question, it.answer) for it in group]))
    return requests


def retain_set(items: list[BenchmarkItem]) -> RetainSet:
    """The retain side of a benchmark as the operator-configured retain set."""
    images: list[Image.Image] = []
    qa: list[tuple[int, QA]] = []
    for item in items:
        images.append(item.image)
        qa.append((len(images) - 1, QA(item.question, item.answer)))
    return RetainSet(images=images, qa=qa)
