"""CAGUL end to end on the tiny reference world: real LLaVA, real training, measured acceptance figures."""

from __future__ import annotations

import pytest
import torch

from unlearning.artifacts import load_module, save_module
from unlearning.backbones import Backbone, parameters_sha256
from unlearning.cagul import CagulConfig, CagulGate, CagulModule, CagulTrainer
from unlearning.evaluation.demo import run_demo
from unlearning.evaluation.forgetting import gate_rates, identical_share, leak_splits
from unlearning.world import World
from unlearning.world.requests import forget_data, world_retain_set

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(backbone: Backbone, tiny_world: World) -> dict:
    return run_demo(backbone, tiny_world, ["p000"])


def test_reference_model_leaks_before(demo):
    assert demo["before"]["leak_direct"] >= 0.9


def test_subject_is_forgotten_after(demo):
    assert demo["after"]["leak_direct"] <= 0.05
    assert demo["after"]["leak_paraphrase"] <= 0.10
    assert demo["after"]["leak_new_image"] <= 0.10


def test_everyone_else_is_untouched(demo):
    assert demo["retain_identical"] >= 0.99
    assert demo["unseen_identical"] >= 0.99
    assert demo["gate_fpr"] <= 0.01


def test_only_the_module_trains_and_the_base_model_is_unchanged(backbone: Backbone, tiny_world: World):
    before = parameters_sha256(backbone.model)
    trainer = CagulTrainer(backbone, CagulConfig(steps=3, discriminator_steps=3, positive_augmentations=2))
    module, report = trainer.train(
        forget_data(tiny_world, ["p001"]), world_retain_set(tiny_world, exclude=["p001"], lookalikes=10)
    )
    assert parameters_sha256(backbone.model) == before
    assert all(not p.requires_grad for p in backbone.model.parameters())
    assert report.trainable_params == module.num_parameters() < sum(p.numel() for p in backbone.model.parameters())
    assert module.encoder.fc2.weight.abs().sum() > 0  # the encoder did move


@pytest.fixture(scope="module")
def three_modules(backbone: Backbone, tiny_world: World, tmp_path_factory) -> CagulGate:
    """Three people forgotten by three separate modules, saved to disk and loaded back, active together."""
    subjects = ["p000", "p002", "p003"]
    root = tmp_path_factory.mktemp("modules")
    modules: dict[str, CagulModule] = {}
    retain = world_retain_set(tiny_world, exclude=subjects)
    for s in subjects:
        module, _ = CagulTrainer(backbone).train(forget_data(tiny_world, [s]), retain)
        save_module(module, root / s, backbone.fingerprint())
        modules[s] = load_module(root / s, backbone.fingerprint())
    return CagulGate(backbone, modules)


def test_three_modules_active_together_each_forget_their_person(three_modules: CagulGate, tiny_world: World):
    for s in three_modules.module_ids:
        assert leak_splits(three_modules, tiny_world, [tiny_world.person(s)]).leak_direct <= 0.05


def test_three_modules_active_together_leave_everyone_else_alone(
    backbone: Backbone, three_modules: CagulGate, tiny_world: World
):
    subjects = three_modules.module_ids
    others = [p for p in tiny_world.people if p.id not in subjects and p.split in ("retain", "unseen")]
    assert identical_share(CagulGate(backbone), three_modules, tiny_world, others) >= 0.99
    _, fpr = gate_rates(three_modules, tiny_world, [tiny_world.person(s) for s in subjects], others)
    assert fpr <= 0.01


def test_when_no_module_fires_output_is_bit_identical(backbone: Backbone, tiny_world: World):
    module = CagulModule(CagulTrainer(backbone).config, backbone.n_visual_tokens, backbone.hidden_size)
    torch.nn.init.normal_(module.encoder.fc2.weight)
    module.discriminator.threshold.fill_(2.0)  # a probability never exceeds 1: nothing fires
    gate = CagulGate(backbone, {"never": module})
    person = tiny_world.people[3]
    images = [tiny_world.image(person.id, v) for v in range(3)]
    question = person.facts[2].train_questions[0]
    batch = backbone.make_batch(backbone.pixel_values(images), [question] * 3)
    with torch.no_grad():
        reference = backbone.model.generate(
            **batch.model_inputs(), max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    answers = gate.answer(images, [question] * 3, max_new_tokens=12)
    assert all(a.module_id is None for a in answers)
    expected = backbone.tokenizer.batch_decode(
        reference.sequences[:, batch.input_ids.shape[1] :], skip_special_tokens=True
    )
    assert [a.answer for a in answers] == [e.strip() for e in expected]
