"""The hand-off log: append-only JSON Lines, hash-chained, fsync'd after each append.

Each record carries ``seq`` and ``prev`` (the SHA-256 of the previous record's line).
A head file holds the last ``seq`` and line hash, so editing or cutting off the last
record is caught too.  :func:`verify` says which record was edited, deleted,
inserted or moved.  Records hold hashes, serials and fingerprints, never key
material: a value that looks like a PEM private key is refused outright.  An append
that fails (full disk, read-only, I/O error) leaves the log and head as they were, and
:meth:`HandoffLog.check_appendable` proves one could succeed before an irreversible step.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.clock import iso
from agent.errors import ExitCode, PanostageError
from agent.paths import discard, fsync_dir, write_all, write_atomic

LOG_NAME = "handoff.jsonl"
HEAD_NAME = "handoff.head"
GENESIS = "0" * 64
_TAIL_BYTES = 1 << 16
_TAIL_FIRST = 1 << 13
#: Free space (bytes) an append needs: the record (a few KiB at most) plus the head file.
_MIN_FREE_BYTES = 16 << 10


class KeyMaterialRefused(PanostageError):
    exit_code = ExitCode.VALIDATION
    reason = "key-material-in-log"


class LogAppendFailed(PanostageError):
    """The log could not be extended; it was left as it was before."""

    exit_code = ExitCode.IO
    reason = "log-append-failed"


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default).encode()


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot log a {type(value).__name__}")


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _refuse_key_material(record: dict[str, Any], line: bytes) -> None:
    """Refuse a record whose serialised line holds a PEM private key marker; name the field."""
    if b"PRIVATE KEY" not in line:
        return
    fields = list(_key_fields(record)) or ["(a value serialised from an object)"]
    raise KeyMaterialRefused(
        f"refusing to log a {record.get('kind')!r} record: {', '.join(fields)} looks like private key material "
        "(holds 'PRIVATE KEY')",
        hint="hand-off records hold hashes, serials and fingerprints, never keys; "
        "check the value given for that field (e.g. stage.operator / PANOSTAGE_STAGE_OPERATOR)",
        details={"fields": fields},
    )


def _key_fields(value: Any, path: str = "") -> Iterator[str]:
    """Dotted paths of the keys or string values that hold ``PRIVATE KEY``."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "PRIVATE KEY" in str(key):
                yield where
            else:
                yield from _key_fields(item, where)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _key_fields(item, f"{path}[{index}]")
    elif isinstance(value, (str, Path)) and "PRIVATE KEY" in str(value):
        yield path


@dataclass
class HandoffLog:
    """The log in ``state_dir``; safe to append from several processes."""

    state_dir: Path
    journal: Journal | None = None
    path: Path = field(init=False)
    head_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.state_dir) / LOG_NAME
        self.head_path = Path(self.state_dir) / HEAD_NAME
        self._last_prev = GENESIS  # the ``prev`` of the last record read by :meth:`_tail`

    def append(self, kind: str, *, time: datetime, **fields: Any) -> dict[str, Any]:
        """Append one record (``kind`` says what happened) and return it as written.

        Either the record and the head are both on disk (fsync'd, the rename too) or, on any
        failure, the log and head are left as they were and :class:`LogAppendFailed` is raised.
        """
        fd = self._open()
        try:
            self._lock(fd)
            try:
                seq, prev = self._tail(fd)
            except OSError as exc:
                raise self._failed(exc, "read the last record") from exc
            record = {"seq": seq + 1, "prev": prev, "time": iso(time), "kind": kind, **fields}
            line = _canonical(record)
            _refuse_key_material(record, line)
            self._extend(fd, record["seq"], line)
        finally:
            os.close(fd)
        if self.journal is not None:
            self.journal.send(record)
        return record

    def check_appendable(self) -> None:
        """Prove, before an irreversible step, that an append could work now.

        Raises :class:`LogAppendFailed` (exit IO) when the log cannot be opened for appending
        or its filesystem is (nearly) full, and exit VERIFY_CORRUPT (``log-damaged``) when the
        last record or the head file is damaged (an append would be refused then).
        """
        fd = self._open()
        try:
            self._lock(fd)
            try:
                _seq, digest = self._tail(fd)
                head = self._head_or_none()
                room = os.fstatvfs(fd)
            except OSError as exc:
                raise self._failed(exc, "check the log") from exc
            self._check_room(room)
            if _head_lags_one(head, _seq, self._last_prev):  # a crash between the record and its head
                self._extend_head_only(_seq, digest)
                head = (_seq, digest)
            if head is None and digest != GENESIS:
                raise self._damaged(f"{self.head_path} is missing but {self.path} holds records")
            if head is not None and head[1] != digest:
                raise self._damaged(
                    f"{self.head_path} does not match the last record of {self.path} "
                    "(the last record was edited, replaced or cut off)"
                )
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- append plumbing

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise self._failed(exc, "open the log for appending") from exc

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise self._failed(exc, "lock the log") from exc

    def _extend(self, fd: int, seq: int, line: bytes) -> None:
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
                raise self._failed(exc, step) from exc
            raise

    def _extend_head_only(self, seq: int, digest: str) -> None:
        """Bring a head that lags one record behind forward (an append was interrupted after its record)."""
        try:
            self._replace_head(f"{seq} {digest}\n".encode("ascii"))
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise self._failed(exc, "bring the head forward") from exc

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

    def _check_room(self, room: os.statvfs_result) -> None:
        free = room.f_frsize * (room.f_bfree if os.geteuid() == 0 else room.f_bavail)
        no_inode = room.f_files > 0 and room.f_favail == 0
        if free < _MIN_FREE_BYTES or no_inode:
            what = "no free inode" if no_inode else f"{free} bytes free, at least {_MIN_FREE_BYTES} needed"
            raise self._failed(OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({what})"), "check free space")

    def _failed(self, exc: OSError, step: str) -> LogAppendFailed:
        where = exc.filename or self.path
        name = errno.errorcode.get(exc.errno or 0, "error")
        return LogAppendFailed(
            f"cannot append to the hand-off log {self.path}: {step} failed: {exc.strerror or exc} [{name}] ({where}); "
            "the log is unchanged",
            hint=_hint(exc.errno, self.path.parent),
            details={"path": str(self.path), "file": str(where), "step": step, "errno": name},
        )

    def _damaged(self, what: str) -> PanostageError:
        return PanostageError(
            f"{what}; refusing to extend a broken chain",
            exit_code=ExitCode.VERIFY_CORRUPT,
            reason="log-damaged",
            hint="run `panostage log verify`",
            details={"path": str(self.path), "head": str(self.head_path)},
        )

    def _head_or_none(self) -> tuple[int, str] | None:
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

    def _tail(self, fd: int) -> tuple[int, str]:
        """``(seq, hash)`` of the last record, read from the end of the file."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, GENESIS
        for window in (_TAIL_FIRST, _TAIL_BYTES):  # a record is rarely more than a few KiB
            start = max(0, size - window)
            chunk = os.pread(fd, size - start, start).rstrip(b"\n")
            if start == 0 or b"\n" in chunk:
                break
        last = chunk.rsplit(b"\n", 1)[-1]
        parsed = _parse(last)
        if parsed is None:
            raise self._damaged(f"{self.path}: the last record is damaged")
        self._last_prev = parsed[1]
        return parsed[0], line_hash(last)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record that parses, oldest first (use :meth:`verify` to trust them)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            for raw in handle:
                try:
                    yield json.loads(raw)
                except ValueError:
                    continue

    def verify(self) -> ChainReport:
        """Check the chain and name every break: edited, deleted, inserted, reordered."""
        raw_lines = self.path.read_bytes().splitlines(keepends=True) if self.path.exists() else []
        problems: list[dict[str, Any]] = []
        by_seq: dict[int, list[tuple[int, bytes, str]]] = {}
        order: list[int] = []
        for number, raw in enumerate(raw_lines, start=1):
            entry = _parse(raw)
            if entry is None:
                problems.append(
                    {"line": number, "problem": "unreadable", "message": f"line {number} is not a record (edited?)"}
                )
                continue
            by_seq.setdefault(entry[0], []).append((number, raw, entry[1]))
            order.append(entry[0])
        problems += _duplicates(by_seq) + _gaps(by_seq) + _disorder(order, by_seq) + _broken_links(by_seq)
        last_seq = max(by_seq, default=0)
        last_hash = line_hash(by_seq[last_seq][-1][1]) if by_seq else GENESIS
        last_prev = by_seq[last_seq][-1][2] if by_seq else GENESIS
        problems += self._check_head(len(raw_lines), last_hash, last_seq, last_prev)
        return ChainReport(
            records=len(raw_lines), problems=sorted(problems, key=lambda p: p["line"]), path=str(self.path)
        )

    def _check_head(self, count: int, last_hash: str, last_seq: int, last_prev: str) -> list[dict[str, Any]]:
        """The head file pins the last record: catches an edited or cut-off end."""
        head = self._read_head()
        if _head_lags_one(head, last_seq, last_prev):
            return []  # an append interrupted after its record (the head is brought forward at the next one)
        if head is None:
            return [{"line": 0, "problem": "head-missing", "message": f"{self.head_path} is missing"}] if count else []
        head_seq, head_hash = head
        if head_hash == last_hash:
            return []
        if head_seq > last_seq:
            return [
                {
                    "line": count,
                    "problem": "deleted",
                    "message": f"records after seq {last_seq} (up to seq {head_seq}) were deleted from the end",
                }
            ]
        return [
            {"line": count, "problem": "edited", "message": f"line {count} (the last record) was edited or replaced"}
        ]

    def _read_head(self) -> tuple[int, str] | None:
        try:
            seq, digest = self.head_path.read_text(encoding="ascii").split()
            return int(seq), digest
        except (OSError, ValueError):
            return None


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


def _head_lags_one(head: tuple[int, str] | None, last_seq: int, last_prev: str) -> bool:
    """Is the head exactly one record behind a chain that links to it?  What a crash leaves between
    a record's fsync and its head's rename - nothing a forger could not also do to the head itself."""
    if head is None:
        return last_seq == 1 and last_prev == GENESIS
    return head[0] == last_seq - 1 and head[1] == last_prev


def _parse(raw: bytes) -> tuple[int, str] | None:
    try:
        record = json.loads(raw)
        return int(record["seq"]), str(record["prev"])
    except (ValueError, KeyError, TypeError):
        return None


def _duplicates(by_seq: dict[int, list[tuple[int, bytes, str]]]) -> list[dict[str, Any]]:
    return [
        {
            "line": entries[1][0],
            "problem": "inserted",
            "message": f"seq {seq} appears {len(entries)} times (lines {', '.join(str(e[0]) for e in entries)}): a record was inserted",
        }
        for seq, entries in by_seq.items()
        if len(entries) > 1
    ]


def _gaps(by_seq: dict[int, list[tuple[int, bytes, str]]]) -> list[dict[str, Any]]:
    problems, expected = [], 1
    for seq in sorted(by_seq):
        if seq > expected:
            gone = f"seq {expected}" if seq == expected + 1 else f"seq {expected}–{seq - 1}"
            problems.append(
                {
                    "line": by_seq[seq][0][0],
                    "problem": "deleted",
                    "message": f"{gone} deleted (before line {by_seq[seq][0][0]})",
                }
            )
        expected = seq + 1
    return problems


def _disorder(order: list[int], by_seq: dict[int, list[tuple[int, bytes, str]]]) -> list[dict[str, Any]]:
    problems, highest = [], 0
    for seq in order:
        if seq < highest and len(by_seq[seq]) == 1:
            line = by_seq[seq][0][0]
            problems.append(
                {
                    "line": line,
                    "problem": "reordered",
                    "message": f"line {line} (seq {seq}) comes after seq {highest}: records were reordered",
                }
            )
        highest = max(highest, seq)
    return problems


def _broken_links(by_seq: dict[int, list[tuple[int, bytes, str]]]) -> list[dict[str, Any]]:
    """Each record names its predecessor's hash; a mismatch means the predecessor was edited."""
    problems = []
    for seq, entries in by_seq.items():
        if len(entries) > 1:
            continue
        line, _raw, prev = entries[0]
        if seq == 1:
            if prev != GENESIS:
                problems.append({"line": line, "problem": "edited", "message": f"line {line} (seq 1) was edited"})
            continue
        before = by_seq.get(seq - 1)
        if before and len(before) == 1 and line_hash(before[0][1]) != prev:
            problems.append(
                {
                    "line": before[0][0],
                    "problem": "edited",
                    "message": f"line {before[0][0]} (seq {seq - 1}) was edited: seq {seq} recorded another hash for it",
                }
            )
    return problems


@dataclass
class ChainReport:
    records: int
    problems: list[dict[str, Any]]
    path: str

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "records": self.records, "ok": self.ok, "problems": self.problems}


class Journal:
    """Sends records to journald over its native socket, as structured fields."""

    def __init__(self, socket_path: str = "/run/systemd/journal/socket", identifier: str = "panostage") -> None:
        self.socket_path = socket_path
        self.identifier = identifier

    @staticmethod
    def under_systemd() -> bool:
        return bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))

    def fields(self, record: dict[str, Any]) -> dict[str, str]:
        out = {
            "MESSAGE": _journal_message(record),
            "PRIORITY": "3" if record.get("outcome") == "failed" else "6",
            "SYSLOG_IDENTIFIER": self.identifier,
        }
        for key, value in _flatten(record):
            out["PANOSTAGE_" + key.upper()] = value if isinstance(value, str) else json.dumps(value)
        return out

    def send(self, record: dict[str, Any]) -> None:
        """Best effort: the file is the record of truth; the journal is a copy."""
        payload = b""
        for key, value in self.fields(record).items():
            data = value.encode()
            if b"\n" in data:
                payload += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
            else:
                payload += key.encode() + b"=" + data + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self.socket_path)
        except OSError:
            pass


def _flatten(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in record.items():
        name = f"{prefix}{key}".replace("-", "_")
        if isinstance(value, dict):
            yield from _flatten(value, name + "_")
        elif value is not None:
            yield name, value


def _journal_message(record: dict[str, Any]) -> str:
    device = record.get("device") or {}
    who = device.get("name") or device.get("id") or ""
    return f"{record.get('kind')} {who} {record.get('outcome', '')}".strip()
