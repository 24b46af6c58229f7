"""Verifying the hand-off log's chain: every break named, as edited, deleted, inserted or reordered.

Each record names its predecessor's hash and the head file pins the last one, so an edited,
deleted, inserted or moved record - the last one too - shows up in the :class:`ChainReport`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.handoff_log.record import GENESIS, Head, head_lags_one, line_hash, parse_link

#: The records of one ``seq``: ``(line number, raw line, prev)`` each.
BySeq = dict[int, list[tuple[int, bytes, str]]]


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


def verify_chain(path: Path, head_path: Path) -> ChainReport:
    """Check the chain in ``path`` against itself and the head in ``head_path``."""
    raw_lines = path.read_bytes().splitlines(keepends=True) if path.exists() else []
    problems: list[dict[str, Any]] = []
    by_seq: BySeq = {}
    order: list[int] = []
    for number, raw in enumerate(raw_lines, start=1):
        entry = parse_link(raw)
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
    problems += _check_head(head_path, len(raw_lines), last_hash, last_seq, last_prev)
    return ChainReport(records=len(raw_lines), problems=sorted(problems, key=lambda p: p["line"]), path=str(path))


def _check_head(head_path: Path, count: int, last_hash: str, last_seq: int, last_prev: str) -> list[dict[str, Any]]:
    """The head file pins the last record: catches an edited or cut-off end."""
    head = _read_head(head_path)
    if head_lags_one(head, last_seq, last_prev):
        return []  # an append interrupted after its record (the head is brought forward at the next one)
    if head is None:
        return [{"line": 0, "problem": "head-missing", "message": f"{head_path} is missing"}] if count else []
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
    return [{"line": count, "problem": "edited", "message": f"line {count} (the last record) was edited or replaced"}]


def _read_head(head_path: Path) -> Head | None:
    try:
        seq, digest = head_path.read_text(encoding="ascii").split()
        return int(seq), digest
    except (OSError, ValueError):
        return None


def _duplicates(by_seq: BySeq) -> list[dict[str, Any]]:
    return [
        {
            "line": entries[1][0],
            "problem": "inserted",
            "message": f"seq {seq} appears {len(entries)} times (lines {', '.join(str(e[0]) for e in entries)}): a record was inserted",
        }
        for seq, entries in by_seq.items()
        if len(entries) > 1
    ]


def _gaps(by_seq: BySeq) -> list[dict[str, Any]]:
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


def _disorder(order: list[int], by_seq: BySeq) -> list[dict[str, Any]]:
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


def _broken_links(by_seq: BySeq) -> list[dict[str, Any]]:
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
