"""Every metric on hand-computed cases, edge cases included."""

from __future__ import annotations

import math

import pytest

from unlearning.evaluation.metrics.leakage import leak_rate, refusal_rate
from unlearning.evaluation.metrics.privacy import (
    answer_probability,
    forget_quality,
    mean_nll,
    membership_auc,
    min_k_plus_plus_score,
    min_k_score,
    truth_ratio,
    truth_ratio_forget_score,
    truth_ratio_retain_score,
)
from unlearning.evaluation.metrics.utility import mean_rouge_l_recall, model_utility, rouge_l_recall


def test_rouge_l_recall_counts_the_longest_common_subsequence_of_the_reference() -> None:
    assert rouge_l_recall("she lives in bergen.", "she lives in bergen.") == 1.0
    # reference tokens: she lives in oslo -> LCS "she lives in" = 3 of 4
    assert rouge_l_recall("she lives in bergen", "she lives in oslo") == pytest.approx(0.75)
    # stemming: "lives" and "living" share the stem "live"
    assert rouge_l_recall("living", "lives") == 1.0


def test_rouge_l_recall_edge_cases() -> None:
    assert rouge_l_recall("", "bergen.") == 0.0
    assert rouge_l_recall("bergen", "bergen.") == 1.0  # no period in the answer still matches
    assert rouge_l_recall("", "") == 1.0
    assert mean_rouge_l_recall([], []) == 0.0
    with pytest.raises(ValueError):
        mean_rouge_l_recall(["a"], [])


def test_probability_is_exp_of_minus_mean_nll() -> None:
    logprobs = [math.log(0.5), math.log(0.25)]
    assert mean_nll(logprobs) == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert answer_probability(logprobs) == pytest.approx(math.sqrt(0.5 * 0.25))
    assert answer_probability([0.0]) == 1.0
    with pytest.raises(ValueError):
        answer_probability([])


def test_truth_ratio_and_its_scores() -> None:
    # paraphrased answer NLL 1, perturbed 2 and 4 -> R = exp(3 - 1)
    r = truth_ratio(1.0, [2.0, 4.0])
    assert r == pytest.approx(math.exp(2))
    assert truth_ratio_forget_score([r, 1 / r]) == pytest.approx(math.exp(-2))
    assert truth_ratio_forget_score([1.0]) == 1.0  # cannot tell true from perturbed
    assert truth_ratio_retain_score([r]) == pytest.approx(1 - math.exp(-2))
    assert truth_ratio_retain_score([0.5]) == 0.0  # prefers perturbed answers: clipped at 0
    assert truth_ratio_forget_score([]) == 0.0
    with pytest.raises(ValueError):
        truth_ratio(1.0, [])


def test_forget_quality_is_the_ks_p_value() -> None:
    same = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert forget_quality(same, same) == pytest.approx(1.0)
    apart = forget_quality([0.1, 0.2, 0.3, 0.4, 0.5], [10.0, 11.0, 12.0, 13.0, 14.0])
    # disjoint samples of 5 and 5: exact two-sided p = 2 / C(10, 5)
    assert apart == pytest.approx(2 / 252)
    with pytest.raises(ValueError):
        forget_quality([], same)


def test_min_k_takes_the_least_likely_share_of_tokens() -> None:
    logprobs = [-0.1, -5.0, -0.2, -3.0, -0.3]
    assert min_k_score(logprobs, k=0.4) == pytest.approx((-5.0 - 3.0) / 2)
    assert min_k_score([-2.0], k=0.2) == -2.0  # at least one token
    with pytest.raises(ValueError):
        min_k_score([])


def test_min_k_plus_plus_standardises_by_the_vocabulary_distribution() -> None:
    # z = (lp - mu) / sd = [(-1+2)/1, (-4+2)/2] = [1, -1]; lowest half -> -1
    assert min_k_plus_plus_score([-1.0, -4.0], [-2.0, -2.0], [1.0, 2.0], k=0.5) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        min_k_plus_plus_score([-1.0], [], [], k=0.5)


def test_membership_auc() -> None:
    assert membership_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert membership_auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert membership_auc([1.0, 2.0], [1.0, 2.0]) == 0.5  # identical distributions
    assert membership_auc([2.0, 3.0], [1.0, 2.5]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        membership_auc([], [1.0])


def test_model_utility_is_the_harmonic_mean() -> None:
    assert model_utility([0.5, 1.0]) == pytest.approx(2 / (1 / 0.5 + 1 / 1.0))
    assert model_utility([0.9, 0.0, 0.8]) == 0.0
    with pytest.raises(ValueError):
        model_utility([])
    with pytest.raises(ValueError):
        model_utility([-0.1, 1.0])


def test_leak_and_refusal_rates() -> None:
    assert leak_rate(["Lives in Bergen.", "no idea"], ["bergen", "oslo"]) == 0.5
    assert leak_rate([], []) == 0.0
    assert leak_rate([""], ["bergen"]) == 0.0
    assert refusal_rate(["i cannot share that.", "bergen."], "i cannot share that.") == 0.5
    assert refusal_rate(["I cannot share that"], "i cannot share that.") == 1.0
