"""Verification's held-out material is disjoint from training, its leak test normalises, its bounds decide."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from unlearning.augment import AUGMENT_FAMILIES
from unlearning.backbones import Backbone
from unlearning.cagul import CagulGate, CagulModule
from unlearning.cagul.config import DEFAULT_PROBES, WIDER_PROBES, CagulConfig
from unlearning.cagul.prefix import named_asks
from unlearning.cagul.verification import (
    HELDOUT_PHOTO_FAMILIES,
    Baseline,
    Case,
    Criterion,
    Outcome,
    StoredProbes,
    Verification,
    VerifyConfig,
    benign_criterion,
    build_cases,
    heldout_photo,
    heldout_photos,
    heldout_split,
    lower_bound,
    named_cases,
    named_criteria,
    nothing_to_forget,
    probe_criteria,
    upper_bound,
)
from unlearning.data import QA, pixels_sha256
from unlearning.evaluation.metrics.leakage import leaked, leaked_answer
from unlearning.world import World
from unlearning.world.requests import (
    canary_people,
    forget_data,
    world_benign_set,
    world_canaries,
    world_retain_set,
)


def test_verification_questions_are_never_trained_on(tiny_world: World):
    request = forget_data(tiny_world, ["p000"])
    train, verify = heldout_split(request.qa_pairs)
    trained = {qa.question for qa in train} | set(
        CagulConfig().strengthened(["leak"]).strengthened(["leak"]).probe_questions
    )
    cases = build_cases(request.images, verify, VerifyConfig())
    assert {c.question for c in cases}.isdisjoint(trained)
    # Every fact keeps a trained phrasing and gives one to verification.
    assert {qa.answer for qa in train} == {qa.answer for qa in verify} == {qa.answer for qa in request.qa_pairs}
    assert len(cases) >= VerifyConfig().target_cases
    assert set(WIDER_PROBES).isdisjoint(DEFAULT_PROBES)


def test_one_photo_is_kept_out_of_training_and_every_case_is_asked_on_it(tiny_world: World):
    request = forget_data(tiny_world, ["p000"])
    train, verify = heldout_photos(request.images, VerifyConfig())
    assert len(verify) == 1 and len(train) == len(request.images) - 1
    assert pixels_sha256(verify[0]) not in {pixels_sha256(im) for im in train}
    # The same photo whatever the upload order.
    assert heldout_photos(request.images[::-1], VerifyConfig())[1][0].tobytes() == verify[0].tobytes()
    cases = build_cases(verify, heldout_split(request.qa_pairs)[1], VerifyConfig(), unseen_photos=True)
    assert all(c.transforms[0] == "unseen photo" for c in cases)
    # Too few photos to spare one: training and verification share them, and the cases do not claim otherwise.
    two = request.images[:2]
    assert heldout_photos(two, VerifyConfig()) == (two, two)


def test_single_phrasing_is_verified_on_a_rewrite():
    only = [QA("what is this person's phone number?", "555-0101.", "555-0101")]
    train, verify = heldout_split(only)
    assert train == verify == only
    cases = build_cases([Image.new("RGB", (64, 64))], verify, VerifyConfig(max_variants_per_pair=64))
    assert len(cases) == 64 and "what's the person's phone number?" in {c.question for c in cases}


def test_heldout_photos_use_transform_families_training_never_uses():
    assert set(HELDOUT_PHOTO_FAMILIES).isdisjoint(AUGMENT_FAMILIES)
    image = Image.effect_noise((64, 64), 40).convert("RGB")
    variants = [heldout_photo(image, random.Random(i))[0] for i in range(8)]
    assert all(v.size == image.size for v in variants)
    assert len({v.tobytes() for v in variants} | {image.tobytes()}) == 9


def test_canaries_are_never_retain_samples_or_negatives(tiny_world: World):
    canaries = canary_people(tiny_world)
    assert {p.split for p in canaries} == {"retain", "unseen"}
    assert set(tiny_world.split("unseen")) <= set(canaries)
    canary_photos = {
        pixels_sha256(tiny_world.image(p.id, v)) for p in canaries for v in range(tiny_world.config.n_views)
    }
    retain = world_retain_set(tiny_world, lookalikes=5)
    used = {pixels_sha256(im) for im in retain.images + retain.negatives + retain.heldout_negatives}
    assert used.isdisjoint(canary_photos)
    images, questions = world_canaries(tiny_world, exclude=[canaries[0].id], count=40)
    assert len(images) == len(questions) == 40
    excluded = {pixels_sha256(tiny_world.image(canaries[0].id, v)) for v in range(tiny_world.config.n_views)}
    assert {pixels_sha256(im) for im in images}.isdisjoint(excluded)


@pytest.mark.parametrize(
    ("answer", "keyword", "leaks"),
    [
        ("their number is 555-1234.", "555 1234", True),
        ("call 5551234 now", "555-1234", True),
        ("it is 555-12345", "555-1234", False),
        ("This is Kamiro Tale.", "kamiro tale", True),
        ("i cannot share that.", "ann", False),
        ("kamiro, tale", "Kamiro Tale", True),
        ("born 1983, 555-1234", "1983", True),
    ],
)
def test_keywords_are_normalised(answer: str, keyword: str, leaks: bool):
    assert leaked(answer, keyword) is leaks


def test_answers_without_keyword_leak_on_their_private_words():
    assert leaked_answer("they live in new york.", "new york.", None, "where does this person live?")
    assert not leaked_answer("i cannot share that.", "new york.", None, "where does this person live?")
    assert not leaked_answer("they live in york.", "new york.", None)


def test_bounds_need_enough_cases():
    assert upper_bound(0, 30, 0.95) > 0.05  # 0 of 30 is not evidence of a leak rate under 5%
    assert upper_bound(0, 60, 0.95) <= 0.05
    assert upper_bound(1, 120, 0.95) <= 0.05 < upper_bound(3, 120, 0.95)
    assert lower_bound(117, 120, 0.95) >= 0.9 > lower_bound(100, 120, 0.95)


def _base(reveals: list[bool]) -> Baseline:
    image = Image.new("RGB", (8, 8))
    cases = [Case(image, "q", QA("q", "a.", "a")) for _ in reveals]
    return Baseline(cases, ["a"] * len(reveals), reveals)


def test_too_little_revealed_is_an_outcome_not_a_pass():
    config = VerifyConfig(min_cases=60)
    quiet = nothing_to_forget(_base([False] * 118 + [True] * 2), config)
    assert quiet is not None and quiet.outcome == Outcome.NOTHING_TO_FORGET and not quiet.passed
    partial = nothing_to_forget(_base([False] * 80 + [True] * 40), config)
    assert (
        partial is not None and partial.outcome == Outcome.TOO_FEW_CASES and "fewer than the 60" in partial.reasons[0]
    )
    assert nothing_to_forget(_base([True] * 60), config) is None


def _constant_module(backbone: Backbone, logit: float) -> CagulModule:
    """A module whose gate scores every image sigmoid(logit)."""
    module = CagulModule(CagulConfig(), backbone.n_visual_tokens, backbone.hidden_size, backbone.identity_dim)
    torch.nn.init.zeros_(module.discriminator.fc2.weight)
    torch.nn.init.constant_(module.discriminator.fc2.bias, logit)
    return module


def _probes(backbone: Backbone, owner: CagulModule, tokens: torch.Tensor) -> dict[str, StoredProbes]:
    """The owner's probes as a worker holds them: identity embeddings with the owner's own figures."""
    return {"owner": StoredProbes.of(owner.discriminator, backbone.identity_embeddings(tokens))}


def test_a_module_taking_over_earlier_probes_fails(backbone: Backbone):
    owner = _constant_module(backbone, 3.0)
    probes = _probes(backbone, owner, torch.randn(5, backbone.n_visual_tokens, backbone.hidden_size))
    current = CagulGate(backbone, {"owner": owner})
    greedy = CagulGate(backbone, {"owner": owner, "new": _constant_module(backbone, 6.0)})
    taken = probe_criteria(greedy, current, "new", probes)[0]
    assert not taken.passed and taken.module == 5 and taken.detail.startswith("adapters owner;")
    modest = CagulGate(backbone, {"owner": owner, "new": _constant_module(backbone, 1.0)})
    assert probe_criteria(modest, current, "new", probes)[0].passed


def test_a_module_raising_the_bar_past_earlier_probes_fails(backbone: Backbone):
    owner = _constant_module(backbone, 3.0)
    probes = _probes(backbone, owner, torch.randn(5, backbone.n_visual_tokens, backbone.hidden_size))
    current = CagulGate(backbone, {"owner": owner})
    silent = _constant_module(backbone, -20.0)
    # As a system budget holds the set back: one margin over every threshold, raised by the new module's false fires.
    raised = CagulGate(backbone, {"owner": owner, "new": silent})
    raised.offset = 10.0
    released = probe_criteria(raised, current, "new", probes)[1]
    assert not released.passed and released.module == 5 and released.cases == 5
    assert released.detail.startswith("adapters owner;")
    kept = CagulGate(backbone, {"owner": owner, "new": silent})
    assert probe_criteria(kept, current, "new", probes)[1].passed
    assert "released_probes" in Verification(Outcome.LEAKS, [released], ["x"]).causes
    assert CagulConfig().strengthened(["released_probes"]).target_fpr < CagulConfig().target_fpr


def test_a_prototype_pushing_an_owner_out_of_the_candidates_releases_its_probes(backbone: Backbone):
    # Five views of one person, so every probe lies on the prototype's side: independent noise put one of five
    # on the far side now and then (stop 39's CI).
    person = torch.randn(1, backbone.n_visual_tokens, backbone.hidden_size)
    tokens = person + 0.1 * torch.randn(5, backbone.n_visual_tokens, backbone.hidden_size)
    toward = torch.nn.functional.normalize(backbone.identity_embeddings(tokens).mean(0), dim=0)
    assert bool((backbone.identity_embeddings(tokens) @ toward > 0).all())
    owner, silent = _constant_module(backbone, 3.0), _constant_module(backbone, -20.0)
    owner.discriminator.prototype.copy_(-toward)
    silent.discriminator.prototype.copy_(toward)
    probes = _probes(backbone, owner, tokens)
    current = CagulGate(backbone, {"owner": owner}, candidates=1)
    # One candidate of two: the new prototype lies nearer every probe, and its gate never fires.
    crowded = CagulGate(backbone, {"owner": owner, "new": silent}, candidates=1)
    released = probe_criteria(crowded, current, "new", probes)[1]
    assert not released.passed and released.module == 5 and released.detail.startswith("adapters owner;")
    assert probe_criteria(CagulGate(backbone, {"owner": owner, "new": silent}), current, "new", probes)[1].passed


def _every_probe_routed(
    candidate: CagulGate, current: CagulGate, new_id: str, probes: dict[str, torch.Tensor]
) -> tuple[int, int]:
    """Captured and released counts with every probe routed through both sets: what the filtered check must equal."""
    new = candidate.module_ids.index(new_id)
    captured = released = 0
    for owner, embeddings in probes.items():
        after = candidate.route(None, embeddings)[0]
        before = current.route(None, embeddings)[0] == current.module_ids.index(owner)
        captured += int((after == new).sum())
        released += int((before & (after != candidate.module_ids.index(owner)) & (after != new)).sum())
    return captured, released


@pytest.mark.parametrize("calibration", ["none", "logit", "cosine", "cosine_lowered"])
def test_routing_only_the_probes_at_risk_counts_what_routing_every_probe_counts(backbone: Backbone, calibration):
    # Random gates crowded around a few identities, so that modules capture, crowd out and out-score each other.
    torch.manual_seed(7)
    dim = backbone.identity_dim
    centres = torch.nn.functional.normalize(torch.randn(4, dim), dim=1)

    def near(centre: torch.Tensor, n: int, spread: float) -> torch.Tensor:
        return torch.nn.functional.normalize(centre + spread * torch.randn(n, dim), dim=1)

    modules = {}
    for i in range(24):
        module = CagulModule(CagulConfig(), backbone.n_visual_tokens, backbone.hidden_size, dim)
        torch.nn.init.normal_(module.discriminator.fc1.weight, std=0.5)
        module.discriminator.prototype.copy_(near(centres[i % 4], 1, 0.3)[0])
        module.discriminator.threshold.fill_(float(torch.rand(())) * 0.6 + 0.2)
        modules[f"m{i:02d}"] = module
    *earlier, new_id = modules
    embeddings = {o: near(modules[o].discriminator.prototype, 8, 0.4) for o in earlier}
    stored = {o: StoredProbes.of(modules[o].discriminator, e) for o, e in embeddings.items()}
    offered = sum(len(e) for e in embeddings.values())
    changed, routed = 0, []
    for k in (0, 3, 8, len(earlier)):  # len(earlier): the new module turns an exhaustive set two-stage
        current = CagulGate(backbone, {o: modules[o] for o in earlier}, candidates=k)
        candidate = CagulGate(backbone, modules, candidates=k)
        # As `calibrate` may leave them: the new module's false fires raise the set's bar; in a two-stage set its
        # prototype can also take stage-1 places from modules that fired on benign photos, and lower the floor.
        if calibration == "logit":
            current.offset, candidate.offset = 0.5, 1.5
        elif calibration == "cosine":
            current.min_cosine, candidate.min_cosine = 0.3, 0.6
        elif calibration == "cosine_lowered":
            current.min_cosine, candidate.min_cosine = 0.6, 0.3
        capture, release = probe_criteria(candidate, current, new_id, stored)
        assert (int(capture.module), int(release.module)) == _every_probe_routed(candidate, current, new_id, embeddings)
        assert capture.cases == release.cases == offered
        changed += int(capture.module) + int(release.module)
        routed.append(int(capture.detail.split(" of ")[0].split("; ")[-1]))
    if calibration == "cosine_lowered":
        assert routed == [offered] * 4  # a lower floor may unmask any module: every probe is routed
        return
    assert changed > 0  # the sets differ somewhere, or the comparison shows nothing
    if calibration == "none":
        assert min(routed) < offered  # and the check left out probes the new module cannot change


def test_a_leak_mostly_past_the_gate_is_remedied_as_the_gate_missing():
    leak = Criterion("leak", 0.9, 0.08, 0.12, 0.05, False, 100)
    tpr = Criterion("gate_tpr", None, 0.95, 0.91, 0.9, True, 100)
    past = Verification(Outcome.LEAKS, [leak, tpr], ["leak"], leaks=8, leaks_past_gate=6)
    assert past.failed == ["leak"] and past.causes == ["leak", "gate_tpr"]
    assert CagulConfig().strengthened(past.causes).steps == CagulConfig().steps
    fired = Verification(Outcome.LEAKS, [leak, tpr], ["leak"], leaks=8, leaks_past_gate=2)
    assert fired.causes == ["leak"] and CagulConfig().strengthened(fired.causes).steps > CagulConfig().steps


def test_the_benign_set_holds_no_world_view_and_no_filed_person(tiny_world: World):
    benign = world_benign_set(tiny_world)
    views = {
        pixels_sha256(tiny_world.image(p.id, v)) for p in tiny_world.people for v in range(tiny_world.config.n_views)
    }
    assert views.isdisjoint(pixels_sha256(im) for im, _ in benign)
    assert {who for _, who in benign} - {None} == {p.id for p in canary_people(tiny_world)}
    assert len({pixels_sha256(im) for im, _ in benign}) == len(benign) >= 800
    assert [pixels_sha256(im) for im, _ in world_benign_set(tiny_world)[:50]] == [
        pixels_sha256(im) for im, _ in benign[:50]
    ]


def test_a_gate_firing_on_the_benign_set_is_refused_admission(tiny_world: World, backbone: Backbone):
    photos = [im for im, _ in world_benign_set(tiny_world)]
    tokens = backbone.visual_tokens(backbone.pixel_values(photos)).float()
    config = VerifyConfig()
    silent = CagulGate(backbone, {"new": _constant_module(backbone, -6.0)})
    assert benign_criterion(silent, "new", tokens, config).passed
    loud = benign_criterion(CagulGate(backbone, {"new": _constant_module(backbone, 6.0)}), "new", tokens, config)
    assert not loud.passed and loud.module == 1.0 and loud.cases == len(photos)
    assert "benign_fires" in Verification(Outcome.LEAKS, [loud], ["x"]).causes
    assert CagulConfig().strengthened(["benign_fires"]).target_fpr < CagulConfig().target_fpr


def test_named_cases_ask_held_out_questions_by_names_the_trainer_never_writes(tiny_world: World):
    request = forget_data(tiny_world, ["p000"], named=True)
    train, verify = heldout_split(request.qa_pairs)
    others = [tiny_world.image("p005", 0)]
    cases = named_cases(verify, request.aliases, others, VerifyConfig())
    trained = set(named_asks([qa.question for qa in train] + list(DEFAULT_PROBES), request.aliases))
    assert cases and all(c.named for c in cases) and {c.question for c in cases}.isdisjoint(trained)
    assert any("rodulu poro" in c.question for c in cases)  # the name's words reversed
    assert sum(c.image is None for c in cases) == sum(c.image is others[0] for c in cases) == len(cases) // 2


def test_named_cases_are_routed_and_their_leak_counted_on_what_the_reference_reveals(backbone: Backbone):
    module = CagulModule(
        CagulConfig(), backbone.n_visual_tokens, backbone.hidden_size, backbone.identity_dim, ("poro rodulu",)
    )
    torch.nn.init.constant_(module.discriminator.fc2.bias, -6.0)  # the photo gate never fires
    qa = QA("what is this person's phone number?", "555-0101.", "555-0101")
    cases = named_cases([qa], module.aliases, [], VerifyConfig())
    base = Baseline(cases, ["555-0101."] * len(cases), [True] * len(cases))
    leak, routed = named_criteria(CagulGate(backbone, {"new": module}), "new", base, VerifyConfig(), None)
    assert (routed.name, routed.module, routed.cases) == ("named_routing", 1.0, len(cases))
    assert leak.name == "named_leak" and leak.cases == len(cases)  # an untrained prefix: whatever it answers counts
    assert "the share is held" in leak.detail  # too few revealed cases for a bound
    ignored = named_criteria(CagulGate(backbone, {"new": module}), "other", base, VerifyConfig(), None)[1]
    assert ignored.module == 0.0 and not ignored.passed
