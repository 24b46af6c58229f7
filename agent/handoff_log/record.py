"""The hand-off log's record format and hash chain.

A record is one line of canonical JSON (sorted keys, no spaces, UTF-8) carrying ``seq`` and
``prev``, the SHA-256 of the previous record's line (:data:`GENESIS` before the first).  The
head file holds ``"<seq> <hash>"`` of the last record.  A record holding what looks like a
PEM private key is refused before it is written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.clock import iso
from agent.errors import ExitCode, PanostageError

LOG_NAME = "handoff.jsonl"
HEAD_NAME = "handoff.head"
GENESIS = "0" * 64

#: A head file's ``(seq, hash)``.
Head = tuple[int, str]


class KeyMaterialRefused(PanostageError):
    exit_code = ExitCode.VALIDATION
    reason = "key-material-in-log"


def canonical(record: dict[str, Any]) -> bytes:
    """The record's line, without its newline: datetimes as ISO 8601 UTC, paths as text."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default).encode()


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot log a {type(value).__name__}")


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def parse_link(raw: bytes) -> tuple[int, str] | None:
    """A line's ``(seq, prev)``; None when it is not a record."""
    try:
        record = json.loads(raw)
        return int(record["seq"]), str(record["prev"])
    except (ValueError, KeyError, TypeError):
        return None


def head_lags_one(head: Head | None, last_seq: int, last_prev: str) -> bool:
    """Is the head exactly one record behind a chain that links to it?  What a crash leaves between
    a record's fsync and its head's rename - nothing a forger could not also do to the head itself."""
    if head is None:
        return last_seq == 1 and last_prev == GENESIS
    return head[0] == last_seq - 1 and head[1] == last_prev


def refuse_key_material(record: dict[str, Any], line: bytes) -> None:
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


def _key_fields(value: object, path: str = "") -> Iterator[str]:
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
