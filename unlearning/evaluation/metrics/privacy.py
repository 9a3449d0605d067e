"""Likelihood and privacy metrics: teacher-forced token log-probabilities, truth ratios, membership inference.

The definitions are FIUBench's and MLLMU-Bench's; the functions on numbers are pure, the ones on a gate measure it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import stats

from unlearning.losses import answer_token_stats

if TYPE_CHECKING:
    from unlearning.cagul.gate import CagulGate
    from unlearning.evaluation.cases import Case
    from unlearning.world.store import World

TokenStats = tuple[list[float], list[float], list[float]]  # per answer token: log p, and log p's mean and std


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


def token_stats(
    gate: CagulGate, images: list[Image.Image], questions: list[str], answers: list[str], batch: int = 64
) -> list[TokenStats]:
    """Teacher-forced log-probabilities of each answer given its image and question, through the gate."""
    bb = gate.backbone
    out: list[TokenStats] = []
    for start in range(0, len(images), batch):
        rows = gate.dispatch(
            images[start : start + batch],
            questions[start : start + batch],
            answers[start : start + batch],
            lambda b, o: answer_token_stats(bb.logits(b, o), b.labels),  # type: ignore[arg-type]
        )
        out += [r for r, _, _ in rows]
    return out


def case_stats(gate: CagulGate, world: World, cases: list[Case], answers: list[str]) -> list[TokenStats]:
    images = [world.image(c.person.id, c.view) for c in cases]
    return token_stats(gate, images, [c.question for c in cases], answers)


def item_truth_ratios(
    gate: CagulGate, images: list[Image.Image], questions: list[str], paraphrased: list[str], perturbed: list[tuple]
) -> list[float]:
    """Per item: how much more likely the paraphrased true answer is than its perturbed versions."""
    expanded = [
        (im, q, a)
        for im, q, p, wrong in zip(images, questions, paraphrased, perturbed, strict=True)
        for a in (p, *wrong)
    ]
    stats = token_stats(gate, [e[0] for e in expanded], [e[1] for e in expanded], [e[2] for e in expanded])
    nlls = iter(mean_nll(lp) for lp, _, _ in stats)
    ratios = []
    for wrong in perturbed:
        true_nll = next(nlls)
        ratios.append(truth_ratio(true_nll, [next(nlls) for _ in wrong]))
    return ratios


def truth_ratios(gate: CagulGate, world: World, cases: list[Case]) -> list[float]:
    return item_truth_ratios(
        gate,
        [world.image(c.person.id, c.view) for c in cases],
        [c.question for c in cases],
        [c.fact.paraphrased_answer for c in cases],
        [c.fact.perturbed_answers for c in cases],
    )
