"""The configuration reference: every key of :mod:`agent.config.schema` as the README's Markdown table.

``scripts/config-table`` writes :func:`markdown_table` into README.md between :data:`BEGIN` and
:data:`END` (:func:`with_table`), and ``tests/test_config_table.py`` fails when the README's table is
not what the schema renders, so the documented keys cannot drift from the real ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agent.config.schema import iter_keys, type_name

BEGIN = "<!-- config-table: generated from agent/config/schema.py by scripts/config-table; edit the schema, not this table -->"
END = "<!-- config-table: end -->"
REGENERATE = ".venv/bin/python scripts/config-table"


def markdown_table() -> str:
    """Every key, in declaration order: its type, its default (as TOML), its limits, its doc."""
    lines = ["| key | type | default | limits | meaning |", "| --- | --- | --- | --- | --- |"]
    for section, key, fld in iter_keys():
        # prose, unlike a code span, would take "<" for the start of an HTML tag
        limits, doc = (text.replace("<", "&lt;") for text in (_limits(fld), fld.metadata["doc"]))
        cells = [f"`{section}.{key}`", type_name(fld), _default(key, fld.default), limits, doc]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def with_table(readme: str) -> str:
    """``readme`` with the text between its :data:`BEGIN` and :data:`END` lines replaced by the table."""
    lines = readme.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\n") == END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"README.md must hold the line {BEGIN!r} once, then the line {END!r} once")
    return "".join(lines[: starts[0] + 1]) + markdown_table() + "".join(lines[ends[0] :])


def _default(key: str, value: Any) -> str:
    if value is dataclasses.MISSING:  # every key has a default; a new one without would show here
        return "(required)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`"
    if isinstance(value, str):
        return f'`"{value}"`'
    text = f"`{_number(value)}`"
    if key.endswith("_bytes") and value >= 1024:
        return f"{text} ({_binary(value)})"
    return text


def _limits(fld: dataclasses.Field[Any]) -> str:
    meta = fld.metadata
    parts = []
    if "choices" in meta:
        parts.append("one of " + ", ".join(f"`{choice}`" for choice in meta["choices"]))
    if "min" in meta and "max" in meta:
        parts.append(f"{_number(meta['min'])} to {_number(meta['max'])}")
    elif "min" in meta:
        parts.append(f"≥ {_number(meta['min'])}")
    elif "max" in meta:
        parts.append(f"≤ {_number(meta['max'])}")
    if "rule" in meta:
        parts.append(meta["rule"])
    return "; ".join(parts)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _binary(value: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return f"{value} bytes"
