"""Reading a mounted stick: listing, looking up (FAT-equal names found as stored), reading files back from the medium."""

from __future__ import annotations

import errno
import os
import stat

from agent.stick import blockio, names
from agent.stick.dirroot import CHUNK, NOFOLLOW, DirectoryRoot, entry_from_stat
from agent.stick.errors import StickConflict, StickFileTooLarge, StickIOError
from agent.stick.fatfs import split_rel
from agent.stick.model import READ_LIMIT, Entry
from agent.stick.steps import Stopwatch


class DirectoryReading(DirectoryRoot):
    """The reading half of :class:`agent.stick.directory.DirectoryTarget`."""

    def list_root(self) -> list[Entry]:
        return self.list_dir("")

    def list_dir(self, rel: str) -> list[Entry]:
        sw = Stopwatch(f"listing {rel or '/'} on {self.path}")
        with sw.step("list"):
            fd = self._open_dir(split_rel(rel, allow_empty=True))
            try:
                return self._entries(fd)
            finally:
                os.close(fd)

    def lookup(self, rel: str) -> Entry | None:
        try:
            fd, leaf = self._parent(rel)
        except (FileNotFoundError, StickConflict):
            return None
        try:
            try:
                st = os.lstat(leaf, dir_fd=fd)
            except FileNotFoundError:
                return None
            entries = self._entries(fd)
            stored = next((e.name for e in entries if e.name == leaf), None)
            if stored is None and self.fat:
                stored = next((e.name for e in entries if names.same(e.name, leaf)), leaf)
            return entry_from_stat(stored or leaf, st)
        finally:
            os.close(fd)

    def read(self, rel: str, *, bypass_cache: bool = True, limit: int = READ_LIMIT) -> bytes:
        """Read a file; with ``bypass_cache`` the bytes come from the medium (O_DIRECT, else fsync+DONTNEED).

        A file larger than ``limit`` is refused from its size (:class:`StickFileTooLarge`), unread.
        """
        what = f"reading {rel} from {self.path}"
        step = "open"
        fd_dir = fd = None
        try:
            fd_dir, leaf = self._parent(rel)
            mode = "cached"
            if bypass_cache:
                try:
                    fd = os.open(leaf, os.O_RDONLY | os.O_DIRECT | os.O_NONBLOCK | NOFOLLOW, dir_fd=fd_dir)
                    mode = "O_DIRECT"
                except OSError as exc:
                    if exc.errno != errno.EINVAL:  # the filesystem has no O_DIRECT
                        raise
            if fd is None:  # O_NONBLOCK: a FIFO at the name must not hang us (regular files ignore it)
                fd = os.open(leaf, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW, dir_fd=fd_dir)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StickConflict(f"{rel} on the stick is not a regular file", reason="stick-not-a-file")
            if st.st_size > limit:
                raise StickFileTooLarge(rel, st.st_size, limit)
            step = "read"
            data = None
            if mode == "O_DIRECT":
                try:
                    data = blockio.read_direct(fd, st.st_size)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    os.close(fd)
                    fd = os.open(leaf, os.O_RDONLY | NOFOLLOW, dir_fd=fd_dir)
                    mode = "cached"
            if data is None:
                if bypass_cache:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    mode = "fadvise"
                data = _read_all(fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StickConflict(
                    f"{rel} on the stick is a symlink; it is never followed", reason="stick-symlink"
                ) from exc
            raise StickIOError.from_os(step, what, exc) from exc
        finally:
            for one in (fd, fd_dir):
                if one is not None:
                    os.close(one)
        self.last_read_mode = mode
        return data


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
