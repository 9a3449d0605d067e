"""One method's row of the forgetting table on the reference world: leakage, quality, privacy and utility."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from unlearning.cagul.gate import CagulGate
from unlearning.evaluation.forgetting import answer_queries, gate_rates
from unlearning.evaluation.leakage import identical_rate, leak_rate, refusal_rate
from unlearning.evaluation.loaders import BenchmarkItem
from unlearning.evaluation.metrics import (
    answer_probability,
    forget_quality,
    mean_nll,
    mean_rouge_l_recall,
    membership_auc,
    min_k_plus_plus_score,
    min_k_score,
    model_utility,
    truth_ratio,
    truth_ratio_forget_score,
    truth_ratio_retain_score,
)
from unlearning.losses import answer_token_stats
from unlearning.world.people import REFUSAL_ANSWER, Fact, Person
from unlearning.world.store import World

TokenStats = tuple[list[float], list[float], list[float]]


@dataclass(frozen=True)
class Case:
    """One question about one fact of one person, asked on one view."""

    person: Person
    fact: Fact
    view: int
    question: str

    @property
    def query(self) -> tuple[str, int, str]:
        return (self.person.id, self.view, self.question)


def forget_cases(world: World, people: list[Person]) -> dict[str, list[Case]]:
    """Direct questions on training views, held-out paraphrases, and direct questions on held-out views."""
    out: dict[str, list[Case]] = {"direct": [], "paraphrase": [], "new_image": []}
    for p in people:
        for f in p.facts:
            for v in world.train_views():
                out["direct"].append(Case(p, f, v, f.train_questions[v % len(f.train_questions)]))
                out["paraphrase"].append(Case(p, f, v, f.heldout_question))
            for v in world.heldout_views():
                out["new_image"] += [Case(p, f, v, q) for q in f.train_questions]
    return out


def fact_cases(world: World, people: list[Person]) -> list[Case]:
    """One case per fact on the first training view: what likelihood-based metrics are computed on."""
    return [Case(p, f, world.train_views()[0], f.train_questions[0]) for p in people for f in p.facts]


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


def swap_rate(world: World, cases: list[Case], answers: list[str]) -> float:
    """Share of answers that state another person's value for the asked fact instead of the subject's."""
    values: dict[str, dict[str, str]] = {}
    for p in world.people:
        for f in p.facts:
            values.setdefault(f.kind, {})[f.value.lower()] = p.id
    swaps = 0
    for case, answer in zip(cases, answers, strict=True):
        text = answer.lower()
        if case.fact.value.lower() in text:
            continue
        swaps += any(pid != case.person.id and v in text for v, pid in values[case.fact.kind].items())
    return swaps / len(cases) if cases else 0.0


def evaluate_row(
    gate: CagulGate,
    world: World,
    forget: list[Person],
    retain: list[Person],
    unseen: list[Person],
) -> tuple[dict[str, float | None], dict[str, list]]:
    """Every metric of one row that needs no other model, plus the raw lists `compare_rows` needs."""
    splits = forget_cases(world, forget)
    answers = {name: answer_queries(gate, world, [c.query for c in cases]) for name, cases in splits.items()}
    leaks = {name: leak_rate(answers[name], [c.fact.keyword for c in cases]) for name, cases in splits.items()}
    all_forget = [c for cases in splits.values() for c in cases]
    all_answers = [a for name in splits for a in answers[name]]

    served_retain = [p for p in retain if not p.protected]
    retain_cases = fact_cases(world, served_retain)
    retain_answers = answer_queries(gate, world, [c.query for c in retain_cases])
    unseen_cases = fact_cases(world, unseen)
    unseen_answers = answer_queries(gate, world, [c.query for c in unseen_cases])

    forget_facts = fact_cases(world, forget)
    forget_stats = case_stats(gate, world, forget_facts, [c.fact.answer for c in forget_facts])
    unseen_stats = case_stats(gate, world, unseen_cases, [c.fact.answer for c in unseen_cases])
    retain_stats = case_stats(gate, world, retain_cases, [c.fact.answer for c in retain_cases])
    forget_ratios = truth_ratios(gate, world, forget_facts)
    retain_ratios = truth_ratios(gate, world, retain_cases)

    retain_probability = float(np.mean([answer_probability(lp) for lp, _, _ in retain_stats]))
    rouge_retain = mean_rouge_l_recall(retain_answers, [c.fact.answer for c in retain_cases])
    retain_truth = truth_ratio_retain_score(retain_ratios)
    tpr = fpr = None
    if len(gate):
        tpr, fpr = gate_rates(gate, world, forget, retain + unseen)
    row: dict[str, float | None] = {
        "leak_direct": leaks["direct"],
        "leak_paraphrase": leaks["paraphrase"],
        "leak_new_image": leaks["new_image"],
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
    }
    return row, raw


def compare_rows(rows: list[dict], raws: list[dict], reference: int, retain_model: int) -> None:
    """Fill in what compares each row with other models: forget quality and answers kept identical."""
    for row, raw in zip(rows, raws, strict=True):
        row["forget_quality"] = forget_quality(raw["forget_truth_ratios"], raws[retain_model]["forget_truth_ratios"])
        row["retain_identical"] = identical_rate(raw["retain_answers"], raws[reference]["retain_answers"])
        row["unseen_identical"] = identical_rate(raw["unseen_answers"], raws[reference]["unseen_answers"])


def benchmark_scores(gate: CagulGate, items: list[BenchmarkItem]) -> dict[str, float | None]:
    """ROUGE-L recall, answer probability and (where the data has them) truth ratios on benchmark items."""
    if not items:
        raise ValueError("no benchmark items to score")
    images, questions = [it.image for it in items], [it.question for it in items]
    answers: list[str] = []
    for start in range(0, len(items), 64):
        answers += [g.answer for g in gate.answer(images[start : start + 64], questions[start : start + 64])]
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
