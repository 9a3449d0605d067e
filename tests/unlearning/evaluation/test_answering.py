"""The one batched answering helper: input order kept, batches as asked, the deadline checked before each."""

from __future__ import annotations

import pytest
from PIL import Image

from unlearning.cagul.gate import GateAnswer
from unlearning.deadline import Deadline
from unlearning.errors import TimeBudgetExceeded
from unlearning.evaluation.answering import answer_batched


class RecordingGate:
    """Answers 'question@image index' and records every batch it is asked."""

    def __init__(self, images: list[Image.Image]) -> None:
        self.index = {id(im): i for i, im in enumerate(images)}
        self.batches: list[tuple[list[int], list[str], int]] = []

    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 24) -> list[GateAnswer]:
        rows = [self.index[id(im)] for im in images]
        self.batches.append((rows, list(questions), max_new_tokens))
        return [GateAnswer(f"{q}@{r}", None, 0.0) for r, q in zip(rows, questions, strict=True)]


def _inputs(n: int) -> tuple[list[Image.Image], list[str]]:
    return [Image.new("RGB", (4, 4)) for _ in range(n)], [f"q{i % 3}" for i in range(n)]


def test_answers_come_back_in_input_order_in_consecutive_batches() -> None:
    images, questions = _inputs(10)
    gate = RecordingGate(images)
    answers = answer_batched(gate, images, questions, batch=4, max_new_tokens=7)  # type: ignore[arg-type]
    assert [a.answer for a in answers] == [f"{q}@{i}" for i, q in enumerate(questions)]
    assert [rows for rows, _, _ in gate.batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert {tokens for _, _, tokens in gate.batches} == {7}


def test_by_question_batches_ask_one_question_each() -> None:
    images, questions = _inputs(10)
    gate = RecordingGate(images)
    answers = answer_batched(gate, images, questions, batch=3, by_question=True)  # type: ignore[arg-type]
    assert [a.answer for a in answers] == [f"{q}@{i}" for i, q in enumerate(questions)]
    assert all(len(set(asked)) == 1 for _, asked, _ in gate.batches)
    assert [rows for rows, _, _ in gate.batches] == [[0, 3, 6], [9], [1, 4, 7], [2, 5, 8]]


def test_an_expired_deadline_stops_before_the_next_batch() -> None:
    images, questions = _inputs(5)
    gate = RecordingGate(images)
    with pytest.raises(TimeBudgetExceeded, match=r"verification \(answers 1-2 of 5\)"):
        answer_batched(gate, images, questions, batch=2, deadline=Deadline(0), where="verification")  # type: ignore[arg-type]
    assert gate.batches == []
