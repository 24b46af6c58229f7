"""The hand-off log: append-only JSON Lines, hash-chained, fsync'd after each append.

Each record carries ``seq`` and ``prev`` (the SHA-256 of the previous record's line).
A head file holds the last ``seq`` and line hash, so editing or cutting off the last
record is caught too.  :func:`verify` says which record was edited, deleted,
inserted or moved.  Records hold hashes, serials and fingerprints, never key
material: a value that looks like a PEM private key is refused outright.  An append
that fails (full disk, read-only, I/O error) leaves the log and head as they were, and
:meth:`HandoffLog.check_appendable` proves one could succeed before an irreversible step.

The parts: the record format and chain (:mod:`agent.handoff_log.record`), the durable append
(:mod:`agent.handoff_log.append`), verification (:mod:`agent.handoff_log.verify`) and the journald
copy (:mod:`agent.handoff_log.journal`); their public names are re-exported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.clock import iso
from agent.handoff_log.append import ChainFiles, LogAppendFailed
from agent.handoff_log.journal import Journal
from agent.handoff_log.record import (
    GENESIS,
    HEAD_NAME,
    LOG_NAME,
    KeyMaterialRefused,
    canonical,
    head_lags_one,
    line_hash,
    refuse_key_material,
)
from agent.handoff_log.verify import ChainReport, verify_chain

__all__ = [
    "GENESIS",
    "HEAD_NAME",
    "LOG_NAME",
    "ChainReport",
    "HandoffLog",
    "Journal",
    "KeyMaterialRefused",
    "LogAppendFailed",
    "line_hash",
]


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

    @property
    def _files(self) -> ChainFiles:
        return ChainFiles(self.path, self.head_path)

    def append(self, kind: str, *, time: datetime, **fields: Any) -> dict[str, Any]:
        """Append one record (``kind`` says what happened) and return it as written.

        Either the record and the head are both on disk (fsync'd, the rename too) or, on any
        failure, the log and head are left as they were and :class:`LogAppendFailed` is raised.
        """
        files = self._files
        with files.locked() as fd:
            try:
                tail = files.tail(fd)
            except OSError as exc:
                raise files.failed(exc, "read the last record") from exc
            record = {"seq": tail.seq + 1, "prev": tail.digest, "time": iso(time), "kind": kind, **fields}
            line = canonical(record)
            refuse_key_material(record, line)
            files.extend(fd, tail.seq + 1, line)
        if self.journal is not None:
            self.journal.send(json.loads(line))  # the record as written: datetimes and paths as text
        return record

    def check_appendable(self) -> None:
        """Prove, before an irreversible step, that an append could work now.

        Raises :class:`LogAppendFailed` (exit IO) when the log cannot be opened for appending
        or its filesystem is (nearly) full, and exit VERIFY_CORRUPT (``log-damaged``) when the
        last record or the head file is damaged (an append would be refused then).
        """
        files = self._files
        with files.locked() as fd:
            try:
                tail = files.tail(fd)
                head = files.head_or_none()
                room = os.fstatvfs(fd)
            except OSError as exc:
                raise files.failed(exc, "check the log") from exc
            files.check_room(room)
            if head_lags_one(head, tail.seq, tail.prev):  # a crash between the record and its head
                files.extend_head_only(tail.seq, tail.digest)
                head = (tail.seq, tail.digest)
            if head is None and tail.digest != GENESIS:
                raise files.damaged(f"{self.head_path} is missing but {self.path} holds records")
            if head is not None and head[1] != tail.digest:
                raise files.damaged(
                    f"{self.head_path} does not match the last record of {self.path} "
                    "(the last record was edited, replaced or cut off)"
                )

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
        return verify_chain(self.path, self.head_path)
