"""Extending the hand-off log durably: lock, write, fsync, point the head at the new record.

Either the record and the head are both on disk (fsync'd, the rename too) or, on any failure,
both are put back as they were and :class:`LogAppendFailed` names the step that failed.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from agent.errors import ExitCode, PanostageError
from agent.handoff_log.record import GENESIS, Head, line_hash, parse_link
from agent.paths import discard, fsync_dir, write_all, write_atomic

_TAIL_BYTES = 1 << 16
_TAIL_FIRST = 1 << 13
#: Free space (bytes) an append needs: the record (a few KiB at most) plus the head file.
_MIN_FREE_BYTES = 16 << 10


class LogAppendFailed(PanostageError):
    """The log could not be extended; it was left as it was before."""

    exit_code = ExitCode.IO
    reason = "log-append-failed"


class Tail(NamedTuple):
    """The last record: its ``seq``, the hash of its line and its ``prev``."""

    seq: int
    digest: str
    prev: str


@dataclass(frozen=True)
class ChainFiles:
    """The log file and its head file, and the steps of appending to them."""

    path: Path
    head_path: Path

    @contextmanager
    def locked(self) -> Iterator[int]:
        """The log open for appending, locked against every other appender until the block ends."""
        fd = self.open()
        try:
            self.lock(fd)
            yield fd
        finally:
            os.close(fd)

    def open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise self.failed(exc, "open the log for appending") from exc

    def lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise self.failed(exc, "lock the log") from exc

    def tail(self, fd: int) -> Tail:
        """The last record, read from the end of the file."""
        size = os.fstat(fd).st_size
        if size == 0:
            return Tail(0, GENESIS, GENESIS)
        for window in (_TAIL_FIRST, _TAIL_BYTES):  # a record is rarely more than a few KiB
            start = max(0, size - window)
            chunk = os.pread(fd, size - start, start).rstrip(b"\n")
            if start == 0 or b"\n" in chunk:
                break
        last = chunk.rsplit(b"\n", 1)[-1]
        parsed = parse_link(last)
        if parsed is None:
            raise self.damaged(f"{self.path}: the last record is damaged")
        return Tail(parsed[0], line_hash(last), parsed[1])

    def head_or_none(self) -> Head | None:
        """The head's ``(seq, hash)``; None when missing; ``(-1, "")`` when it is not a head."""
        try:
            text = self.head_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            seq, digest = text.decode("ascii").split()
            return int(seq), digest
        except ValueError:
            return -1, ""

    def extend(self, fd: int, seq: int, line: bytes) -> None:
        """Write ``line`` and point the head at it; on any failure undo both (best effort) and raise."""
        step, size, old_head, renamed = "read the log's size", None, None, False
        try:
            size = os.fstat(fd).st_size
            step = "read the head"
            old_head = self._head_bytes()
            step = "write the record"
            write_all(fd, line + b"\n")
            step = "fsync the log"
            os.fsync(fd)
            step = "write the head"
            self._replace_head(f"{seq} {line_hash(line)}\n".encode("ascii"))
            renamed = True
            step = "fsync the state directory"
            fsync_dir(self.path.parent)
        except BaseException as exc:  # an interruption (SIGTERM unwinds as an exception) is undone too
            if renamed:
                self._restore_head(old_head)
            if size is not None:
                _truncate(fd, size)
            if isinstance(exc, OSError):
                raise self.failed(exc, step) from exc
            raise

    def extend_head_only(self, seq: int, digest: str) -> None:
        """Bring a head that lags one record behind forward (an append was interrupted after its record)."""
        try:
            self._replace_head(f"{seq} {digest}\n".encode("ascii"))
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise self.failed(exc, "bring the head forward") from exc

    def check_room(self, room: os.statvfs_result) -> None:
        free = room.f_frsize * (room.f_bfree if os.geteuid() == 0 else room.f_bavail)
        no_inode = room.f_files > 0 and room.f_favail == 0
        if free < _MIN_FREE_BYTES or no_inode:
            what = "no free inode" if no_inode else f"{free} bytes free, at least {_MIN_FREE_BYTES} needed"
            raise self.failed(OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({what})"), "check free space")

    def failed(self, exc: OSError, step: str) -> LogAppendFailed:
        where = exc.filename or self.path
        name = errno.errorcode.get(exc.errno or 0, "error")
        return LogAppendFailed(
            f"cannot append to the hand-off log {self.path}: {step} failed: {exc.strerror or exc} [{name}] ({where}); "
            "the log is unchanged",
            hint=_hint(exc.errno, self.path.parent),
            details={"path": str(self.path), "file": str(where), "step": step, "errno": name},
        )

    def damaged(self, what: str) -> PanostageError:
        return PanostageError(
            f"{what}; refusing to extend a broken chain",
            exit_code=ExitCode.VERIFY_CORRUPT,
            reason="log-damaged",
            hint="run `panostage log verify`",
            details={"path": str(self.path), "head": str(self.head_path)},
        )

    def _replace_head(self, data: bytes) -> None:
        """Put ``data`` over the head atomically (temporary file, fsync, rename); no temporary file stays."""
        write_atomic(self.head_path, data, mode=0o640)

    def _head_bytes(self) -> bytes | None:
        try:
            return self.head_path.read_bytes()
        except FileNotFoundError:
            return None

    def _restore_head(self, old: bytes | None) -> None:
        """Best effort: put the head back as it was before a failed append."""
        try:
            if old is None:
                discard(self.head_path)
            else:
                self._replace_head(old)
            fsync_dir(self.path.parent)
        except OSError:
            pass


def _truncate(fd: int, size: int) -> None:
    """Best effort: cut the log back to ``size`` bytes and make that durable."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        pass


def _hint(code: int | None, directory: Path) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"free space (and inodes) on the filesystem holding {directory}, then run the step again"
    if code == errno.EROFS:
        return f"the filesystem holding {directory} is read-only: find out why (dmesg), remount it read-write"
    if code in (errno.EACCES, errno.EPERM):
        return f"let the user running panostage write {directory} and the files in it (owner, mode)"
    return f"check the filesystem holding {directory} (dmesg, free space, the disk's health), then run the step again"
