"""The hand-off log: append-only JSON Lines, hash-chained, fsync'd after each append.

Each record carries ``seq`` and ``prev`` (the SHA-256 of the previous record's line).
A head file holds the last ``seq`` and line hash, so editing or cutting off the last
record is caught too.  :func:`verify` says which record was edited, deleted,
inserted or moved.  Records hold hashes, serials and fingerprints, never key
material: a value that looks like a PEM private key is refused outright.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from agent.clock import iso
from agent.errors import ExitCode, PanostageError

LOG_NAME = "handoff.jsonl"
HEAD_NAME = "handoff.head"
GENESIS = "0" * 64
_TAIL_BYTES = 1 << 16


class KeyMaterialRefused(PanostageError):
    exit_code = ExitCode.ERROR
    reason = "key-material-in-log"


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


def _refuse_key_material(line: bytes) -> None:
    if b"PRIVATE KEY" in line or b"PRIVATE KEY" in line.replace(b"\\n", b"\n"):
        raise KeyMaterialRefused("refusing to log a record that holds private key material")


@dataclass
class HandoffLog:
    """The log in ``state_dir``; safe to append from several processes."""

    state_dir: Path
    journal: "Journal | None" = None
    path: Path = field(init=False)
    head_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.state_dir) / LOG_NAME
        self.head_path = Path(self.state_dir) / HEAD_NAME

    def append(self, kind: str, *, time: datetime, **fields: Any) -> dict[str, Any]:
        """Append one record (``kind`` says what happened) and return it as written."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, prev = self._tail(fd)
            record = {"seq": seq + 1, "prev": prev, "time": iso(time), "kind": kind, **fields}
            line = _canonical(record)
            _refuse_key_material(line)
            os.write(fd, line + b"\n")
            os.fsync(fd)
            self._write_head(record["seq"], line_hash(line))
        finally:
            os.close(fd)
        if self.journal is not None:
            self.journal.send(record)
        return record

    def _tail(self, fd: int) -> tuple[int, str]:
        """``(seq, hash)`` of the last record, read from the end of the file."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, GENESIS
        start = max(0, size - _TAIL_BYTES)
        chunk = os.pread(fd, size - start, start)
        lines = chunk.rstrip(b"\n").split(b"\n")
        last = lines[-1]
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError):
            raise PanostageError(
                f"{self.path}: the last record is damaged; refusing to extend a broken chain",
                exit_code=ExitCode.VERIFY_CORRUPT, reason="log-damaged", hint="run `panostage log verify`",
            ) from None
        return seq, line_hash(last)

    def _write_head(self, seq: int, digest: str) -> None:
        tmp = self.head_path.with_suffix(".tmp")
        with open(tmp, "w", encoding="ascii") as handle:
            handle.write(f"{seq} {digest}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.head_path)

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

    def verify(self) -> "ChainReport":
        """Check the chain and name every break: edited, deleted, inserted, reordered."""
        raw_lines = self.path.read_bytes().splitlines(keepends=True) if self.path.exists() else []
        problems: list[dict[str, Any]] = []
        by_seq: dict[int, list[tuple[int, bytes, str]]] = {}
        order: list[int] = []
        for number, raw in enumerate(raw_lines, start=1):
            entry = _parse(raw)
            if entry is None:
                problems.append({"line": number, "problem": "unreadable", "message": f"line {number} is not a record (edited?)"})
                continue
            by_seq.setdefault(entry[0], []).append((number, raw, entry[1]))
            order.append(entry[0])
        problems += _duplicates(by_seq) + _gaps(by_seq) + _disorder(order, by_seq) + _broken_links(by_seq)
        last_seq = max(by_seq, default=0)
        last_hash = line_hash(by_seq[last_seq][-1][1]) if by_seq else GENESIS
        problems += self._check_head(len(raw_lines), last_hash, last_seq)
        return ChainReport(records=len(raw_lines), problems=sorted(problems, key=lambda p: p["line"]), path=str(self.path))

    def _check_head(self, count: int, last_hash: str, last_seq: int) -> list[dict[str, Any]]:
        """The head file pins the last record: catches an edited or cut-off end."""
        head = self._read_head()
        if head is None:
            return [{"line": 0, "problem": "head-missing", "message": f"{self.head_path} is missing"}] if count else []
        head_seq, head_hash = head
        if head_hash == last_hash:
            return []
        if head_seq > last_seq:
            return [{"line": count, "problem": "deleted",
                     "message": f"records after seq {last_seq} (up to seq {head_seq}) were deleted from the end"}]
        return [{"line": count, "problem": "edited", "message": f"line {count} (the last record) was edited or replaced"}]

    def _read_head(self) -> tuple[int, str] | None:
        try:
            seq, digest = self.head_path.read_text(encoding="ascii").split()
            return int(seq), digest
        except (OSError, ValueError):
            return None


def _parse(raw: bytes) -> tuple[int, str] | None:
    try:
        record = json.loads(raw)
        return int(record["seq"]), str(record["prev"])
    except (ValueError, KeyError, TypeError):
        return None


def _duplicates(by_seq: dict[int, list[tuple[int, bytes, str]]]) -> list[dict[str, Any]]:
    return [
        {"line": entries[1][0], "problem": "inserted",
         "message": f"seq {seq} appears {len(entries)} times (lines {', '.join(str(e[0]) for e in entries)}): a record was inserted"}
        for seq, entries in by_seq.items() if len(entries) > 1
    ]


def _gaps(by_seq: dict[int, list[tuple[int, bytes, str]]]) -> list[dict[str, Any]]:
    problems, expected = [], 1
    for seq in sorted(by_seq):
        if seq > expected:
            gone = f"seq {expected}" if seq == expected + 1 else f"seq {expected}–{seq - 1}"
            problems.append({"line": by_seq[seq][0][0], "problem": "deleted", "message": f"{gone} deleted (before line {by_seq[seq][0][0]})"})
        expected = seq + 1
    return problems


def _disorder(order: list[int], by_seq: dict[int, list[tuple[int, bytes, str]]]) -> list[dict[str, Any]]:
    problems, highest = [], 0
    for seq in order:
        if seq < highest and len(by_seq[seq]) == 1:
            line = by_seq[seq][0][0]
            problems.append({"line": line, "problem": "reordered",
                             "message": f"line {line} (seq {seq}) comes after seq {highest}: records were reordered"})
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
            problems.append({"line": before[0][0], "problem": "edited",
                             "message": f"line {before[0][0]} (seq {seq - 1}) was edited: seq {seq} recorded another hash for it"})
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
