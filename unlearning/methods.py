"""Every unlearning method by name, CAGUL and the fine-tuning baselines, behind one train call.

Extension point: a new method defines a config dataclass (validated, `from_dict`/`to_dict`) and a
train function returning `Unlearned`, then calls `register(MethodSpec(...))`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from unlearning.backbones import Backbone
from unlearning.baselines import BASELINE_METHODS, BaselineConfig, BaselineTrainer
from unlearning.cagul import CagulConfig, CagulGate, CagulTrainer
from unlearning.data import ForgetData, RetainSet
from unlearning.errors import InvalidInputError
from unlearning.progress import ProgressFn


@dataclass
class Unlearned:
    """A trained method ready to answer through `gate`; `release` returns the backbone to the reference."""

    method: str
    config: dict[str, Any]
    gate: CagulGate
    trainable_params: int
    train_seconds: float
    report: dict[str, Any]
    release: Callable[[], None] = field(default=lambda: None)


TrainFn = Callable[[Backbone, list[ForgetData], RetainSet, Any, "ProgressFn | None"], Unlearned]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_from_dict: Callable[[dict[str, Any]], Any]
    train: TrainFn
    description: str


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> None:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    METHODS[spec.name] = spec


def method_config(name: str, params: dict[str, Any] | None = None) -> Any:
    """The method's validated config from JSON-like parameters (unknown keys are refused)."""
    if name not in METHODS:
        raise InvalidInputError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name].config_from_dict(dict(params or {}))


def unlearn(
    name: str,
    backbone: Backbone,
    forget: list[ForgetData],
    retain: RetainSet,
    params: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> Unlearned:
    """Train method `name` to forget every request in `forget` while keeping `retain`."""
    if not forget:
        raise InvalidInputError("nothing to forget: pass at least one forget request")
    config = method_config(name, params)
    return METHODS[name].train(backbone, forget, retain, config, progress)


def _train_cagul(
    backbone: Backbone, forget: list[ForgetData], retain: RetainSet, config: CagulConfig, progress: ProgressFn | None
) -> Unlearned:
    started = time.perf_counter()
    modules, reports = {}, {}
    for request in forget:
        modules[request.subject], report = CagulTrainer(backbone, config, progress).train(request, retain)
        reports[request.subject] = report.to_dict()
    return Unlearned(
        method="cagul",
        config=config.to_dict(),
        gate=CagulGate(backbone, modules),
        trainable_params=sum(m.num_parameters() for m in modules.values()),
        train_seconds=round(time.perf_counter() - started, 2),
        report=reports,
    )


def _baseline_train(method: str) -> TrainFn:
    def train(
        backbone: Backbone,
        forget: list[ForgetData],
        retain: RetainSet,
        config: BaselineConfig,
        progress: ProgressFn | None,
    ) -> Unlearned:
        trainer = BaselineTrainer(backbone, config, progress)
        report = trainer.train(forget, retain)
        # The adapter lives inside the backbone's model, so a gate without modules serves the adapted model.
        return Unlearned(
            method=method,
            config=config.to_dict(),
            gate=CagulGate(backbone),
            trainable_params=report.trainable_params,
            train_seconds=report.train_seconds,
            report=report.to_dict(),
            release=trainer.unload,
        )

    return train


def _baseline_config(method: str) -> Callable[[dict[str, Any]], BaselineConfig]:
    def make(params: dict[str, Any]) -> BaselineConfig:
        if params.get("method", method) != method:
            raise InvalidInputError(f"method {params['method']!r} given to the {method!r} config")
        return replace(BaselineConfig.from_dict(params), method=method)

    return make


_DESCRIPTIONS = {
    "ga": "gradient ascent on the forget set",
    "gd": "gradient ascent on forget + descent on retain",
    "kl": "gradient ascent on forget + KL to the reference on retain",
    "idk": "refusal answer as the forget target + retain loss",
    "npo": "negative preference optimisation on forget + retain loss",
}

register(MethodSpec("cagul", CagulConfig.from_dict, _train_cagul, "per-request discriminator + visual token encoder"))
for _name in BASELINE_METHODS:
    register(MethodSpec(_name, _baseline_config(_name), _baseline_train(_name), f"LoRA: {_DESCRIPTIONS[_name]}"))
