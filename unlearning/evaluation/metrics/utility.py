"""Utility metrics: what the model still knows and says about everyone it should not forget."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from rouge_score import rouge_scorer
from scipy import stats


@lru_cache(maxsize=1)
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """Share of the reference's longest common subsequence the prediction recovers (stemmed)."""
    if not reference.strip():
        return 1.0 if not prediction.strip() else 0.0
    return float(_rouge().score(reference, prediction)["rougeL"].recall)


def mean_rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> float:
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    return (
        float(np.mean([rouge_l_recall(p, r) for p, r in zip(predictions, references, strict=True)]))
        if predictions
        else 0.0
    )


def model_utility(scores: Sequence[float]) -> float:
    """Harmonic mean of the retain-side scores; 0 as soon as one of them is 0."""
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        raise ValueError("model utility needs at least one score")
    if (values < 0).any():
        raise ValueError("retain-side scores must be non-negative")
    return 0.0 if (values == 0).any() else float(stats.hmean(values))


def identical_rate(answers: Sequence[str], reference: Sequence[str]) -> float:
    if len(answers) != len(reference):
        raise ValueError("answers and reference differ in length")
    if not answers:
        return 1.0
    return sum(a == r for a, r in zip(answers, reference, strict=True)) / len(answers)
