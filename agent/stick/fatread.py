"""Reading a FAT target: listing, looking up, reading files back (O_DIRECT or mtools), naming entries to mtools."""

from __future__ import annotations

import errno
import os

from agent.stick import blockio
from agent.stick.errors import StickConflict, StickFileTooLarge, StickIOError
from agent.stick.fatfs import DirEntry, FatReader, split_rel
from agent.stick.fathandle import FatHandle, entry_of
from agent.stick.model import READ_LIMIT, Entry
from agent.stick.mtools import ADDRESSABLE
from agent.stick.steps import Stopwatch


class FatReading(FatHandle):
    """The reading half of :class:`agent.stick.fat.FatTarget`: metadata natively, file bytes as configured."""

    def list_root(self) -> list[Entry]:
        return self.list_dir("")

    def list_dir(self, rel: str) -> list[Entry]:
        sw = Stopwatch(f"listing {rel or '/'} on {self.path}")
        with sw.step("list"):
            self.reader.forget()
            cluster = self.reader.dir_cluster(rel)
            return sorted((entry_of(e) for e in self.reader.dir_entries(cluster)), key=lambda e: e.name)

    def lookup(self, rel: str) -> Entry | None:
        found = self._lookup(rel)
        return None if found is None else entry_of(found)

    def _lookup(self, rel: str) -> DirEntry | None:
        sw = Stopwatch(f"looking up {rel} on {self.path}")
        with sw.step("lookup"):
            self.reader.forget()
            return self.reader.lookup(rel)

    def read(self, rel: str, *, bypass_cache: bool = True, limit: int = READ_LIMIT) -> bytes:
        """Read a file.

        ``bypass_cache`` (the read-back after a write): with ``readback="direct"`` (default) an
        independent FAT reader goes through an ``O_DIRECT`` descriptor, so directory, FAT and data
        all come from the medium and nobody's cache is disturbed; with ``readback="mtools"`` (or
        where O_DIRECT is unsupported) caches are dropped (fsync, DONTNEED, BLKFLSBUF) and
        ``mcopy ::file -`` reads it.  Without ``bypass_cache``: mcopy through the caches.
        A file larger than ``limit`` is refused from its directory entry (:class:`StickFileTooLarge`).
        """
        what = f"reading {rel} from {self.path}"
        if bypass_cache and self.readback == "direct":
            data = self._read_direct(rel, what, limit)
            if data is not None:
                self.last_read_mode = "O_DIRECT"
                return data
        sw = Stopwatch(what)
        with sw.step("drop_cache"):
            if bypass_cache:
                blockio.drop_cache(self.fd, block=self.block)
        entry = self._lookup(rel)
        if entry is None:
            raise StickIOError("lookup", what, errno=errno.ENOENT)
        if entry.is_dir:
            raise StickConflict(f"{rel} on the stick is a directory", reason="stick-not-a-file")
        if entry.size > limit:
            raise StickFileTooLarge(rel, entry.size, limit)
        with sw.step("read"):
            data = self.mtools.run("mcopy", self._addr(rel), "-", step="read", what=what).stdout
        if len(data) != entry.size:
            raise StickIOError(
                "read",
                what,
                errno=errno.EIO,
                detail=f"mcopy returned {len(data)} bytes, the directory says {entry.size}",
            )
        self.last_read_mode = "mtools+drop-cache" if bypass_cache else "mtools"
        return data

    def _read_direct(self, rel: str, what: str, limit: int) -> bytes | None:
        """Read ``rel`` natively through a fresh O_DIRECT descriptor; None when O_DIRECT is unsupported."""
        try:
            fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None
            raise StickIOError.from_os("open", what, exc) from exc
        sw = Stopwatch(what)
        try:
            with sw.step("read"):
                try:
                    reader = FatReader(fd, self.geo, direct=True)
                    entry = reader.lookup(rel)
                    data = None if entry is None or entry.is_dir else reader.read_file(entry, limit=limit)
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        return None
                    raise
        finally:
            os.close(fd)
        if entry is None:
            raise StickIOError("lookup", what, errno=errno.ENOENT)
        if entry.is_dir:
            raise StickConflict(f"{rel} on the stick is a directory", reason="stick-not-a-file")
        return data

    def _addr(self, rel: str) -> str:
        """The mtools path of an existing entry: each part by its long name, else its 8.3 name - the first that
        mtools takes as typed and that finds no other entry of its directory; refused when neither does."""
        parts = split_rel(rel)
        out: list[str] = []
        cluster: int | None = None
        for i, part in enumerate(parts):
            entries = self.reader.dir_entries(cluster)
            entry = self.reader.find(cluster, part, entries)
            if entry is None:
                raise StickIOError("lookup", f"finding {rel} on {self.path}", errno=errno.ENOENT)
            name = next(
                (
                    n
                    for n in (entry.name, entry.short_name)
                    if ADDRESSABLE.fullmatch(n) and not any(e is not entry and e.matches(n) for e in entries)
                ),
                None,
            )
            if name is None:
                raise StickConflict(
                    f"{entry.name!r} on the stick cannot be named unambiguously to mtools",
                    reason="stick-ambiguous-name",
                    hint="rename or remove it with another tool, or erase the stick (panostage stick prepare)",
                )
            out.append(name)
            if i < len(parts) - 1:
                cluster = self.reader.subdir_cluster(entry)
        return "::/" + "/".join(out)
