"""The operator's retain set: what every module is trained and checked against, from the world or from a folder.

Layout of a retain folder (`lethe retain init DIR` writes one from the reference world):

    DIR/retain.jsonl     one sample a line: {"image", "question", "answer"[, "keyword", "person"]}; the image a path
                         inside DIR. Retain losses, discriminator negatives and (one person in three) canaries.
    DIR/canaries.jsonl   optional {"image", "question"[, "person"]}: people asked at every activation, never trained
                         on. Without it, every third person of retain.jsonl is a canary instead of a retain sample.
    DIR/negatives/       optional photos of other people (look-alikes): discriminator negatives only.
    DIR/benign/          optional photos no request files (about 1,000): admission control scores a new gate on
                         them. Without it, the canaries' photos.

A sample's `person` groups photos of one person (default: its image); a person any of whose photos is filed for
deletion (same file or same pixels) is dropped from retain samples, canaries and the benign set.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image, UnidentifiedImageError

from unlearning.data import QA, RetainSet, pixels_sha256, validate_image
from unlearning.errors import InvalidInputError

RETAIN_FILE = "retain.jsonl"
CANARY_FILE = "canaries.jsonl"
NEGATIVES_DIR = "negatives"
BENIGN_DIR = "benign"
NAMES_FILE = "names.txt"
MAX_NAME_CHARS = 100
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Without canaries.jsonl, one person in this many is a canary (as the reference world keeps one in three back).
CANARY_EVERY = 3
# One retain photo in this many is kept out of the discriminator's negatives to calibrate its threshold on.
CALIBRATE_EVERY = 5
_FIELDS = {
    RETAIN_FILE: ({"image", "question", "answer"}, {"keyword", "person"}),
    CANARY_FILE: ({"image", "question"}, {"person"}),
}


class RetainSource(Protocol):
    """Where a worker's retain samples, negatives, canaries and benign photos come from."""

    def people_in(self, photo_hashes: Iterable[str]) -> list[str]:
        """People whose photos are among `photo_hashes` (sha256 of a file or of its pixels)."""

    def retain_set(self, exclude: list[str], negative_people: list[str]) -> RetainSet:
        """Retain samples without the `exclude` people; `negative_people` (filed elsewhere) as negatives only."""

    def canaries(self, exclude: list[str], count: int) -> tuple[list[Image.Image], list[str]]:
        """Photos and questions of canary people, without the `exclude` people."""

    def benign(self) -> list[tuple[Image.Image, str | None]]:
        """Photos no request files and the person each shows (None: unknown), for admission control."""

    def known_names(self) -> list[str]:
        """Names of people the source knows: the text gate never takes one for a misspelt forgotten name."""


@dataclass(frozen=True)
class _Sample:
    person: str
    image: int  # index into the folder's images
    question: str
    answer: str = ""
    keyword: str | None = None


class RetainFolder:
    """A retain folder read and checked once: every image decoded, every line validated."""

    def __init__(self, root: str | Path, min_side: int = 16) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InvalidInputError(f"retain set {self.root} is not a folder: {_HINT}")
        self.min_side = min_side
        self.images: list[Image.Image] = []
        self.owners: list[str] = []
        self._index: dict[str, int] = {}
        self._by_hash: dict[str, int] = {}
        self.samples = self._read_jsonl(RETAIN_FILE, required=True)
        canaries = self._read_jsonl(CANARY_FILE, required=False)
        if not canaries:  # derived: every third person of the retain samples, never trained on
            people = list(dict.fromkeys(s.person for s in self.samples))
            kept_back = set(people[::CANARY_EVERY]) if len(people) > 1 else set()
            canaries = [s for s in self.samples if s.person in kept_back]
            self.samples = [s for s in self.samples if s.person not in kept_back]
        self.canary_samples = canaries
        if not self.samples:
            raise InvalidInputError(f"{self.root / RETAIN_FILE} leaves no retain sample: add samples of more people")
        if not self.canary_samples:
            raise InvalidInputError(
                f"{self.root} has no canary: add {CANARY_FILE} or samples of at least two people to {RETAIN_FILE}"
            )
        canary_people = {s.person for s in self.canary_samples}
        if trained := canary_people & {s.person for s in self.samples}:
            raise InvalidInputError(
                f"{self.root / CANARY_FILE}: {sorted(trained)[:3]} are retain samples too: a canary person is never "
                "trained on; give them other person ids or drop them from one file"
            )
        self.negatives = self._folder(NEGATIVES_DIR)
        self.benign_images = self._folder(BENIGN_DIR)
        self.names = read_names(self.root)

    # ---- reading -----------------------------------------------------------------------------
    def _read_jsonl(self, name: str, required: bool) -> list[_Sample]:
        path = self.root / name
        if not path.is_file():
            if required:
                raise InvalidInputError(f"retain set {self.root} has no {name}: {_HINT}")
            return []
        required_fields, optional = _FIELDS[name]
        out = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{where} is not JSON ({exc.msg}): write one JSON object a line") from None
            if not isinstance(row, dict):
                raise InvalidInputError(f"{where} is not a JSON object")
            if missing := required_fields - row.keys():
                raise InvalidInputError(f"{where} lacks {sorted(missing)}: each line needs {sorted(required_fields)}")
            if unknown := row.keys() - required_fields - optional:
                raise InvalidInputError(
                    f"{where} has unknown fields {sorted(unknown)}; allowed: {sorted(required_fields | optional)}"
                )
            for key, value in row.items():
                if not isinstance(value, str) or (key != "keyword" and not value.strip()):
                    raise InvalidInputError(f"{where}: {key} must be a non-empty string")
            image = self._image(row["image"], where)
            person = row.get("person") or row["image"]
            if self.owners[image] not in (row["image"], person):
                raise InvalidInputError(f"{where}: {row['image']} is also a photo of {self.owners[image]!r}")
            self.owners[image] = person
            out.append(_Sample(person, image, row["question"], row.get("answer", ""), row.get("keyword") or None))
        if required and not out:
            raise InvalidInputError(f"{path} is empty: {_HINT}")
        return out

    def _image(self, relative: str, where: str) -> int:
        """Index of the image at `relative` (inside the folder), decoded once."""
        if relative in self._index:
            return self._index[relative]
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise InvalidInputError(f"{where}: image {relative!r} lies outside {self.root}: give a path inside it")
        image = self._open(path, f"{where}: image {relative!r}")
        self._index[relative] = len(self.images)
        self.images.append(image)
        self.owners.append(relative)
        self._by_hash[hashlib.sha256(path.read_bytes()).hexdigest()] = self._index[relative]
        self._by_hash[pixels_sha256(image)] = self._index[relative]
        return self._index[relative]

    def _open(self, path: Path, label: str) -> Image.Image:
        if not path.is_file():
            raise InvalidInputError(f"{label} does not exist")
        try:
            with Image.open(path) as im:
                im.load()
                return validate_image(im.convert("RGB") if im.mode == "P" else im, label, self.min_side)
        except (UnidentifiedImageError, OSError) as exc:
            raise InvalidInputError(f"{label} is not a readable image ({exc})") from None

    def _folder(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.exists():
            return []
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InvalidInputError(f"{folder} holds no image ({', '.join(IMAGE_SUFFIXES)}): add photos or remove it")
        return [self._image(str(p.relative_to(self.root)), str(folder)) for p in files]

    # ---- the worker's view -------------------------------------------------------------------
    def people_in(self, photo_hashes: Iterable[str]) -> list[str]:
        return sorted({self.owners[self._by_hash[h]] for h in photo_hashes if h in self._by_hash})

    def retain_set(self, exclude: list[str], negative_people: list[str]) -> RetainSet:
        gone, others = set(exclude), set(negative_people)
        samples = [s for s in self.samples if s.person not in gone]
        if not samples:
            raise InvalidInputError(f"every retain sample of {self.root} shows a person filed for deletion: add others")
        # One photo in five calibrates the gate's threshold: never a negative it trained on (nor a retain sample).
        calibrate = list(dict.fromkeys(s.image for s in samples))[CALIBRATE_EVERY - 1 :: CALIBRATE_EVERY]
        samples = [s for s in samples if s.image not in set(calibrate)]
        used = list(dict.fromkeys(s.image for s in samples))
        position = {image: i for i, image in enumerate(used)}
        negatives = [i for i in self.negatives if self.owners[i] not in gone]
        negatives += [
            i for i in dict.fromkeys(s.image for s in self.samples + self.canary_samples) if self.owners[i] in others
        ]
        return RetainSet(
            images=[self.images[i] for i in used],
            qa=[(position[s.image], QA(s.question, s.answer, s.keyword)) for s in samples],
            negatives=[self.images[i] for i in negatives],
            heldout_negatives=[self.images[i] for i in calibrate],
        )

    def canaries(self, exclude: list[str], count: int, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
        gone = set(exclude)
        pool = [s for s in self.canary_samples if s.person not in gone]
        sample = random.Random(seed).sample(pool, min(count, len(pool)))
        return [self.images[s.image] for s in sample], [s.question for s in sample]

    def benign(self) -> list[tuple[Image.Image, str | None]]:
        indices = self.benign_images or list(dict.fromkeys(s.image for s in self.canary_samples))
        return [(self.images[i], self.owners[i]) for i in indices]

    def known_names(self) -> list[str]:
        return self.names


def read_names(root: Path) -> list[str]:
    """The names in a retain folder's names.txt (none without one), each line checked: what the model knows as people
    no request forgets, so the text gate never takes one for a misspelt forgotten name."""
    path = root / NAMES_FILE
    if not path.is_file():
        return []
    names = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if len(name) > MAX_NAME_CHARS or not any(c.isalnum() for c in name):
            raise InvalidInputError(
                f"{path}:{number} is not a name: write one name a line, 1 to {MAX_NAME_CHARS} characters with a "
                "letter or digit"
            )
        names.append(name)
    return names


_HINT = "see the retain set layout in README (`lethe retain init DIR` writes a working example)"
