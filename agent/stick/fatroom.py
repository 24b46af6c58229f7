"""Whether a FAT target may take a write: the census (is it sound?) and the room for a new root file."""

from __future__ import annotations

import os
from collections.abc import Iterable

from agent.stick import fatcheck, names
from agent.stick.errors import StickDamaged, StickIOError, StickRefused
from agent.stick.fathandle import FatHandle
from agent.stick.model import temp_name
from agent.stick.mtools import check_name
from agent.stick.steps import Stopwatch


class FatChecks(FatHandle):
    """The census, taken once and kept while our own writes keep a sound stick sound, and the room rule."""

    def census(self) -> fatcheck.Census:
        """The census of the whole filesystem, taken once: our own writes keep a sound stick sound."""
        if self._census is None:
            sw = Stopwatch(f"checking the filesystem of {self.path}")
            with sw.step("census"):
                self._census = fatcheck.take(self.reader)
            self._changed = False
        return self._census

    def check_sound(self) -> list[str]:
        """Raise :class:`StickDamaged` when the filesystem is damaged; return what is odd but harmless."""
        census = self.census()
        if census.problems:
            raise StickDamaged(self.path, census.problems, block=self.block)
        return list(census.warnings)

    def check_room(self, name: str, size: int, *, freeing: Iterable[str] = ()) -> None:
        """Refuse, before anything exists, a ``name`` of ``size`` bytes that could not be written to the root
        once the root entries ``freeing`` are removed (counted as free: their clusters and slots)."""
        check_name(name)
        sw = Stopwatch(f"checking room for {name} on {self.path}")
        with sw.step("room"):
            if freeing:
                self.reader.forget()
            going = [e for e in (self.reader.find(None, n) for n in freeing) if e is not None and not e.is_dir]
            kept = self._census if not self._changed and not going else None
            room = kept.room if kept is not None else fatcheck.room(self.reader, going)
        cluster = self.geo.cluster_size
        clusters = -(-size // cluster)
        slots = names.slots_for(temp_name(name, os.getpid()))
        short = room.shortfall(clusters, slots)
        if short == "space":
            free, needed = room.usable_free * cluster, clusters * cluster
            raise StickRefused(
                f"{self.path} has {free} bytes free; {name} needs {needed}",
                reason="stick-full",
                exit_code=StickIOError.exit_code,
                hint="free some space or wipe the stick",
                details={"free": free, "needed": needed},
            )
        if short == "root":
            raise StickRefused(
                f"the root directory of {self.path} is full: {name} needs {slots} free entries in a row, the longest "
                f"run is {room.root_free_run} (a FAT{self.geo.fat_bits} root holds {self.geo.root_entries} entries)",
                reason="stick-root-full",
                hint="delete files from the stick's root, or wipe it (panostage stick wipe)",
                details={"slots_needed": slots, "longest_free_run": room.root_free_run},
            )
