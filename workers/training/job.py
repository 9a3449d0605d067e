"""What one delivery works on: the request's data, decrypted, and its training configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.forget_requests.params import check_params
from core.settings import Settings
from unlearning.cagul import CagulConfig
from unlearning.cagul.config import TOKEN_GATE_THRESHOLD_FLOOR, token_discriminator_input
from unlearning.data import ForgetData
from unlearning.deadline import Deadline


@dataclass
class Job:
    """Everything one delivery works on, decrypted from the request."""

    request_id: str
    job_id: str
    forget: ForgetData
    config: CagulConfig
    filed_people: list[str]
    own_people: list[str]
    deadline: Deadline


def job_config(params: dict[str, Any], settings: Settings, token_shape: tuple[int, int] | None = None) -> CagulConfig:
    """The request's parameters, checked again against today's bounds, with the operator's refusal text and answer
    length; `token_shape` (gate tokens, hidden size) for a base model without an identity encoder, whose modules
    discriminate on the tokens themselves, under a lower threshold floor unless the request sets one."""
    config = check_params(params, settings)
    if settings.refusal_answer is not None:
        config["refusal_answer"] = settings.refusal_answer
    config["max_answer_tokens"] = settings.train_max_answer_tokens
    config["micro_batch_size"] = settings.train_micro_batch
    if token_shape is not None:
        # A checkpoint from elsewhere has no identity encoder beside it (the reference world trains one). Such modules
        # carry no prototype, so the gate runs them all (exhaustive), not through the two-stage index.
        config.setdefault("discriminator_input", token_discriminator_input(*token_shape))
        config.setdefault("threshold_floor", TOKEN_GATE_THRESHOLD_FLOOR)
    return CagulConfig.from_dict(config)
