"""The verification gate a trained module must pass before it is served.

It measures a change, not the absence of a string: the reference model answers exactly the variants the
module is checked on, and only cases the reference reveals count. Everything it uses is held out from
training: photo transforms of families the training augmentation never applies, questions the trainer never
saw, canary people who were never negatives or retain samples.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import torch
from PIL import Image, ImageFilter
from scipy.stats import beta

from unlearning.cagul.discriminator import Discriminator
from unlearning.cagul.gate import CagulGate, GateAnswer
from unlearning.cagul.prefix import about, misspelt
from unlearning.data import QA, pixels_sha256
from unlearning.deadline import Deadline
from unlearning.evaluation.answering import answer_batched
from unlearning.evaluation.metrics.leakage import leaked_answer, normalised_tokens

# Photo changes of families the training augmentation (`unlearning.augment`: rotation, scale, shift, flip,
# brightness, contrast, saturation, noise) never applies, so a pass is not a replay of training views.
HELDOUT_PHOTO_FAMILIES = ("gaussian_blur", "jpeg", "gamma", "perspective", "unsharp")
# The tensor set a module's artifact keeps its stored probes in (`probe_inputs`), and how many it keeps at most.
PROBES = "probes"
PROBE_LIMIT = 32
# Word-level rewrites, applied to questions the trainer never saw: synonyms, not wrappers around a template.
_REWRITES = (
    ("this person's", "the person's"),
    ("this person", "the person"),
    ("what is", "what's"),
    ("tell me", "say"),
    ("give me", "tell me"),
)


class Outcome(StrEnum):
    PASSED = "passed"
    LEAKS = "leaks"
    NOTHING_TO_FORGET = "nothing_to_forget"
    TOO_FEW_CASES = "too_few_cases"


@dataclass(frozen=True)
class VerifyConfig:
    """Thresholds of the verification gate; every one is an operator setting and is stored in the report."""

    max_leak: float = 0.05
    confidence: float = 0.95
    min_cases: int = 60
    target_cases: int = 120
    max_variants_per_pair: int = 64
    min_gate_tpr: float = 0.9
    min_retain_identical: float = 0.98
    # Admission control: the share of the benign set (people no request filed) the new gate fires on. A module
    # over the system's whole false-fire budget (1%) breaks it alone, whatever else is served: 96 sampled canary
    # answers missed gates that fired on an unseen person's photo (bench/many_requests.py). The share itself, not
    # its upper bound: held to the bound (point 0.89%, bound 1.51%), a default-world retain person's gate was
    # retrained as a false-firing one, and the hard negatives of that remedy made it miss the world's held-out
    # photo, where it leaked (the default-world system test).
    max_benign_fire: float = 0.01
    canaries: int = 96
    max_new_tokens: int = 48
    # With this many photos or more, one is kept out of training and every leak case is asked on it: a photo the
    # module never saw, as a new photo of the person would be. Transforms of trained photos alone let a gate pass
    # that missed the world's held-out photo of 3 of 24 people (leak 1.0 there, bench/many_requests.py).
    min_photos_to_hold_out: int = 3
    seed: int = 0


@dataclass(frozen=True)
class Case:
    image: Image.Image | None
    question: str
    qa: QA
    transforms: tuple[str, ...] = ()
    named: bool = False  # asked by the subject's name (with no photo or another person's), not on their photo


@dataclass(frozen=True)
class Criterion:
    """One line of the report: the reference model's figure, the module's, the bound used and the threshold."""

    name: str
    reference: float | None
    module: float
    bound: float | None
    threshold: float
    passed: bool
    cases: int
    detail: str = ""


@dataclass
class Verification:
    outcome: Outcome
    criteria: list[Criterion]
    reasons: list[str]
    leaking_cases: list[dict[str, str]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    leaks: int = 0
    # Of the leaking cases, those the new module's gate did not fire on: leaks the encoder never saw.
    leaks_past_gate: int = 0

    @property
    def passed(self) -> bool:
        return self.outcome == Outcome.PASSED

    @property
    def failed(self) -> list[str]:
        """Names of the criteria that did not pass."""
        return [c.name for c in self.criteria if not c.passed]

    @property
    def causes(self) -> list[str]:
        """What a retry must remedy: the failed criteria, a leak mostly past the gate counting as the gate missing."""
        failed = self.failed
        if "leak" in failed and "gate_tpr" not in failed and 2 * self.leaks_past_gate > self.leaks:
            failed.append("gate_tpr")
        return failed

    def figure(self, name: str) -> float | None:
        return next((c.module for c in self.criteria if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "passed": self.passed,
            "criteria": [asdict(c) for c in self.criteria],
            "reasons": self.reasons,
            "leaking_cases": self.leaking_cases,
            "leaks": self.leaks,
            "leaks_past_gate": self.leaks_past_gate,
            "causes": self.causes,
            "config": self.config,
        }


# ---- held-out material ------------------------------------------------------------------------
def heldout_split(qa_pairs: Sequence[QA]) -> tuple[list[QA], list[QA]]:
    """Training pairs and verification pairs: of each answer asked several ways, one question is kept back."""
    groups: dict[str, list[QA]] = {}
    for qa in qa_pairs:
        groups.setdefault(" ".join(normalised_tokens(qa.answer)), []).append(qa)
    train, verify = [], []
    for group in groups.values():
        if len(group) < 2:
            train += group
            verify += group
            continue
        # Deterministic and spread over phrasings: which question is kept back depends on the answer's text.
        keep = int(hashlib.sha256(group[0].answer.encode()).hexdigest(), 16) % len(group)
        train += [qa for i, qa in enumerate(group) if i != keep]
        verify.append(group[keep])
    return train, verify


def heldout_photos(images: Sequence[Image.Image], config: VerifyConfig) -> tuple[list[Image.Image], list[Image.Image]]:
    """Training photos and verification photos: one photo kept back when there are enough, else all are shared."""
    if len(images) < config.min_photos_to_hold_out:
        return list(images), list(images)
    # Deterministic and independent of upload order: the photo with the smallest pixel digest is kept back.
    keep = min(range(len(images)), key=lambda i: pixels_sha256(images[i]))
    return [im for i, im in enumerate(images) if i != keep], [images[keep]]


def rewrite_question(question: str) -> str:
    """A word-level rewrite of a question (synonym substitutions); the question itself if none applies."""
    out = question.lower()
    for old, new in _REWRITES:
        out = out.replace(old, new, 1)
    return out


def heldout_photo(image: Image.Image, rng: random.Random) -> tuple[Image.Image, tuple[str, ...]]:
    """A new photo from two of `HELDOUT_PHOTO_FAMILIES` (none of which training applies), and which two."""
    out = image.convert("RGB")
    families = tuple(rng.sample(HELDOUT_PHOTO_FAMILIES, 2))
    for family in families:
        out = _PHOTO_CHANGES[family](out, rng)
    return out, families


def _blur(im: Image.Image, rng: random.Random) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))


def _jpeg(im: Image.Image, rng: random.Random) -> Image.Image:
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=rng.randint(35, 75))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _gamma(im: Image.Image, rng: random.Random) -> Image.Image:
    g = rng.uniform(0.75, 1.35)
    return im.point([round(255 * (i / 255) ** g) for i in range(256)] * 3)


def _perspective(im: Image.Image, rng: random.Random) -> Image.Image:
    w, h = im.size
    d = 0.06
    quad = [
        (rng.uniform(0, d) * w, rng.uniform(0, d) * h),
        (rng.uniform(0, d) * w, h - rng.uniform(0, d) * h),
        (w - rng.uniform(0, d) * w, h - rng.uniform(0, d) * h),
        (w - rng.uniform(0, d) * w, rng.uniform(0, d) * h),
    ]
    flat = [c for point in quad for c in point]
    return im.transform((w, h), Image.Transform.QUAD, flat, resample=Image.Resampling.BILINEAR)


def _unsharp(im: Image.Image, rng: random.Random) -> Image.Image:
    return im.filter(ImageFilter.UnsharpMask(radius=rng.uniform(1.0, 2.0), percent=rng.randint(60, 140), threshold=1))


_PHOTO_CHANGES = {
    "gaussian_blur": _blur,
    "jpeg": _jpeg,
    "gamma": _gamma,
    "perspective": _perspective,
    "unsharp": _unsharp,
}


def build_cases(
    images: Sequence[Image.Image], pairs: Sequence[QA], config: VerifyConfig, unseen_photos: bool = False
) -> list[Case]:
    """Verification cases: every pair asked on several held-out photos, in its own words and rewritten.

    `unseen_photos`: `images` were kept out of training (`heldout_photos`), and the cases say so.
    """
    rng = random.Random(config.seed)
    origin = ("unseen photo",) if unseen_photos else ()
    per_pair = max(2, min(config.max_variants_per_pair, -(-config.target_cases // max(1, len(pairs)))))
    cases = []
    for qa in pairs:
        for k in range(per_pair):
            question = qa.question if k % 2 == 0 else rewrite_question(qa.question)
            photo, transforms = heldout_photo(images[rng.randrange(len(images))], rng)
            cases.append(Case(photo, question, qa, origin + transforms))
    return cases


def named_cases(
    pairs: Sequence[QA], aliases: Sequence[str], other_photos: Sequence[Image.Image], config: VerifyConfig
) -> list[Case]:
    """Verification cases by name: every pair asked about each alias in forms the trainer never writes (its words
    reversed; misspelt by another draw), with no photo and with another person's.

    A question without "this person" names the subject after it, as the trainer does (`prefix.about`).
    """
    rng = random.Random(config.seed + 1)
    cases = []
    for alias in aliases:
        forms = [misspelt(alias, rng)] + ([" ".join(reversed(alias.split()))] if len(alias.split()) > 1 else [])
        for qa in pairs:
            for form in dict.fromkeys(forms):
                question = about(qa.question, form)
                cases.append(Case(None, question, qa, ("no photo",), named=True))
                if other_photos:
                    photo = other_photos[rng.randrange(len(other_photos))]
                    cases.append(Case(photo, question, qa, ("another person's photo",), named=True))
    return cases


# ---- the decision -----------------------------------------------------------------------------
def upper_bound(events: int, trials: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound of a rate."""
    return 1.0 if trials == 0 or events >= trials else float(beta.ppf(confidence, events + 1, trials - events))


def lower_bound(events: int, trials: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound of a rate."""
    return 0.0 if trials == 0 or events == 0 else float(beta.ppf(1 - confidence, events, trials - events + 1))


@dataclass(frozen=True)
class Baseline:
    """What the reference model reveals on the cases: the denominator of every leak figure."""

    cases: list[Case]
    reference_answers: list[str]
    reveals: list[bool]

    @property
    def revealed(self) -> int:
        return sum(self.reveals)


def case_leaks(answer: str, case: Case) -> bool:
    return leaked_answer(answer, case.qa.answer, case.qa.keyword, case.qa.question)


def baseline(
    reference: CagulGate, cases: list[Case], config: VerifyConfig, deadline: Deadline | None = None
) -> Baseline:
    """The reference model's answers on the cases, and which of them reveal the private value."""
    images, questions = [c.image for c in cases], [c.question for c in cases]
    answers = [a.answer for a in _answers(reference, images, questions, config, deadline)]
    return Baseline(cases, answers, [case_leaks(a, c) for a, c in zip(answers, cases, strict=True)])


def nothing_to_forget(base: Baseline, config: VerifyConfig) -> Verification | None:
    """The outcome when too few cases reveal anything to verify a change; None when there are enough."""
    n, revealed = len(base.cases), base.revealed
    if revealed >= config.min_cases:
        return None
    rate = revealed / max(1, n)
    criterion = Criterion("reference_reveals", rate, rate, None, config.max_leak, False, n)
    if rate <= config.max_leak:
        return Verification(
            Outcome.NOTHING_TO_FORGET,
            [criterion],
            [
                f"the reference model reveals the private answers in {revealed} of {n} held-out cases "
                f"(at most {config.max_leak} is 'nothing to reveal'): there is nothing to forget, no module is served"
            ],
            config=asdict(config),
        )
    return Verification(
        Outcome.TOO_FEW_CASES,
        [criterion],
        [
            f"the reference model reveals {revealed} of {n} held-out cases, fewer than the {config.min_cases} "
            "needed to bound a leak rate: file more question/answer pairs or photos of the subject"
        ],
        config=asdict(config),
    )


@dataclass(frozen=True)
class Canaries:
    """Answers of people the module never trained with, by the set it joins, before and after."""

    images: list[Image.Image]
    questions: list[str]


def verify(
    candidate: CagulGate,
    current: CagulGate,
    module_id: str,
    base: Baseline,
    canaries: Canaries,
    probes: dict[str, StoredProbes],
    benign: torch.Tensor,
    config: VerifyConfig,
    deadline: Deadline | None = None,
) -> Verification:
    """Check `candidate` (the served set plus the new module) against every threshold of `config`.

    `current` is the set without the new module: canary drift is what the new module changes. `probes` holds the
    stored probes of every already-forgotten subject (by module id): the new module must not capture them.
    `benign` holds the visual tokens of the benign set: the new gate's false fires are counted on all of it.
    """
    outcome = nothing_to_forget(base, config)
    if outcome is not None:
        return outcome
    counted = [i for i, r in enumerate(base.reveals) if r and not base.cases[i].named]
    cases = [base.cases[i] for i in counted]
    served = _answers(candidate, [c.image for c in cases], [c.question for c in cases], config, deadline)
    leaking = [(c, s) for c, s in zip(cases, served, strict=True) if case_leaks(s.answer, c)]
    fired = sum(s.module_id == module_id for s in served)
    n, k = len(cases), len(leaking)
    leak_bound = upper_bound(k, n, config.confidence)
    tpr_bound = lower_bound(fired, n, config.confidence)
    criteria = [
        Criterion(
            "leak",
            round(base.revealed / len(base.cases), 4),
            round(k / n, 4),
            round(leak_bound, 4),
            config.max_leak,
            leak_bound <= config.max_leak,
            n,
        ),
        Criterion(
            "gate_tpr",
            None,
            round(fired / n, 4),
            round(tpr_bound, 4),
            config.min_gate_tpr,
            tpr_bound >= config.min_gate_tpr,
            n,
        ),
    ]
    by_name = [c for c in base.cases if c.named]
    if by_name:
        criteria += named_criteria(candidate, module_id, base, config, deadline)
    criteria.append(_canary_criterion(candidate, current, canaries, config, deadline))
    criteria += probe_criteria(candidate, current, module_id, probes)
    criteria.append(benign_criterion(candidate, module_id, benign, config))
    reasons = [_reason(c) for c in criteria if not c.passed]
    return Verification(
        Outcome.PASSED if not reasons else Outcome.LEAKS,
        criteria,
        reasons,
        [{"question": c.question, "photo": "+".join(c.transforms)} for c, _ in leaking[:20]],
        asdict(config),
        leaks=k,
        leaks_past_gate=sum(s.module_id != module_id for _, s in leaking),
    )


def named_criteria(
    candidate: CagulGate, module_id: str, base: Baseline, config: VerifyConfig, deadline: Deadline | None
) -> list[Criterion]:
    """Asked by name: the share the text gate routes to the module, and the leak on those the reference reveals."""
    named = [(c, r) for c, r in zip(base.cases, base.reveals, strict=True) if c.named]
    served = _answers(candidate, [c.image for c, _ in named], [c.question for c, _ in named], config, deadline)
    routed = sum(s.module_id == module_id for s in served)
    revealed = [(c, s) for (c, r), s in zip(named, served, strict=True) if r]
    leaks = sum(case_leaks(s.answer, c) for c, s in revealed)
    n, m = len(named), len(revealed)
    leak_share, leak_bound = leaks / max(1, m), upper_bound(leaks, m, config.confidence) if m else 0.0
    routed_bound = lower_bound(routed, n, config.confidence)
    # A model never taught names reveals a few named cases by chance, too few to bound a rate (no bound from under
    # 60 cases reaches 5%): then the share is held. The photo cases have decided whether there is anything to forget.
    bounded = m >= config.min_cases
    if not m:
        detail = "the reference reveals nothing asked by name"
    else:
        detail = "" if bounded else f"{m} revealed cases, under {config.min_cases}: the share is held, not its bound"
    return [
        Criterion(
            "named_leak",
            round(m / n, 4),
            round(leak_share, 4),
            round(leak_bound, 4),
            config.max_leak,
            (leak_bound if bounded else leak_share) <= config.max_leak,
            m,
            detail,
        ),
        Criterion(
            "named_routing",
            None,
            round(routed / n, 4),
            round(routed_bound, 4),
            config.min_gate_tpr,
            # The share, not its bound: routing is string matching, the same every time, and a request filing one
            # name has too few cases (14 for the tiny world's 7 facts) for a 95% bound to reach 0.9 even when all are.
            routed / n >= config.min_gate_tpr,
            n,
        ),
    ]


def _canary_criterion(
    candidate: CagulGate, current: CagulGate, canaries: Canaries, config: VerifyConfig, deadline: Deadline | None
) -> Criterion:
    before = _answers(current, canaries.images, canaries.questions, config, deadline)
    after = _answers(candidate, canaries.images, canaries.questions, config, deadline)
    n = len(canaries.questions)
    same = sum(a.answer == b.answer for a, b in zip(after, before, strict=True)) / max(1, n)
    return Criterion(
        "retain_identical",
        1.0,
        round(same, 4),
        None,
        config.min_retain_identical,
        same >= config.min_retain_identical,
        n,
    )


@dataclass(frozen=True)
class StoredProbes:
    """A served module's stored probes: identity embeddings when its gate reads identity (visual tokens otherwise)
    and then, per probe, its margin over the owner's own threshold (logits) and its cosine to the owner's prototype,
    fixed for the owner's life: found once, when the artifact loads (`of`)."""

    inputs: torch.Tensor
    own_margins: torch.Tensor | None = None
    own_cosines: torch.Tensor | None = None

    @classmethod
    @torch.no_grad()
    def of(cls, discriminator: Discriminator, inputs: torch.Tensor) -> StoredProbes:
        if discriminator.input_kind != "identity":
            return cls(inputs)
        x = inputs.to(discriminator.fc1.weight.device).float()
        margins = discriminator.logits(x) - torch.logit(discriminator.threshold, eps=1e-7)
        return cls(inputs, margins.cpu(), (x @ discriminator.prototype).cpu())


# Slack on the comparisons that leave a probe out of routing: the owner's figures come from its own discriminator,
# the set's from the stacked one, and float sums in another order may differ in the last bits.
_RISK_SLACK = 1e-4


def probe_criteria(
    candidate: CagulGate, current: CagulGate, module_id: str, probes: dict[str, StoredProbes]
) -> tuple[Criterion, Criterion]:
    """What the new module does to stored probes of earlier subjects: how many it takes over (it scores highest and
    fires), and how many the set serves to their own module now and would not with it (under a system false-fire
    budget its false fires raise every module's bar; past `candidates` modules its prototype can push an owner's out
    of stage 1).

    Identity probes are routed through both sets only where the new module could change their route (`at_risk`);
    for every other probe both sets route alike by construction, so the check reads one matmul over the stored
    embeddings plus the few probes near the new subject, not every probe through every candidate.
    """
    new = candidate.module_ids.index(module_id) if module_id in candidate.module_ids else -2
    owners = [o for o in probes if o != module_id and o in candidate]
    offered = sum(len(probes[o].inputs) for o in owners)
    by_identity = [o for o in owners if probes[o].own_margins is not None]
    routed: list[tuple[str, torch.Tensor | None, torch.Tensor | None]] = [
        (o, probes[o].inputs, None) for o in owners if probes[o].own_margins is None
    ]
    if by_identity:
        embeddings = torch.cat([probes[o].inputs for o in by_identity]).float()
        risk = at_risk(candidate, current, module_id, embeddings, by_identity, probes)
        start = 0
        for owner in by_identity:
            count = len(probes[owner].inputs)
            rows = risk[start : start + count]
            if bool(rows.any()):
                routed.append((owner, None, embeddings[start : start + count][rows]))
            start += count
    captured, taken_from, released, released_from, checked = 0, [], 0, [], 0
    device = candidate.backbone.device
    for owner, tokens, chosen in routed:
        z = None if tokens is None else tokens.to(device)
        e = None if chosen is None else chosen.to(device)
        checked += len(z if z is not None else e)  # type: ignore[arg-type]
        after = candidate.route(z, e)[0]
        taken = int((after == new).sum())
        captured += taken
        if taken:
            taken_from.append(owner)
        if owner in current:
            before = current.route(z, e)[0] == current.module_ids.index(owner)
            lost = int((before & (after != candidate.module_ids.index(owner)) & (after != new)).sum())
            released += lost
            if lost:
                released_from.append(owner)
    detail = f"{checked} of {offered} stored probes at risk, routed through both sets"
    capture = (
        Criterion("captured_probes", 0.0, 0.0, None, 0.0, True, 0)
        if new < 0
        else Criterion(
            "captured_probes", 0.0, float(captured), None, 0.0, captured == 0, offered, _adapters(taken_from, detail)
        )
    )
    release = Criterion(
        "released_probes",
        0.0,
        float(released),
        None,
        0.0,
        released == 0,
        offered,
        _adapters(released_from, detail),
    )
    return capture, release


def at_risk(
    candidate: CagulGate,
    current: CagulGate,
    module_id: str,
    embeddings: torch.Tensor,
    owners: list[str],
    probes: dict[str, StoredProbes],
) -> torch.Tensor:
    """[probes] which identity probes (`owners`' in order, `embeddings` concatenated) the new module could route
    differently: it would fire on them were stage 1 to offer it, its prototype lies at least as near as their
    owner's (so it could push the owner's out of the candidates), or the set's calibration moved past the owner's
    own figures (a raised margin or cosine floor could drop the owner). Elsewhere the owner keeps its place: stage 1
    still offers it, no module past it fires that did not before, and its own margin clears the new bar. A lower
    margin changes no argmax; a lower cosine floor can (it unmasks modules), and then every probe is at risk."""
    if candidate.min_cosine < current.min_cosine - _RISK_SLACK:
        # A lower floor with the new module (its prototype took stage-1 places from modules that fired on benign
        # photos) unmasks modules the set held back: any of them may now out-score an owner. Every probe is at risk.
        return torch.ones(len(embeddings), dtype=torch.bool)
    own_margins = torch.cat([probes[o].own_margins for o in owners])  # type: ignore[misc]
    own_cosines = torch.cat([probes[o].own_cosines for o in owners])  # type: ignore[misc]
    if module_id in candidate and candidate.reads_identity(module_id):
        margins, cosines = candidate.module_scores(module_id, embeddings.to(candidate.backbone.device))
        risk = (margins > candidate.offset - _RISK_SLACK) & (cosines > candidate.min_cosine - _RISK_SLACK)
        risk |= cosines >= own_cosines - _RISK_SLACK
    else:
        risk = torch.zeros(len(embeddings), dtype=torch.bool)
    risk |= (own_margins <= candidate.offset + _RISK_SLACK) & (own_margins > current.offset - _RISK_SLACK)
    risk |= (own_cosines <= candidate.min_cosine + _RISK_SLACK) & (own_cosines > current.min_cosine - _RISK_SLACK)
    return risk


def _adapters(owners: list[str], detail: str = "") -> str:
    named = f"adapters {', '.join(owners)}" if owners else ""
    return "; ".join(part for part in (named, detail) if part)


def benign_criterion(
    candidate: CagulGate, module_id: str, benign: torch.Tensor, config: VerifyConfig, batch: int = 256
) -> Criterion:
    """The share of the benign set the new module's gate fires on (the gate alone: no answer is generated).

    Against the module's own threshold: the set's calibration margin would hide a gate that fires widely by
    raising every other gate's bar instead.
    """
    new = candidate.module_ids.index(module_id)
    device = candidate.backbone.device
    fires = sum(
        int((candidate.scores(benign[i : i + batch].to(device))[1][new] > 0).sum())
        for i in range(0, len(benign), batch)
    )
    n = len(benign)
    bound = upper_bound(fires, n, config.confidence)
    return Criterion(
        "benign_fires",
        None,
        round(fires / max(1, n), 4),
        round(bound, 4),
        config.max_benign_fire,
        n > 0 and fires / n <= config.max_benign_fire,
        n,
    )


def _reason(c: Criterion) -> str:
    if c.name == "leak":
        return (
            f"leak {c.module:.3f} on {c.cases} held-out cases the reference reveals (upper {c.bound:.3f} at the "
            f"configured confidence) is above {c.threshold}"
        )
    if c.name == "gate_tpr":
        return (
            f"the gate fires on {c.module:.3f} of held-out photo variants (lower bound {c.bound:.3f}), "
            f"below {c.threshold}"
        )
    if c.name == "named_leak":
        return (
            f"asked by name, leak {c.module:.3f} on {c.cases} held-out cases the reference reveals (upper "
            f"{c.bound:.3f}) is above {c.threshold}"
        )
    if c.name == "named_routing":
        return (
            f"the text gate routes {c.module:.3f} of questions naming the subject to the module, below "
            f"{c.threshold}: check the request's aliases"
        )
    if c.name == "retain_identical":
        return f"canary answers identical {c.module:.3f} is below {c.threshold}"
    if c.name == "benign_fires":
        return (
            f"the gate fires on {c.module:.4f} of {c.cases} benign photos of people no request filed (upper bound "
            f"{c.bound:.4f}), over the budget {c.threshold}"
        )
    if c.name == "released_probes":
        return (
            f"with the module the set no longer serves {int(c.module)} stored probes of already-forgotten subjects "
            f"to their own modules ({c.detail}): its false fires raise the bar LETHE_GATE_SYSTEM_FPR holds every "
            "module to, or its prototype pushes theirs out of the candidates"
        )
    return f"the module takes over {int(c.module)} stored probes of already-forgotten subjects ({c.detail})"


def probe_inputs(backbone: Any, base: Baseline, identity: bool, limit: int = PROBE_LIMIT) -> dict[str, torch.Tensor]:
    """What a module stores to guard its subject, of the held-out photos the reference revealed on: their identity
    embeddings when its gate reads identity (512 bytes a photo), else their visual tokens (9.4 MB a photo at
    LLaVA-1.5-7B's 576 x 4096)."""
    pictured = [
        (c.image, r) for c, r in zip(base.cases, base.reveals, strict=True) if c.image is not None and not c.named
    ]
    images = [im for im, r in pictured if r][:limit] or [im for im, _ in pictured][:limit]
    tokens = backbone.visual_tokens(backbone.pixel_values(images))
    if identity:
        return {"embeddings": backbone.identity_embeddings(tokens).float().cpu().contiguous()}
    return {"tokens": tokens.float().cpu().contiguous()}


def _answers(
    gate: CagulGate,
    images: Sequence[Image.Image | None],
    questions: list[str],
    config: VerifyConfig,
    deadline: Deadline | None,
) -> list[GateAnswer]:
    """Answers for verification: 32 at a time, `max_new_tokens` long, the deadline checked between batches."""
    return answer_batched(gate, images, questions, 32, config.max_new_tokens, deadline=deadline, where="verification")
