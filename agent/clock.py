"""The clock seam: everything that asks "what time is it" asks a :class:`Clock`."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC wall-clock time."""

    def monotonic(self) -> float:
        """Seconds for measuring durations; never jumps."""


class SystemClock:
    """The machine's clock, optionally shifted (to model a skewed workstation)."""

    def __init__(self, offset_seconds: float = 0.0) -> None:
        self.offset = timedelta(seconds=offset_seconds)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to (tests of expiry and lifecycles)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 0.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


def utc(dt: datetime) -> datetime:
    """Make ``dt`` aware UTC (naive values are taken as UTC)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def parse_iso(text: str) -> datetime:
    """The inverse of :func:`iso` (any ISO 8601 form; naive taken as UTC), aware UTC."""
    return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


def iso(dt: datetime) -> str:
    """ISO 8601 UTC with a ``Z`` and millisecond precision."""
    return utc(dt).isoformat(timespec="milliseconds").replace("+00:00", "Z")
