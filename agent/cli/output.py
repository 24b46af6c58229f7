"""The output seam: data to stdout (JSON with ``--json``), human messages to stderr.

Like httpie's Environment, the streams and tty flags are injectable so CLI
tests are deterministic.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from agent.clock import iso


def to_jsonable(value: object) -> Any:
    """Plain JSON types for any value the agent emits."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # NaN and infinity are not JSON
    return value


def dumps(value: object) -> str:
    return json.dumps(to_jsonable(value), ensure_ascii=False, sort_keys=False)


class Output:
    """Where a command's results and messages go (a plain class: dataclasses cost start-up time)."""

    def __init__(
        self, json: bool = False, quiet: bool = False, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json = json
        self.quiet = quiet
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._progress_shown = False

    @property
    def interactive(self) -> bool:
        """True when a person watches stderr (progress lines, colours, bells)."""
        isatty = getattr(self.stderr, "isatty", None)
        return bool(isatty and isatty())

    def data(self, value: object, human: str | Callable[[], str] | None = None) -> None:
        """Emit a result: JSON on stdout with ``--json``, else the human rendering on stdout."""
        self.clear_progress()
        if self.json:
            self.stdout.write(dumps(value) + "\n")
        else:
            text = human() if callable(human) else human
            if text is None:
                text = render_mapping(value) if isinstance(value, dict) else str(value)
            if text:
                self.stdout.write(text.rstrip("\n") + "\n")
        self.stdout.flush()

    def say(self, message: str) -> None:
        """A human message on stderr (silenced by ``--quiet``)."""
        if self.quiet:
            return
        self.clear_progress()
        self.stderr.write(message.rstrip("\n") + "\n")
        self.stderr.flush()

    def warn(self, message: str) -> None:
        self.clear_progress()
        self.stderr.write(f"warning: {message}\n")
        self.stderr.flush()

    def progress(self, message: str) -> None:
        """A transient status line, shown only to a person at a terminal."""
        if self.quiet or not self.interactive:
            return
        self.stderr.write("\r\033[K" + message)
        self.stderr.flush()
        self._progress_shown = True

    def clear_progress(self) -> None:
        if self._progress_shown:
            self.stderr.write("\r\033[K")
            self.stderr.flush()
            self._progress_shown = False


def strip_metadata(response: dict[str, Any]) -> dict[str, Any]:
    """A boto3 response without its transport metadata."""
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def render_mapping(value: dict[str, Any], indent: str = "") -> str:
    """``key: value`` lines for a (nested) mapping."""
    lines: list[str] = []
    width = max((len(str(k)) for k in value), default=0)
    for key, item in value.items():
        if item is None or item == {} or item == []:
            continue
        if isinstance(item, dict):
            lines.append(f"{indent}{key}:")
            lines.append(render_mapping(item, indent + "  "))
        elif isinstance(item, (list, tuple)) and item and isinstance(item[0], dict):
            lines.append(f"{indent}{key}:")
            for entry in item:
                lines.append(render_mapping(entry, indent + "  - ").replace(indent + "  - ", indent + "    ", 0))
        else:
            shown = ", ".join(map(_plain, item)) if isinstance(item, (list, tuple)) else _plain(item)
            lines.append(f"{indent}{str(key) + ':':<{width + 1}} {shown}")
    return "\n".join(line for line in lines if line)


def render_table(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None
) -> str:
    """A plain aligned table; empty string when there are no rows."""
    rows = list(rows)
    if not rows:
        return ""
    headers = list(headers or [c.upper() for c in columns])
    cells = [[_plain(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers).rstrip()] + [fmt.format(*r).rstrip() for r in cells])


def _plain(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
