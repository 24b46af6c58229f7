"""Reading a plan file: its format, its bytes, its text, and every entry checked, all or nothing."""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from agent.errors import UsageError, Violation
from agent.staging.plan.csv_format import csv_rows
from agent.staging.plan.entries import PlanEntry, PlanFileError, PlanValidationError, Row, RowProblem
from agent.staging.plan.entry_check import check_entry
from agent.staging.plan.json_format import json_rows
from agent.staging.plan.keys import FORMATS, SHAPE_HINT
from agent.staging.plan.toml_format import toml_rows

#: A plan file larger than this is refused unread (a plan of thousands of devices is a few MB).
MAX_FILE_BYTES = 32 << 20
#: Each format's reader: (text, source) -> (the entries with their lines, problems of the file's layout).
_ROW_READERS: dict[str, Callable[[str, str], tuple[list[Row], list[RowProblem]]]] = {
    "csv": csv_rows,
    "toml": toml_rows,
    "json": json_rows,
}


def format_of(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else the format the file name's extension names."""
    if fmt:
        if fmt.lower() not in FORMATS:
            raise UsageError(f"unknown plan format {fmt!r}", hint=f"one of {', '.join(FORMATS)}")
        return fmt.lower()
    suffix = Path(str(path)).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    raise UsageError(
        f"cannot tell the format of {path} from its name",
        hint=f"name it .csv, .toml or .json, or give --format {'|'.join(FORMATS)}",
    )


def read_plan_file(path: str | Path, fmt: str | None = None, *, existing: Collection[str] = ()) -> list[PlanEntry]:
    """Read and check a plan file (``-`` is standard input; then ``fmt`` is required).

    A path that cannot be read is a :class:`UsageError` (exit USAGE); a file whose
    content is not a valid plan raises :class:`PlanFileError` or
    :class:`PlanValidationError` (exit VALIDATION).
    """
    if str(path) == "-":
        if not fmt:
            raise UsageError("reading a plan from standard input needs --format", hint=f"one of {', '.join(FORMATS)}")
        fmt = format_of(path, fmt)
        raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        source = "<stdin>"
    else:
        fmt = format_of(path, fmt)
        source = str(path)
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            raise UsageError(
                f"cannot read plan file {path}: {getattr(exc, 'strerror', None) or exc}",
                hint="check the path and its permissions",
            ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise PlanFileError(source, f"larger than {MAX_FILE_BYTES >> 20} MiB; split the plan")
    return parse_plan(decode(raw, source), fmt, source, existing=existing)


def decode(raw: bytes, source: str) -> str:
    """UTF-8 (a byte-order mark is dropped), or a :class:`PlanFileError` naming the line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PlanFileError(
            source,
            f"not UTF-8 text: byte {raw[exc.start : exc.start + 1].hex()} at offset {exc.start}",
            line=line,
            hint="save the file as UTF-8",
        ) from None


def parse_plan(text: str, fmt: str, source: str = "<plan>", *, existing: Collection[str] = ()) -> list[PlanEntry]:
    """Every entry of a plan file, checked; raises when the file or any entry is bad.

    ``existing`` holds the names already in the plan (a clash is a problem of the entry).
    """
    fmt = format_of(source, fmt)
    if not text.strip():
        raise PlanFileError(source, "is empty", hint="a plan holds at least one device")
    rows, problems = _ROW_READERS[fmt](text, source)
    if not rows and not problems:
        raise PlanFileError(source, "holds no devices", hint=SHAPE_HINT[fmt])
    entries: list[PlanEntry] = []
    first_line: dict[str, int | None] = {}
    existing = set(existing)
    for line, fields in rows:
        name, entry, found = check_entry(fields, csv_cells=fmt == "csv")
        if name is not None:  # a valid name, even in an entry with other problems
            if name in first_line:
                seen = first_line[name]
                found.append(Violation("name", name, f"also on line {seen}" if seen else "given twice in the file"))
            elif name in existing:
                found.append(Violation("name", name, "already in the plan"))
            first_line.setdefault(name, line)
        problems += [RowProblem(line, name or _label(fields), v) for v in found]
        if entry is not None and not found:
            entries.append(PlanEntry(entry.name, entry.request, entry.actions, line))
    if problems:
        raise PlanValidationError(problems, source=source, entries=len(rows))
    return entries


def _label(fields: object) -> str | None:
    """Something to call an entry whose name is not valid, if it is printable and short."""
    name = fields.get("name") if isinstance(fields, Mapping) else None
    return name if isinstance(name, str) and name and len(name) <= 80 and name.isprintable() else None
