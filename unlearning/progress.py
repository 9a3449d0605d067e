"""The one progress callback every long computation of the library reports through."""

from __future__ import annotations

from collections.abc import Callable

# (phase, step, total, loss): `step` of `total` done in `phase`; loss is nan where a phase has none.
ProgressFn = Callable[[str, int, int, float], None]
