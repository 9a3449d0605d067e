"""One method's row of the forgetting table on the reference world: leakage, quality, privacy and utility."""

from __future__ import annotations

import numpy as np

from unlearning.cagul.gate import CagulGate
from unlearning.config import REFUSAL_ANSWER
from unlearning.evaluation.answering import answer_batched
from unlearning.evaluation.cases import ask, ask_named, fact_cases, forget_cases, named_cases
from unlearning.evaluation.drivers.forgetting import named_leaks, split_answers, split_leaks
from unlearning.evaluation.loaders import BenchmarkItem
from unlearning.evaluation.metrics.gate import gate_rates
from unlearning.evaluation.metrics.leakage import refusal_rate, swap_rate
from unlearning.evaluation.metrics.privacy import (
    answer_probability,
    case_stats,
    forget_quality,
    item_truth_ratios,
    membership_auc,
    min_k_plus_plus_score,
    min_k_score,
    token_stats,
    truth_ratio_forget_score,
    truth_ratio_retain_score,
    truth_ratios,
)
from unlearning.evaluation.metrics.utility import identical_rate, mean_rouge_l_recall, model_utility
from unlearning.world.people import Person
from unlearning.world.store import World


def evaluate_row(
    gate: CagulGate,
    world: World,
    forget: list[Person],
    retain: list[Person],
    unseen: list[Person],
) -> tuple[dict[str, float | None], dict[str, list]]:
    """Every metric of one row that needs no other model, plus the raw lists `compare_rows` needs."""
    splits = forget_cases(world, forget)
    answers = split_answers(gate, world, splits)
    leaks = split_leaks(splits, answers)
    all_forget = [c for cases in splits.values() for c in cases]
    all_answers = [a for name in splits for a in answers[name]]

    served_retain = [p for p in retain if not p.protected]
    retain_cases = fact_cases(world, served_retain)
    retain_answers = ask(gate, world, retain_cases)
    unseen_cases = fact_cases(world, unseen)
    unseen_answers = ask(gate, world, unseen_cases)

    forget_facts = fact_cases(world, forget)
    forget_stats = case_stats(gate, world, forget_facts, [c.fact.answer for c in forget_facts])
    unseen_stats = case_stats(gate, world, unseen_cases, [c.fact.answer for c in unseen_cases])
    retain_stats = case_stats(gate, world, retain_cases, [c.fact.answer for c in retain_cases])
    forget_ratios = truth_ratios(gate, world, forget_facts)
    retain_ratios = truth_ratios(gate, world, retain_cases)

    retain_probability = float(np.mean([answer_probability(lp) for lp, _, _ in retain_stats]))
    rouge_retain = mean_rouge_l_recall(retain_answers, [c.fact.answer for c in retain_cases])
    retain_truth = truth_ratio_retain_score(retain_ratios)
    named = named_leaks(gate, world, forget) if world.config.named_questions else {}
    # Others asked by name, with no photo: what a text gate that fires on the wrong names would change.
    others_named = named_cases(world, served_retain + unseen, with_photo=False, per_person=NAMED_PER_PERSON)
    tpr = fpr = None
    if len(gate):
        tpr, fpr = gate_rates(gate, world, forget, retain + unseen)
    row: dict[str, float | None] = {
        "leak_direct": leaks["direct"],
        "leak_paraphrase": leaks["paraphrase"],
        "leak_new_image": leaks["new_image"],
        "leak_named": named.get("leak_named"),
        "leak_named_other_photo": named.get("leak_named_other_photo"),
        "refusal_rate": refusal_rate(all_answers, REFUSAL_ANSWER),
        "swap_rate": swap_rate(world, all_forget, all_answers),
        "rouge_forget": mean_rouge_l_recall(answers["direct"], [c.fact.answer for c in splits["direct"]]),
        "rouge_retain": rouge_retain,
        "probability_forget": float(np.mean([answer_probability(lp) for lp, _, _ in forget_stats])),
        "probability_retain": retain_probability,
        "truth_ratio_forget": truth_ratio_forget_score(forget_ratios),
        "truth_ratio_retain": retain_truth,
        "mia_auc": membership_auc(
            [min_k_score(lp) for lp, _, _ in forget_stats], [min_k_score(lp) for lp, _, _ in unseen_stats]
        ),
        "mia_auc_minkpp": membership_auc(
            [min_k_plus_plus_score(*s) for s in forget_stats], [min_k_plus_plus_score(*s) for s in unseen_stats]
        ),
        "model_utility": model_utility([retain_probability, rouge_retain, retain_truth]),
        "gate_tpr": tpr,
        "gate_fpr": fpr,
    }
    raw: dict[str, list] = {
        "forget_truth_ratios": forget_ratios,
        "retain_answers": retain_answers,
        "unseen_answers": unseen_answers,
        "named_answers": ask_named(gate, world, others_named) if world.config.named_questions else [],
    }
    return row, raw


# Named questions per retain or unseen person whose answers are compared with the reference's.
NAMED_PER_PERSON = 12


def compare_rows(rows: list[dict], raws: list[dict], reference: int, retain_model: int) -> None:
    """Fill in what compares each row with other models: forget quality and answers kept identical."""
    for row, raw in zip(rows, raws, strict=True):
        row["forget_quality"] = forget_quality(raw["forget_truth_ratios"], raws[retain_model]["forget_truth_ratios"])
        row["retain_identical"] = identical_rate(raw["retain_answers"], raws[reference]["retain_answers"])
        if raw.get("named_answers"):
            row["named_identical"] = identical_rate(raw["named_answers"], raws[reference]["named_answers"])
        row["unseen_identical"] = identical_rate(raw["unseen_answers"], raws[reference]["unseen_answers"])


def benchmark_scores(gate: CagulGate, items: list[BenchmarkItem]) -> dict[str, float | None]:
    """ROUGE-L recall, answer probability and (where the data has them) truth ratios on benchmark items."""
    if not items:
        raise ValueError("no benchmark items to score")
    images, questions = [it.image for it in items], [it.question for it in items]
    answers = [a.answer for a in answer_batched(gate, images, questions)]
    stats = token_stats(gate, images, questions, [it.answer for it in items])
    with_truth = [it for it in items if it.paraphrased_answer and it.perturbed_answers]
    ratios = item_truth_ratios(
        gate,
        [it.image for it in with_truth],
        [it.question for it in with_truth],
        [it.paraphrased_answer or "" for it in with_truth],
        [it.perturbed_answers for it in with_truth],
    )
    return {
        "rouge_l_recall": mean_rouge_l_recall(answers, [it.answer for it in items]),
        "probability": float(np.mean([answer_probability(lp) for lp, _, _ in stats])),
        "truth_ratio_forget_score": truth_ratio_forget_score(ratios) if ratios else None,
        "truth_ratio_retain_score": truth_ratio_retain_score(ratios) if ratios else None,
    }
