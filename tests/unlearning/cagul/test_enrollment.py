"""Bulk enrollment trains one real gate per subject: each fires on its own subject's new photo and is stored,
served and routed like a request's module."""

from __future__ import annotations

import pytest
import torch

from unlearning.backbones import Backbone
from unlearning.cagul import CagulConfig, CagulGate
from unlearning.cagul.enrollment import EnrollmentConfig, enroll
from unlearning.cagul.module import ModuleRewrite
from unlearning.world import World
from unlearning.world.population import benign_population, draw_identities, enrolled_people, photos_of, stream


def test_each_enrolled_gate_claims_its_own_subject_and_few_others(
    tiny_world: World, backbone: Backbone, monkeypatch: pytest.MonkeyPatch
):
    people = enrolled_people(tiny_world, 12)
    config = CagulConfig()
    rng = stream(tiny_world, 0, "test-negatives")
    strangers = [photos_of(tiny_world, i, 1, rng)[0] for i in draw_identities(tiny_world, 400, 0, "test-negatives")]
    gates = enroll(
        backbone,
        [p.photos for p in people],
        strangers[:300] + tiny_world.lookalike_images(300, seed=1),
        strangers[300:],
        config,
        EnrollmentConfig(steps=150, chunk=5),  # chunks of 5, 5 and 2 subjects
    )
    assert len(gates) == 12 and all(g.threshold >= config.threshold_floor for g in gates)
    gate = CagulGate(backbone, candidates=4, rewrites=lambda _id: ModuleRewrite(torch.nn.Identity(), None))
    for i, discriminator in enumerate(gates):
        gate.add_discriminator(f"s{i}", discriminator, config)
    tokens = backbone.visual_tokens(backbone.pixel_values([p.heldout for p in people]))
    chosen, _ = gate.route(tokens)
    own = (chosen == torch.arange(12)).float().mean()
    assert own >= 0.75, chosen  # a photo none of the gates trained on
    benign = benign_population(tiny_world, [p.identity for p in people], 100, 100, 50)
    benign_tokens = backbone.tokens_of(benign)
    fired, _ = gate.route(benign_tokens)
    assert (fired >= 0).float().mean() < own / 2  # uncalibrated, 12 gates on the tiny world: about 0.2
    assert bool(gate.recalled(tokens, torch.arange(12)).float().mean() >= own)

    # Calibrated for the set: any gate fires on at most the budget of the benign photos, and on no photo the
    # uncalibrated set did not fire on.
    before = gate.firing(tokens)[1]
    margin = gate.calibrate(benign_tokens, 0.01)
    assert margin >= 0 and (gate.route(benign_tokens)[0] >= 0).float().mean() <= 0.01
    after = gate.firing(tokens)[1]
    assert bool((before | ~after).all())
    assert gate.calibrate(benign_tokens, 0.99) == 0.0  # a budget the set already meets changes nothing
    # Or on the prototype cosine: each gate keeps its threshold and the set one floor, with the same guarantees.
    floor = gate.calibrate(benign_tokens, 0.01, scale="cosine")
    assert -1 <= floor <= 1 and gate.offset == 0.0
    assert (gate.route(benign_tokens)[0] >= 0).float().mean() <= 0.01
    assert bool((before | ~gate.firing(tokens)[1]).all())
    assert gate.calibrate(benign_tokens, 0.99, scale="cosine") == float("-inf")
    # Each activation calibrates again on the same set: its embeddings are kept, and the floor is the one a fresh
    # embedding of the set gives.
    embedded: list[int] = []
    embed = backbone.identity_embeddings
    monkeypatch.setattr(backbone, "identity_embeddings", lambda t: embedded.append(len(t)) or embed(t))
    assert gate.calibrate(benign_tokens, 0.01, scale="cosine") == floor and not embedded
    assert gate.calibrate(benign_tokens.clone(), 0.01, scale="cosine") == floor and sum(embedded) == len(benign_tokens)
    # One more module joins: only the photos whose stage 1 it enters are routed again, to the floor the whole set
    # routed anew gives (to float rounding: a few photos' cosines come out of a smaller matmul).
    gate.remove_module("s11")
    gate.calibrate(benign_tokens, 0.01, scale="cosine")
    routed: list[int] = []
    scores = gate.scores
    monkeypatch.setattr(gate, "scores", lambda t, e=None: routed.append(len(t)) or scores(t, e))
    gate.add_discriminator("s11", gates[11], config)
    assert gate.calibrate(benign_tokens, 0.01, scale="cosine") == pytest.approx(floor, abs=1e-6)
    assert 0 < sum(routed) < len(benign_tokens)
    assert gate.calibrate(benign_tokens.clone(), 0.01, scale="cosine") == floor
    # The exhaustive gate: every module scores every photo, so a join adds its own column and routes no photo again.
    gate.candidates = 0
    gate.remove_module("s11")
    gate.calibrate(benign_tokens, 0.01, scale="cosine")
    routed.clear()
    gate.add_discriminator("s11", gates[11], config)
    exhaustive = gate.calibrate(benign_tokens, 0.01, scale="cosine")
    assert not routed and exhaustive == pytest.approx(gate.calibrate(benign_tokens.clone(), 0.01, scale="cosine"))
    assert (gate.route(benign_tokens)[0] >= 0).float().mean() <= 0.01


def test_populations_are_new_people_and_repeatable(tiny_world: World):
    people = enrolled_people(tiny_world, 5)
    again = enrolled_people(tiny_world, 5)
    assert [p.heldout.tobytes() for p in people] == [p.heldout.tobytes() for p in again]
    world_ids = {p.identity for p in tiny_world.people}
    assert len({p.identity for p in people} | world_ids) == 5 + len(world_ids)
    assert all(len(p.photos) == 3 for p in people)
