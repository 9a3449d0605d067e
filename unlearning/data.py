"""What an unlearning method trains on: one deletion request's data and the operator's retain set."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from unlearning.errors import InvalidInputError

MAX_QA_PAIRS = 512
MAX_ALIASES = 16
MAX_ALIAS_CHARS = 100
IMAGE_MODES = ("RGB", "RGBA", "L")


def pixels_sha256(image: Image.Image) -> str:
    """sha256 of an image's RGB pixels: the same photo whatever file format or metadata carried it."""
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def validate_image(image: object, label: str = "image", min_side: int = 8) -> Image.Image:
    """The image as RGB, or a typed error saying what to fix."""
    if not isinstance(image, Image.Image):
        raise InvalidInputError(f"{label} is a {type(image).__name__}, not a PIL image")
    if image.mode not in IMAGE_MODES:
        raise InvalidInputError(f"{label} has mode {image.mode!r}: send an RGB image")
    if min(image.size) < min_side:
        raise InvalidInputError(
            f"{label} is {image.size[0]}x{image.size[1]} px: send at least {min_side}x{min_side} px"
        )
    return image.convert("RGB")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    keyword: str | None = None


@dataclass
class ForgetData:
    """Photos of one subject and the question/answer pairs the model must stop revealing."""

    subject: str
    images: list[Image.Image]
    qa_pairs: list[QA]
    # The subject's names: a question naming one of them is refused too, with any photo or none.
    aliases: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.subject.strip():
            raise InvalidInputError("subject is empty: give the request a subject label")
        if not self.images:
            raise InvalidInputError("no images: a forget request needs at least one photo of the subject")
        if not self.qa_pairs:
            raise InvalidInputError("qa_pairs is empty: list at least one question/answer pair to forget")
        if len(self.qa_pairs) > MAX_QA_PAIRS:
            raise InvalidInputError(f"{len(self.qa_pairs)} qa_pairs is over the limit of {MAX_QA_PAIRS}")
        for i, qa in enumerate(self.qa_pairs):
            if not qa.question.strip() or not qa.answer.strip():
                raise InvalidInputError(f"qa_pairs[{i}] has an empty question or answer")
        for i, image in enumerate(self.images):
            validate_image(image, f"images[{i}]", min_side=16)
        validate_aliases(self.aliases)


def validate_aliases(aliases: list[str]) -> None:
    """Nothing, or a typed error saying which alias to fix."""
    if len(aliases) > MAX_ALIASES:
        raise InvalidInputError(f"{len(aliases)} aliases is over the limit of {MAX_ALIASES}")
    seen = set()
    for i, alias in enumerate(aliases):
        if not isinstance(alias, str) or not 1 <= len(alias.strip()) <= MAX_ALIAS_CHARS:
            raise InvalidInputError(f"aliases[{i}] must be a name of 1 to {MAX_ALIAS_CHARS} characters")
        if not any(c.isalnum() for c in alias):
            raise InvalidInputError(f"aliases[{i}] {alias!r} has no letter or digit: give a name")
        if alias.strip().lower() in seen:
            raise InvalidInputError(f"aliases[{i}] {alias!r} repeats an earlier alias")
        seen.add(alias.strip().lower())


@dataclass
class RetainSet:
    """Operator-configured data that must stay untouched: QA samples, their images and extra negatives."""

    images: list[Image.Image]
    qa: list[tuple[int, QA]]  # (index into images, QA)
    negatives: list[Image.Image] = field(default_factory=list)
    heldout_negatives: list[Image.Image] = field(default_factory=list)
    # Many more negatives, never all trained on: a gate trains on those nearest its subject (hard negatives). A
    # callable, because only a retry for a gate that fires on others mines them: the default never renders them.
    gallery: Callable[[], list[Image.Image]] = list

    def __post_init__(self) -> None:
        if not self.images or not self.qa:
            raise InvalidInputError("the retain set is empty: configure retain images and QA pairs")
