"""The one batched answering helper: every evaluation, build report and verification asks a gate through it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from PIL import Image

from unlearning.deadline import Deadline, check

if TYPE_CHECKING:  # the gate's package imports verification, which imports this module
    from unlearning.cagul.gate import CagulGate, GateAnswer


def answer_batched(
    gate: CagulGate,
    images: Sequence[Image.Image | None],
    questions: Sequence[str],
    batch: int = 64,
    max_new_tokens: int = 24,
    by_question: bool = False,
    deadline: Deadline | None = None,
    where: str = "answering",
) -> list[GateAnswer]:
    """The gate's greedy answers, `batch` at a time, in input order; `deadline` is checked before each batch.

    `by_question`: each batch asks one question, so its prompts never need padding (the figures of the forgetting
    table were measured so: a padded batch can change an answer).
    """
    out: list[GateAnswer | None] = [None] * len(images)
    done = 0
    for chunk in _chunks(questions, batch, by_question):
        check(deadline, f"{where} (answers {done + 1}-{done + len(chunk)} of {len(images)})")
        answers = gate.answer([images[i] for i in chunk], [questions[i] for i in chunk], max_new_tokens)
        for i, answer in zip(chunk, answers, strict=True):
            out[i] = answer
        done += len(chunk)
    return [a for a in out if a is not None]


def _chunks(questions: Sequence[str], batch: int, by_question: bool) -> Iterator[list[int]]:
    """Index lists of at most `batch` rows: consecutive rows, or rows asking the same question."""
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        groups.setdefault(q if by_question else "", []).append(i)
    for rows in groups.values():
        for start in range(0, len(rows), batch):
            yield rows[start : start + batch]
