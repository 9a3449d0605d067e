"""A time budget that long computations check between steps; the caller decides what running out means."""

from __future__ import annotations

import time
from collections.abc import Callable

from unlearning.errors import TimeBudgetExceeded


class Deadline:
    """`seconds` from now on `clock`; `check` raises `TimeBudgetExceeded` once they are used up."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.ends_at = clock() + seconds

    def expired(self) -> bool:
        return self.clock() >= self.ends_at

    def check(self, where: str) -> None:
        if self.expired():
            raise TimeBudgetExceeded(f"its time budget of {self.seconds:g} s ran out during {where}")


def check(deadline: Deadline | None, where: str) -> None:
    """`deadline.check(where)`, for computations whose deadline is optional."""
    if deadline is not None:
        deadline.check(where)
