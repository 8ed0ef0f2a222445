"""Time to useful work: named moments in a workload (data loaded, model loaded, first step, warmed up).

GPU-seconds spent before the first training step are paid for but do no training; recording when each
milestone happened shows where start-up time goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DATA_LOADED = "data_loaded"
MODEL_LOADED = "model_loaded"
FIRST_STEP = "first_step"
WARMED_UP = "warmed_up"


class Milestones:
    """Seconds from creation to each named milestone; the first time a name is reached counts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._at: dict[str, float] = {}

    def reach(self, name: str) -> float:
        """Record ``name`` now (unless already reached) and return its seconds since start."""
        if name not in self._at:
            self._at[name] = self._clock() - self._start
        return self._at[name]

    def seconds(self, name: str) -> float | None:
        return self._at.get(name)

    def between(self, first: str, second: str) -> float | None:
        """Seconds from one milestone to another; None unless both were reached."""
        a, b = self._at.get(first), self._at.get(second)
        return None if a is None or b is None else b - a

    def durations(self) -> dict[str, float]:
        """Every milestone reached, in the order reached, as seconds since start."""
        return dict(self._at)

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}time_to_<name>_seconds`` for each milestone reached."""
        return {f"{prefix}time_to_{name}_seconds": value for name, value in self._at.items()}
