"""The whole loop on the reference world: measure, train one CAGUL module, measure again."""

from __future__ import annotations

import time
from typing import Any

from unlearning.backbones import Backbone, parameters_sha256
from unlearning.cagul.config import CagulConfig
from unlearning.cagul.gate import CagulGate
from unlearning.cagul.trainer import CagulTrainer
from unlearning.evaluation.drivers.forgetting import (
    base_params,
    forced_identical_share,
    identical_share,
    leak_splits,
    named_leaks,
)
from unlearning.evaluation.metrics.gate import gate_rates
from unlearning.progress import ProgressFn
from unlearning.world.people import Person
from unlearning.world.requests import forget_data, world_retain_set
from unlearning.world.store import World


def run_demo(
    backbone: Backbone,
    world: World,
    subject_ids: list[str],
    config: CagulConfig | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Leak before and after forgetting `subject_ids` with one module (asked by name too where the world teaches
    names: the request then files them), plus what it cost everyone else."""
    subjects = [world.person(s) for s in subject_ids]
    named = world.config.named_questions
    reference = CagulGate(backbone)
    before = _leaks(reference, world, subjects, named)
    base_hash = parameters_sha256(backbone.model)
    started = time.perf_counter()
    module, report = CagulTrainer(backbone, config, progress).train(
        forget_data(world, subject_ids, named=named), world_retain_set(world, exclude=subject_ids)
    )
    train_seconds = time.perf_counter() - started
    if parameters_sha256(backbone.model) != base_hash:
        raise AssertionError("the base model changed during training")
    gate = CagulGate(backbone, {"+".join(subject_ids): module})
    after = _leaks(gate, world, subjects, named)
    retain = [p for p in world.split("retain") if p.id not in subject_ids]
    unseen = world.split("unseen")
    tpr, fpr = gate_rates(gate, world, subjects, retain + unseen)
    return {
        "subject": ",".join(subject_ids),
        "before": before,
        "after": after,
        "retain_identical": identical_share(reference, gate, world, retain),
        "unseen_identical": identical_share(reference, gate, world, unseen),
        "retain_identical_if_gate_misfires": forced_identical_share(reference, module, world, retain),
        "gate_tpr": tpr,
        "gate_fpr": fpr,
        "module_params": module.num_parameters(),
        "base_params": base_params(backbone),
        "train_seconds": round(train_seconds, 1),
        "peak_memory_mb": report.peak_memory_mb,
        "base_model_unchanged": True,
        "training": report.to_dict(),
    }


def _leaks(gate: CagulGate, world: World, subjects: list[Person], named: bool) -> dict[str, float]:
    leaks = vars(leak_splits(gate, world, subjects))
    return (leaks | named_leaks(gate, world, subjects)) if named else leaks
