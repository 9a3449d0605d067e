"""FIUBench / MLLMU-Bench metrics over answers and teacher-forced token log-probabilities.

Definitions follow ../shared/DESIGN.md section 1; every function is pure and takes plain numbers or strings.
"""

from __future__ import annotations

import math
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


def mean_nll(token_logprobs: Sequence[float]) -> float:
    """Mean per-token negative log-likelihood of one answer."""
    if len(token_logprobs) == 0:
        raise ValueError("an answer with no tokens has no likelihood")
    return -float(np.mean(token_logprobs))


def answer_probability(token_logprobs: Sequence[float]) -> float:
    """exp(-mean token NLL): the length-normalised probability of an answer."""
    return math.exp(-mean_nll(token_logprobs))


def truth_ratio(paraphrased_nll: float, perturbed_nlls: Sequence[float]) -> float:
    """R = exp(mean_j L(perturbed_j) - L(paraphrased)); above 1 the model prefers the true answer."""
    if len(perturbed_nlls) == 0:
        raise ValueError("a truth ratio needs at least one perturbed answer")
    return math.exp(float(np.mean(perturbed_nlls)) - paraphrased_nll)


def truth_ratio_forget_score(ratios: Sequence[float]) -> float:
    """mean(min(R, 1/R)): 1 when the model cannot tell true from perturbed answers."""
    r = np.asarray(ratios, dtype=float)
    return float(np.minimum(r, 1 / r).mean()) if r.size else 0.0


def truth_ratio_retain_score(ratios: Sequence[float]) -> float:
    """mean(max(0, 1 - 1/R)): towards 1 as the model prefers true answers more strongly."""
    r = np.asarray(ratios, dtype=float)
    return float(np.maximum(0.0, 1 - 1 / r).mean()) if r.size else 0.0


def forget_quality(unlearned_ratios: Sequence[float], retain_model_ratios: Sequence[float]) -> float:
    """p-value of the two-sample KS test against the model that never saw the forget set."""
    if len(unlearned_ratios) == 0 or len(retain_model_ratios) == 0:
        raise ValueError("forget quality needs truth ratios from both models")
    return float(stats.ks_2samp(unlearned_ratios, retain_model_ratios).pvalue)


def min_k_score(token_logprobs: Sequence[float], k: float = 0.2) -> float:
    """Min-K% Prob: mean log-probability of the k share of least likely tokens (higher = more member-like)."""
    lp = np.sort(np.asarray(token_logprobs, dtype=float))
    if lp.size == 0:
        raise ValueError("an answer with no tokens has no Min-K% score")
    return float(lp[: max(1, int(lp.size * k))].mean())


def min_k_plus_plus_score(
    token_logprobs: Sequence[float], means: Sequence[float], stds: Sequence[float], k: float = 0.2
) -> float:
    """Min-K%++: tokens standardised by the mean and std of log p over the vocabulary at their position."""
    lp, mu, sd = (np.asarray(x, dtype=float) for x in (token_logprobs, means, stds))
    if not (lp.size == mu.size == sd.size) or lp.size == 0:
        raise ValueError("Min-K%++ needs equally long, non-empty token statistics")
    return min_k_score((lp - mu) / np.maximum(sd, 1e-8), k)


def membership_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """ROC AUC of telling members from non-members by score (0.5 = no membership signal)."""
    if len(member_scores) == 0 or len(nonmember_scores) == 0:
        raise ValueError("membership AUC needs scores for members and non-members")
    u = stats.mannwhitneyu(member_scores, nonmember_scores, alternative="two-sided").statistic
    return float(u / (len(member_scores) * len(nonmember_scores)))


def model_utility(scores: Sequence[float]) -> float:
    """Harmonic mean of the retain-side scores; 0 as soon as one of them is 0."""
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        raise ValueError("model utility needs at least one score")
    if (values < 0).any():
        raise ValueError("retain-side scores must be non-negative")
    return 0.0 if (values == 0).any() else float(stats.hmean(values))
