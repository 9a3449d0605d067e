"""A deadline holds inside training and verification: checked between steps, it stops what would run long."""

from __future__ import annotations

import time

import pytest

from unlearning.backbones import Backbone
from unlearning.cagul import CagulConfig, CagulGate, CagulTrainer
from unlearning.cagul.verification import VerifyConfig, baseline, build_cases
from unlearning.data import ForgetData, RetainSet
from unlearning.deadline import Deadline
from unlearning.errors import TimeBudgetExceeded
from unlearning.world import World
from unlearning.world.requests import forget_data, world_retain_set

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tiny_world: World) -> tuple[ForgetData, RetainSet]:
    return forget_data(tiny_world, ["p001"]), world_retain_set(tiny_world, exclude=["p001"], lookalikes=10)


def test_training_stops_near_its_budget(backbone: Backbone, data: tuple[ForgetData, RetainSet]):
    trainer = CagulTrainer(backbone, CagulConfig(steps=2000, discriminator_steps=2000), deadline=Deadline(2))
    started = time.monotonic()
    with pytest.raises(TimeBudgetExceeded, match="time budget of 2 s ran out during"):
        trainer.train(*data)
    # One step or one batch of views past 2 s, not 4,000 steps (minutes on these cores).
    assert time.monotonic() - started < 30


def test_the_encoder_loop_checks_the_deadline_every_step(backbone: Backbone, data: tuple[ForgetData, RetainSet]):
    steps: list[tuple[str, int]] = []
    # The clock the deadline reads jumps past its end once the encoder has reported its third step.
    deadline = Deadline(1, clock=lambda: 10.0 if ("encoder", 3) in steps else 0.0)
    config = CagulConfig(steps=50, discriminator_steps=5, positive_augmentations=2)
    trainer = CagulTrainer(
        backbone, config, lambda phase, step, total, loss: steps.append((phase, step)), None, deadline
    )
    with pytest.raises(TimeBudgetExceeded, match="during encoder step 4/50"):
        trainer.train(*data)


def test_verification_stops_between_batches_of_answers(backbone: Backbone, data: tuple[ForgetData, RetainSet]):
    forget = data[0]
    cases = build_cases(forget.images, forget.qa_pairs, VerifyConfig())
    with pytest.raises(TimeBudgetExceeded, match=r"verification \(answers 1-32 of"):
        baseline(CagulGate(backbone), cases, VerifyConfig(), Deadline(0))
