"""Timing the steps of one operation and naming the step an error happened in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from agent.stick.errors import StickIOError
from agent.stick.fatfs import FatCorrupt
from agent.timing import StepTimer


class Stopwatch(StepTimer):
    """A :class:`StepTimer` whose OSErrors (and FAT contradictions) become :class:`StickIOError`."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        try:
            with super().step(name):
                yield
        except OSError as exc:
            raise StickIOError.from_os(name, self.what, exc) from exc
        except FatCorrupt as exc:
            raise StickIOError(
                name,
                self.what,
                detail=f"the filesystem contradicts itself: {exc}",
                reason="stick-corrupt",
                hint="check the stick with fsck.fat, or use another one",
            ) from exc
