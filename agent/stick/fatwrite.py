"""Changing a FAT target through mtools, every change inside the undo journal, in a fixed write and fsync order.

``write_atomic``: mcopy to a temporary name in the root, fsync, mren onto the name, fsync; a
replaced file's freed clusters are zeroed afterwards.  ``write`` and ``remove`` likewise run their
steps inside :meth:`FatWriting._journaled`: a failed mtools call leaves the filesystem exactly as
it was (:mod:`agent.stick.journal`).  ``wipe`` zeroes a file's clusters, flushes, then removes it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from agent.stick import blockio
from agent.stick.errors import StickConflict, StickIOError, StickNameError
from agent.stick.fatfs import DirEntry, FatCorrupt, runs, split_rel
from agent.stick.fathandle import entry_of
from agent.stick.fatread import FatReading
from agent.stick.fatroom import FatChecks
from agent.stick.journal import Snapshot
from agent.stick.model import WriteReport, refuse_look_alikes, stale_temp_of, temp_name
from agent.stick.mtools import dos_path, errno_in, memory_file
from agent.stick.steps import Stopwatch


class FatWriting(FatReading, FatChecks):
    """The writing half of :class:`agent.stick.fat.FatTarget`: checked, journaled, flushed."""

    def _journaled(self, sw: Stopwatch, snap: Snapshot, what: str, steps: list[tuple[str, Callable[[], None]]]) -> None:
        """Run ``steps`` (name, callable); on any failure restore ``snap``, flush, re-raise."""
        self._changed = True
        try:
            for name, action in steps:
                with sw.step(name):
                    action()
        except BaseException as exc:
            note = exc.details if isinstance(exc, StickIOError) else {}
            try:
                note["undone_bytes"] = snap.restore()
                os.fsync(self.fd)
            except OSError as undo_exc:
                note["undo_failed"] = str(undo_exc)
            self.reader.forget()
            raise

    def write_atomic(self, name: str, data: bytes, *, replace: bool = True) -> WriteReport:
        """mcopy to a temp name in the root, fsync, mren onto ``name``, fsync - all inside the undo journal."""
        self.require_writable()
        self.check_sound()
        dos_path(name)
        if len(split_rel(name)) != 1:
            raise StickNameError(f"write_atomic writes to the root only, not {name!r}")
        what = f"writing {name} to {self.path}"
        sw = Stopwatch(what)
        with sw.step("inspect"):
            self.reader.forget()
            root = self.reader.dir_entries(None)
            existing = self.reader.find(None, name, root)
            if existing is not None and existing.is_dir:
                raise StickConflict(
                    f"{name} on the stick is a directory; it will not be replaced",
                    reason="stick-name-is-dir",
                    details={"entry": entry_of(existing).to_dict()},
                )
            if existing is not None and not replace:
                raise StickConflict(f"{name} already exists on the stick", reason="stick-name-exists")
            refuse_look_alikes(name, [e.name for e in root])
            stale = [e.name for e in root if not e.is_dir and stale_temp_of(e.name, name)]
        with sw.step("stale_temps"):
            scrubbed = sum(self.wipe(leftover) for leftover in stale)
        with sw.step("snapshot"):
            snap = Snapshot.take(self.reader, [None])
            old_clusters = self.reader.chain(existing.first_cluster) if existing else []
        with sw.step("space"):
            self.check_room(name, len(data))  # one rule with stage's early check (the census's room when unchanged)
        tmp = temp_name(name, os.getpid())
        with sw.step("memfd"):
            source = memory_file(data, runtime_dir=self.runtime_dir)
        try:

            def copy() -> None:
                self.mtools.run("mcopy", "-D", "o", "-", dos_path(tmp), stdin=source, step="copy", what=what)
                self.reader.forget()
                written = self.reader.lookup(tmp)
                if written is None or written.size != len(data):
                    raise StickIOError(
                        "copy",
                        what,
                        errno=errno.EIO,
                        detail=f"mcopy left {written.size if written else 'no'} bytes, not {len(data)}",
                    )

            def rename() -> None:
                done = self.mtools.run("mren", "-D", "o", dos_path(tmp), dos_path(name), step="rename", what=what)
                self.reader.forget()
                # mren (4.0.x) exits 0 when its directory write fails (buffer_flush): check it took
                renamed = self.reader.lookup(name)
                if (
                    self.reader.lookup(tmp) is not None
                    or renamed is None
                    or renamed.name.lower() != name.lower()
                    or renamed.size != len(data)
                ):
                    said = " ".join(done.stderr.split())
                    raise StickIOError(
                        "rename",
                        what,
                        errno=errno_in(said) or errno.EIO,
                        detail=f"mren exited 0 but {name} is not in place: {said or 'no message'}",
                    )

            self._journaled(
                sw,
                snap,
                what,
                [
                    ("copy", copy),
                    ("fsync", lambda: os.fsync(self.fd)),
                    ("rename", rename),
                    ("fsync_rename", lambda: os.fsync(self.fd)),
                ],
            )
        finally:
            _close_memory(source)
        if old_clusters:
            with sw.step("scrub_old"):
                scrubbed += self._zero_free(old_clusters)
        return WriteReport.of(
            name, data, replaced=existing is not None, durations_ms=sw.durations_ms, scrubbed=scrubbed
        )

    def _zero_free(self, clusters: list[int]) -> int:
        """Overwrite those of ``clusters`` that are free now with zeros (best effort); bytes zeroed.

        Not flushed here (the new file is already durable; this is hygiene that should not cost
        another flush on the hot path): the next fsync, or close(), takes the zeros to the medium.
        """
        try:
            self.reader.forget()
            free = [c for c in clusters if self.reader.entry(c) == 0]
            self._dirty = True
            return self._zero_clusters(free)
        except (OSError, FatCorrupt):
            return 0

    def _zero_clusters(self, clusters: list[int]) -> int:
        self._changed = True
        size = self.geo.cluster_size
        for first, count in runs(clusters):
            blockio.zero_range(self.fd, self.geo.cluster_offset(first), count * size)
        return len(clusters) * size

    def _path_dirs(self, parts: list[str]) -> list[int | None]:
        """The first clusters of the existing directories along ``parts`` (root included)."""
        found: list[int | None] = [None]
        for i in range(1, len(parts)):
            entry = self.reader.lookup("/".join(parts[:i]))
            if entry is None or not entry.is_dir:
                break
            found.append(self.reader.subdir_cluster(entry))
        return found

    def write(self, rel: str, data: bytes) -> None:
        """Write ``rel`` (replacing it), creating parent directories; journaled and flushed."""
        self.require_writable()
        self.check_sound()
        path = dos_path(rel)
        parts = split_rel(rel)
        what = f"writing {rel} to {self.path}"
        sw = Stopwatch(what)
        with sw.step("inspect"):
            self.reader.forget()
            existing = self.reader.lookup(rel)
            if existing is not None and existing.is_dir:
                raise StickConflict(f"{rel} on the stick is a directory", reason="stick-name-is-dir")
            snap = Snapshot.take(self.reader, self._path_dirs(parts))
        source = memory_file(data, runtime_dir=self.runtime_dir)
        try:

            def mkdirs() -> None:
                for i in range(1, len(parts)):
                    sub = "/".join(parts[:i])
                    entry = self.reader.lookup(sub)
                    if entry is None:
                        self.mtools.run("mmd", dos_path(sub), step="mkdir", what=what)
                        self.reader.forget()
                    elif not entry.is_dir:
                        raise StickConflict(
                            f"{sub} on the stick is a file, not a directory", reason="stick-not-a-directory"
                        )

            def copy() -> None:
                if existing is not None and existing.readonly:
                    self.mtools.run("mattrib", "-r", path, step="copy", what=what)
                self.mtools.run("mcopy", "-D", "o", "-", path, stdin=source, step="copy", what=what)
                self.reader.forget()

            self._journaled(sw, snap, what, [("mkdir", mkdirs), ("copy", copy), ("fsync", lambda: os.fsync(self.fd))])
        finally:
            _close_memory(source)

    def remove(self, rel: str, *, missing_ok: bool = False) -> None:
        """Delete a file (read-only too) or an empty directory."""
        self.require_writable()
        self.check_sound()
        what = f"removing {rel} from {self.path}"
        sw = Stopwatch(what)
        with sw.step("inspect"):
            self.reader.forget()
            entry = self.reader.lookup(rel)
            if entry is None:
                if missing_ok:
                    return
                raise StickIOError("inspect", what, errno=errno.ENOENT)
            path = self._addr(rel)
            snap = Snapshot.take(self.reader, self._path_dirs(split_rel(rel)))

        def delete() -> None:
            if entry.readonly:
                self.mtools.run("mattrib", "-r", path, step="remove", what=what)
            self.mtools.run("mrd" if entry.is_dir else "mdel", path, step="remove", what=what)
            self.reader.forget()
            if self._still_there(rel, entry):  # mtools can exit 0 when its write failed
                raise StickIOError("remove", what, errno=errno.EIO, detail=f"{rel} is still there after mdel/mrd")

        self._journaled(sw, snap, what, [("remove", delete), ("fsync", lambda: os.fsync(self.fd))])

    def _still_there(self, rel: str, entry: DirEntry) -> bool:
        """Is this very entry (same slot) still in its directory?"""
        parts = split_rel(rel)
        cluster = None if len(parts) == 1 else self.reader.dir_cluster("/".join(parts[:-1]))
        return any(e.slots[-1] == entry.slots[-1] for e in self.reader.dir_entries(cluster))

    def wipe(self, rel: str, *, missing_ok: bool = False) -> int:
        """Overwrite the file's clusters with zeros in place, flush, then delete it; returns bytes zeroed.

        Only clusters the census found owned by this file alone are zeroed (a damaged stick is refused).
        """
        self.require_writable()
        self.check_sound()
        what = f"wiping {rel} on {self.path}"
        sw = Stopwatch(what)
        with sw.step("inspect"):
            entry = self._lookup(rel)
            if entry is None:
                if missing_ok:
                    return 0
                raise StickIOError("inspect", what, errno=errno.ENOENT)
            if entry.is_dir:
                raise StickConflict(f"{rel} on the stick is a directory", reason="stick-not-a-file")
            self._addr(rel)  # a name mtools could not be given is refused before a byte is zeroed
            clusters = self.reader.chain(entry.first_cluster)
        with sw.step("zero"):
            zeroed = self._zero_clusters(clusters)
            os.fsync(self.fd)
        self.remove(rel)
        return zeroed


def _close_memory(fd: int) -> None:
    """Close the memfd holding the bytes: nothing can be lost there, so a failing close is no failure
    (raised after a successful rename, it would hide that the archive is in place)."""
    try:
        os.close(fd)
    except OSError:
        pass
