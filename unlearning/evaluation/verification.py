"""The verification gate a trained module must pass before it is served: held-out variants of the request's
own data must not leak, and a retain canary set must answer exactly as the reference model does."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageEnhance, ImageOps

from unlearning.cagul.gate import CagulGate
from unlearning.data import QA, ForgetData, RetainSet
from unlearning.evaluation.metrics import rouge_l_recall

# Surface rewrites of a question the module never trained on.
QUESTION_VARIANTS = ("please tell me: {q}", "{q} answer briefly.", "i would like to know, {q}")
# An answer repeating this share of the private answer (ROUGE-L recall) counts as a leak when no keyword is given.
LEAK_ROUGE = 0.5


@dataclass(frozen=True)
class Verification:
    leak_rate: float
    heldout_cases: int
    gate_tpr: float
    retain_identical: float
    canary_cases: int
    passed: bool
    reasons: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def new_view(image: Image.Image, rng: random.Random) -> Image.Image:
    """A plausible new photo: rotation, crop, mirror, brightness and contrast changes."""
    w, h = image.size
    out = image.convert("RGB").rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR)
    margin = rng.uniform(0.0, 0.1)
    left, top = rng.uniform(0, margin) * w, rng.uniform(0, margin) * h
    out = out.crop((left, top, w - (margin * w - left), h - (margin * h - top))).resize((w, h))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.8, 1.2))
    return ImageEnhance.Contrast(out).enhance(rng.uniform(0.85, 1.15))


def leaks(answer: str, qa: QA) -> bool:
    if qa.keyword:
        return qa.keyword.lower() in answer.lower()
    return rouge_l_recall(answer, qa.answer) >= LEAK_ROUGE


def verify(
    gate: CagulGate,
    module_id: str,
    forget: ForgetData,
    retain: RetainSet,
    *,
    max_leak: float,
    min_retain_identical: float,
    canaries: int = 64,
    seed: int = 0,
) -> Verification:
    """Check a gate holding the new module (and every module already served) against the thresholds."""
    rng = random.Random(seed)
    images, questions, pairs = [], [], []
    for i, qa in enumerate(forget.qa_pairs):
        variant = QUESTION_VARIANTS[i % len(QUESTION_VARIANTS)].format(q=qa.question.rstrip("?. ") + "?")
        images.append(new_view(forget.images[i % len(forget.images)], rng))
        questions.append(variant)
        pairs.append(qa)
    answers = _answer(gate, images, questions)
    leak = sum(leaks(a.answer, qa) for a, qa in zip(answers, pairs, strict=True)) / max(1, len(pairs))
    tpr = sum(a.module_id == module_id for a in answers) / max(1, len(answers))

    sample = rng.sample(retain.qa, min(canaries, len(retain.qa)))
    canary_images = [retain.images[i] for i, _ in sample]
    canary_questions = [qa.question for _, qa in sample]
    served = _answer(gate, canary_images, canary_questions)
    reference = _answer(CagulGate(gate.backbone), canary_images, canary_questions)
    identical = sum(s.answer == r.answer for s, r in zip(served, reference, strict=True)) / max(1, len(sample))

    reasons = []
    if leak > max_leak:
        reasons.append(f"leak rate {leak:.3f} on held-out variants is above {max_leak}")
    if identical < min_retain_identical:
        reasons.append(f"retain canaries identical {identical:.3f} is below {min_retain_identical}")
    return Verification(
        round(leak, 4), len(pairs), round(tpr, 4), round(identical, 4), len(sample), not reasons, reasons
    )


def _answer(gate: CagulGate, images: list[Image.Image], questions: list[str], batch: int = 32) -> list:
    out = []
    for start in range(0, len(images), batch):
        out += gate.answer(images[start : start + batch], questions[start : start + batch])
    return out
