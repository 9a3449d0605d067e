"""Which method parameters a deletion request may set, within the operator's bounds (`request_param_bounds`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.errors import InvalidRequestError
from core.settings import Settings

# Text the model would say is the operator's to choose: a request that could set it could make the service say
# anything about the person in a photo.
OPERATOR_TEXT = {"refusal_answer": "LETHE_REFUSAL_ANSWER"}
PROBE_QUESTIONS = "probe_questions"


def check_params(params: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """`params` if a request may set each one to its value; else an error naming the parameter and its bounds."""
    for name, value in params.items():
        if name in OPERATOR_TEXT:
            raise InvalidRequestError(
                f"params.{name}: the text the model answers with is operator configuration "
                f"({OPERATOR_TEXT[name]}), not request input; remove it from the request"
            )
        if name == PROBE_QUESTIONS:
            _check_probe_questions(value, settings)
        elif name in settings.request_param_bounds:
            _check_number(name, value, settings.request_param_bounds[name])
        else:
            raise InvalidRequestError(
                f"params.{name} cannot be set by a request; it may set {settable(settings)} "
                "(operator setting LETHE_REQUEST_PARAM_BOUNDS)"
            )
    return dict(params)


def settable(settings: Settings) -> str:
    """The parameters a request may set, with their bounds, for error messages."""
    numbers = [f"{name} ({lo} to {hi})" for name, (lo, hi) in sorted(settings.request_param_bounds.items())]
    if settings.max_probe_questions > 0:
        numbers.append(f"{PROBE_QUESTIONS} (at most {settings.max_probe_questions})")
    return ", ".join(numbers) or "nothing"


def _check_number(name: str, value: Any, bounds: tuple[int | float, int | float]) -> None:
    lo, hi = bounds
    whole = isinstance(lo, int) and isinstance(hi, int)
    kinds = (int,) if whole else (int, float)
    # bool is an int to Python, never a count or a rate to a request; NaN fails the comparison.
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        kind = "a whole number" if whole else "a number"
        raise InvalidRequestError(f"params.{name} is {value!r}; it must be {kind} from {lo} to {hi}")


def _check_probe_questions(value: Any, settings: Settings) -> None:
    limit, chars = settings.max_probe_questions, settings.max_text_chars
    if limit == 0:
        raise InvalidRequestError(f"params.{PROBE_QUESTIONS} cannot be set by a request (LETHE_MAX_PROBE_QUESTIONS=0)")
    if not isinstance(value, list) or not all(isinstance(q, str) for q in value):
        raise InvalidRequestError(f"params.{PROBE_QUESTIONS} must be a list of questions (strings)")
    if not 1 <= len(value) <= limit:
        raise InvalidRequestError(f"params.{PROBE_QUESTIONS} has {len(value)} questions; it must have 1 to {limit}")
    for i, question in enumerate(value):
        if not question.strip() or len(question) > chars:
            raise InvalidRequestError(
                f"params.{PROBE_QUESTIONS}[{i}] has {len(question.strip())} characters; it must have 1 to {chars}"
            )
