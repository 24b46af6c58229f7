"""Changing a mounted stick with system calls in a fixed write and fsync order, leaving nothing of ours behind.

``write_atomic``: a temporary file (O_EXCL) in the root, write, fsync, rename over the name,
fsync the directory; a replaced file is zeroed once the new one is in place.  Files are wiped by
zeroing them in place and flushing before they are unlinked.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Iterable

from agent.stick import blockio
from agent.stick.checks import require_space
from agent.stick.dirread import DirectoryReading
from agent.stick.dirroot import CHUNK, NOFOLLOW
from agent.stick.errors import StickConflict, StickIOError, StickRefused
from agent.stick.fatfs import split_rel
from agent.stick.model import WriteReport, refuse_look_alikes, stale_temp_of, temp_name
from agent.stick.mtools import check_name
from agent.stick.steps import Stopwatch


class DirectoryWriting(DirectoryReading):
    """The writing half of :class:`agent.stick.directory.DirectoryTarget`, with its checks before a write."""

    def check_sound(self) -> list[str]:
        """A mounted stick's structures are the kernel's to check and repair: nothing to add here."""
        return []

    def check_room(self, name: str, size: int, *, freeing: Iterable[str] = ()) -> None:
        """Refuse, before anything exists, a ``name`` of ``size`` bytes that would not fit once the root files
        ``freeing`` are removed: its length, the free space, and a free directory slot (proved by creating and
        removing the temporary name; with files still to be removed a full directory is left to the kernel)."""
        check_name(name)
        self.require_writable()
        going = [e for e in (self.lookup(n) for n in freeing) if e is not None and e.kind == "file"]
        info = self.fs_info()
        if info.free_bytes is not None:
            cluster = max(info.cluster_size, 1)
            info = dataclasses.replace(
                info, free_bytes=info.free_bytes + sum(-(-e.size // cluster) * cluster for e in going)
            )
        require_space(size, info)
        probe = temp_name(name, os.getpid())
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600, dir_fd=self._dfd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and going:
                return
            if exc.errno == errno.ENOSPC:
                raise StickRefused(
                    f"the root directory of {self.path} has no room for {name}",
                    reason="stick-root-full",
                    hint="delete files from the stick's root, or wipe it (panostage stick wipe)",
                ) from exc
            if exc.errno != errno.EEXIST:
                raise StickIOError.from_os("room", f"checking room for {name} on {self.path}", exc) from exc
            return
        os.close(fd)
        os.unlink(probe, dir_fd=self._dfd)

    def write_atomic(self, name: str, data: bytes, *, replace: bool = True) -> WriteReport:
        """Temp file (O_EXCL) in the root, write, fsync, rename over ``name``, fsync the directory.

        On any failure nothing of ours is left: the temp file is removed, and if the
        failure came after the rename, the new file is wiped as well.  A replaced older
        file is overwritten with zeros once the new one is in place.
        """
        check_name(name)
        self.require_writable()
        what = f"writing {name} to {self.path}"
        sw = Stopwatch(what)
        with sw.step("inspect"):
            existing = self.lookup(name)
            if existing is not None and existing.kind != "file":
                raise StickConflict(
                    f"{name} on the stick is a {existing.kind}; it will not be replaced",
                    reason=f"stick-name-is-{existing.kind}",
                    details={"entry": existing.to_dict()},
                )
            if existing is not None and not replace:
                raise StickConflict(f"{name} already exists on the stick", reason="stick-name-exists")
            if self.fat:
                refuse_look_alikes(name, [e.name for e in self._entries(self._dfd)])
        scrubbed = 0
        with sw.step("stale_temps"):
            scrubbed += self._remove_stale_temps(name)
        tmp = temp_name(name, os.getpid())
        fd = old_fd = None
        renamed = False
        try:
            with sw.step("create"):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600, dir_fd=self._dfd)
            with sw.step("write"):
                _write_all(fd, data)
            with sw.step("fsync"):
                os.fsync(fd)
                os.close(fd)
                fd = None
            if existing is not None:
                try:  # kept open to overwrite the old content once it is replaced
                    old_fd = os.open(existing.name, os.O_RDWR | NOFOLLOW, dir_fd=self._dfd)
                except OSError:
                    old_fd = None
            with sw.step("rename"):
                os.replace(tmp, name, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
                renamed = True
            with sw.step("fsync_dir"):
                os.fsync(self._dfd)
        except BaseException:
            if fd is not None:
                os.close(fd)
            if old_fd is not None:
                os.close(old_fd)
            self._best_effort_cleanup(name if renamed else tmp, wipe=renamed)
            raise
        if old_fd is not None:
            with sw.step("scrub_old"):
                try:
                    if os.fstat(old_fd).st_nlink == 0:
                        scrubbed += _zero_fd(old_fd)
                except OSError:
                    pass  # best effort: the new archive is in place
                finally:
                    os.close(old_fd)
        return WriteReport.of(
            name, data, replaced=existing is not None, durations_ms=sw.durations_ms, scrubbed=scrubbed
        )

    def _remove_stale_temps(self, name: str) -> int:
        scrubbed = 0
        for entry in self._entries(self._dfd):
            if entry.kind == "file" and stale_temp_of(entry.name, name):
                scrubbed += self.wipe(entry.name)
        return scrubbed

    def _best_effort_cleanup(self, leaf: str, *, wipe: bool) -> None:
        try:
            if wipe:
                fd = os.open(leaf, os.O_RDWR | NOFOLLOW, dir_fd=self._dfd)
                try:
                    _zero_fd(fd)
                finally:
                    os.close(fd)
            os.unlink(leaf, dir_fd=self._dfd)
            os.fsync(self._dfd)
        except OSError:
            pass

    def write(self, rel: str, data: bytes) -> None:
        """Write a file (creating parent directories), fsync it and its directory."""
        for part in split_rel(rel):
            check_name(part)
        self.require_writable()
        sw = Stopwatch(f"writing {rel} to {self.path}")
        with sw.step("open"):
            dfd, leaf = self._parent(rel, create=True)
        try:
            with sw.step("open"):
                fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o644, dir_fd=dfd)
            try:
                with sw.step("write"):
                    _write_all(fd, data)
                with sw.step("fsync"):
                    os.fsync(fd)
            finally:
                os.close(fd)
            with sw.step("fsync_dir"):
                os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove(self, rel: str, *, missing_ok: bool = False) -> None:
        """Remove a file or an empty directory."""
        self.require_writable()
        sw = Stopwatch(f"removing {rel} from {self.path}")
        try:
            with sw.step("remove"):
                dfd, leaf = self._parent(rel)
                try:
                    if stat.S_ISDIR(os.lstat(leaf, dir_fd=dfd).st_mode):
                        os.rmdir(leaf, dir_fd=dfd)
                    else:
                        os.unlink(leaf, dir_fd=dfd)
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except StickIOError as exc:
            if not (missing_ok and exc.errno == errno.ENOENT):
                raise

    def wipe(self, rel: str, *, missing_ok: bool = False) -> int:
        """Overwrite a file in place with zeros of the same length, fsync, then unlink it; returns bytes zeroed."""
        self.require_writable()
        sw = Stopwatch(f"wiping {rel} on {self.path}")
        try:
            with sw.step("open"):
                dfd, leaf = self._parent(rel)
        except StickIOError as exc:
            if missing_ok and exc.errno == errno.ENOENT:
                return 0
            raise
        try:
            try:
                with sw.step("open"):
                    fd = os.open(leaf, os.O_RDWR | NOFOLLOW, dir_fd=dfd)
            except StickIOError as exc:
                if exc.errno == errno.ELOOP:
                    raise StickConflict(f"{rel} is a symlink; it is never followed", reason="stick-symlink") from exc
                if missing_ok and exc.errno == errno.ENOENT:
                    return 0
                raise
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise StickConflict(f"{rel} is not a regular file", reason="stick-not-a-file")
                with sw.step("zero"):
                    zeroed = _zero_fd(fd)
            finally:
                os.close(fd)
            with sw.step("unlink"):
                os.unlink(leaf, dir_fd=dfd)
                os.fsync(dfd)
        finally:
            os.close(dfd)
        return zeroed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:CHUNK]) :]


def _zero_fd(fd: int) -> int:
    """Overwrite an open file's whole length with zeros and fsync; returns the length."""
    size = os.fstat(fd).st_size
    blockio.zero_range(fd, 0, size)
    os.fsync(fd)
    return size
