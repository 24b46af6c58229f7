"""Per-step durations of one operation, and the step it was in when it failed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StepTimer:
    """How long each named step took (milliseconds, in order).

    ``current`` names the step under way; it stays set when a step raises, so the
    error can say where it happened.
    """

    def __init__(self, monotonic: Callable[[], float] = time.perf_counter) -> None:
        self.monotonic = monotonic
        self.durations_ms: dict[str, float] = {}
        self.current: str | None = None
        self.last: str | None = None  # the step most recently begun, finished or not

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.current = self.last = name
        start = self.monotonic()
        try:
            yield
        finally:
            elapsed = (self.monotonic() - start) * 1000.0
            self.durations_ms[name] = round(self.durations_ms.get(name, 0.0) + elapsed, 3)
        self.current = None

    @property
    def total_ms(self) -> float:
        return round(sum(self.durations_ms.values()), 3)
