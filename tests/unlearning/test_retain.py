"""The operator's retain folder: a bad layout is refused naming the file and what to fix; people filed for deletion
(by file or pixels) leave retain samples, canaries and the benign set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from unlearning.data import pixels_sha256
from unlearning.errors import InvalidInputError
from unlearning.retain import RetainFolder


def _photo(path: Path, shade: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (shade, 255 - shade, shade // 2)).save(path)
    return path.name


def _folder(root: Path, people: int = 6, photos: int = 2) -> Path:
    lines = []
    for p in range(people):
        for v in range(photos):
            name = f"images/p{p}_v{v}.png"
            _photo(root / name, 20 * p + v)
            lines.append({"image": name, "question": "what is their city?", "answer": f"city {p}", "person": f"p{p}"})
    (root / "retain.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def _lines(root: Path, *lines: object) -> None:
    (root / "retain.jsonl").write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def _refused(root: Path, *needles: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        RetainFolder(root)
    for needle in needles:
        assert needle in str(caught.value), str(caught.value)


def test_a_missing_folder_or_file_says_where_the_layout_is(tmp_path: Path):
    _refused(tmp_path / "nowhere", "is not a folder", "lethe retain init")
    tmp_path.joinpath("empty").mkdir()
    _refused(tmp_path / "empty", "has no retain.jsonl", "lethe retain init")


def test_bad_lines_are_refused_with_file_and_line(tmp_path: Path):
    root = _folder(tmp_path / "r")
    good = {"image": "images/p0_v0.png", "question": "q?", "answer": "a."}
    _lines(root, good, "{not json")
    _refused(root, "retain.jsonl:2 is not JSON")
    _lines(root, {"image": "images/p0_v0.png", "question": "q?"})
    _refused(root, "retain.jsonl:1 lacks ['answer']")
    _lines(root, {**good, "subject": "x"})
    _refused(root, "unknown fields ['subject']")
    _lines(root, {**good, "answer": ""})
    _refused(root, "answer must be a non-empty string")
    _lines(root, {**good, "image": "images/missing.png"})
    _refused(root, "images/missing.png", "does not exist")
    _lines(root, {**good, "image": "../outside.png"})
    _refused(root, "lies outside")
    (root / "images" / "broken.png").write_text("not an image")
    _lines(root, {**good, "image": "images/broken.png"})
    _refused(root, "images/broken.png", "not a readable image")
    _photo(root / "images" / "tiny.png", 1)
    Image.new("RGB", (4, 4)).save(root / "images" / "tiny.png")
    _lines(root, {**good, "image": "images/tiny.png"})
    _refused(root, "4x4 px")


def test_canaries_must_exist_and_never_be_trained_on(tmp_path: Path):
    root = _folder(tmp_path / "one", people=1)
    _refused(root, "no canary")
    root = _folder(tmp_path / "two", people=3)
    (root / "canaries.jsonl").write_text(json.dumps({"image": "images/p0_v0.png", "question": "q?", "person": "p0"}))
    _refused(root, "['p0'] are retain samples too")
    (root / "negatives").mkdir()
    (root / "canaries.jsonl").unlink()
    _refused(root, "negatives holds no image")


def test_filed_people_leave_samples_canaries_and_benign_photos_by_file_or_pixels(tmp_path: Path):
    root = _folder(tmp_path / "r", people=6, photos=3)
    _photo(root / "negatives" / "n0.png", 251)
    folder = RetainFolder(root)
    # Every third person is a canary (p0, p3), never a retain sample; one retain photo in five calibrates.
    assert {s.person for s in folder.canary_samples} == {"p0", "p3"}
    retain = folder.retain_set([], [])
    assert len(retain.heldout_negatives) == 12 // 5 and len(retain.images) == 12 - 12 // 5
    assert len(retain.negatives) == 1 and len(folder.benign()) == 6
    by_file = hashlib.sha256((root / "images" / "p1_v2.png").read_bytes()).hexdigest()
    copy, info = tmp_path / "p3.png", PngInfo()
    info.add_text("comment", "re-sent by a requester")
    Image.open(root / "images" / "p3_v0.png").save(copy, pnginfo=info)  # other bytes, the same pixels
    assert copy.read_bytes() != (root / "images" / "p3_v0.png").read_bytes()
    filed = folder.people_in([by_file, pixels_sha256(Image.open(copy)), "0" * 64])
    assert filed == ["p1", "p3"]
    without = folder.retain_set(filed, negative_people=["p3"])  # p3 filed elsewhere: a negative only
    assert len(without.qa) == 9 - 1 and len(without.heldout_negatives) == 1  # p2, p4, p5; one photo calibrates
    assert len(without.negatives) == 1 + 3
    images, _ = folder.canaries(filed, count=100)
    assert len(images) == 3 and all(im.getpixel((0, 0))[0] < 20 for im in images)  # p0's photos only
    assert {who for _, who in folder.benign()} == {"p0", "p3"}
    with pytest.raises(InvalidInputError, match="filed for deletion"):
        folder.retain_set(["p1", "p2", "p4", "p5"], [])


def test_names_are_read_one_a_line_and_a_bad_one_is_refused_naming_its_line(tmp_path: Path):
    root = _folder(tmp_path / "r")
    assert RetainFolder(root).known_names() == []
    (root / "names.txt").write_text("Poro Rodulu\n\n  rodulu  \n")
    assert RetainFolder(root).known_names() == ["Poro Rodulu", "rodulu"]
    (root / "names.txt").write_text("Poro Rodulu\n--\n")
    _refused(root, "names.txt:2 is not a name", "one name a line")
