"""The same checks for every registered method: its config round-trips, and a few steps train and answer."""

from __future__ import annotations

import pytest

from unlearning.backbones import Backbone, parameters_sha256
from unlearning.errors import InvalidInputError
from unlearning.evaluation.answering import answer_batched
from unlearning.methods import METHODS, method_config, unlearn
from unlearning.world import World
from unlearning.world.requests import forget_data, world_retain_set

ALL_METHODS = sorted(METHODS)
# A handful of steps: these tests check what every method must do, not how well it forgets.
FEW_STEPS = {"cagul": {"steps": 3, "discriminator_steps": 3, "positive_augmentations": 2}}
BASELINE_FEW_STEPS = {"steps": 2, "batch_size": 4}


def few_steps(name: str) -> dict:
    return FEW_STEPS.get(name, BASELINE_FEW_STEPS)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_config_round_trips_through_its_dict(name: str) -> None:
    config = method_config(name, few_steps(name))
    assert method_config(name, config.to_dict()) == config
    assert method_config(name) == method_config(name, method_config(name).to_dict())


@pytest.mark.parametrize("name", ALL_METHODS)
def test_unknown_parameters_are_refused(name: str) -> None:
    with pytest.raises(InvalidInputError, match="unknown"):
        method_config(name, {"no_such_parameter": 1})


@pytest.mark.parametrize("name", ALL_METHODS)
def test_a_few_steps_train_and_answer_and_release_the_backbone(name: str, tiny_world: World, backbone: Backbone):
    subject = tiny_world.split("forget1")[0]
    before = parameters_sha256(backbone.model)
    reported: list[tuple] = []
    unlearned = unlearn(
        name,
        backbone,
        [forget_data(tiny_world, [subject.id])],
        world_retain_set(tiny_world, exclude=[subject.id]),
        few_steps(name),
        lambda *values: reported.append(values),
    )
    try:
        assert unlearned.method == name and unlearned.trainable_params > 0
        assert method_config(name, unlearned.config) == method_config(name, few_steps(name))
        fact = subject.facts[0]
        images = [tiny_world.image(subject.id, v) for v in (0, tiny_world.heldout_views()[0])]
        answers = answer_batched(unlearned.gate, images, [fact.train_questions[0], fact.heldout_question])
        assert len(answers) == 2 and all(isinstance(a.answer, str) for a in answers)
        # Every method reports through the one progress type: (phase, step, total, loss).
        assert reported and all(len(v) == 4 and isinstance(v[0], str) for v in reported)
    finally:
        unlearned.release()
    assert parameters_sha256(backbone.model) == before
