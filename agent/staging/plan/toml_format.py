"""TOML plan files: ``[[device]]`` tables (or a root ``device = [...]``), each with the line it starts on."""

from __future__ import annotations

import re
import tomllib

from agent.staging.plan.entries import PlanFileError, Row, RowProblem
from agent.staging.plan.keys import SHAPE_HINT


def toml_rows(text: str, source: str) -> tuple[list[Row], list[RowProblem]]:
    """Every device table as (the line it starts on, or None where the layout is not followed; its keys)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, column = _error_position(str(exc))
        message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)$", "", str(exc))
        raise PlanFileError(source, f"not valid TOML: {message}", line=line, column=column) from None
    except RecursionError:
        raise PlanFileError(source, "not valid TOML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise PlanFileError(source, f"not valid TOML: {exc}") from None
    unknown = [key for key in data if key != "device"]
    if unknown:
        raise PlanFileError(source, f"unknown top-level key {unknown[0]!r}", hint=SHAPE_HINT["toml"])
    devices = data.get("device", [])
    if not isinstance(devices, list):
        raise PlanFileError(
            source, "device must be an array of tables: write [[device]], not [device]", hint=SHAPE_HINT["toml"]
        )
    lines: list[int | None] = list(_device_lines(text))
    if len(lines) != len(devices):
        lines = [None] * len(devices)  # a layout the scanner does not follow: better no line than a wrong one
    return list(zip(lines, devices)), []


def _error_position(message: str) -> tuple[int | None, int | None]:
    match = re.search(r"at line (\d+), column (\d+)", message)
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


_DEVICE_HEADER = re.compile(r"""\[\[[ \t]*(?:device|"device"|'device')[ \t]*\]\][ \t]*(?:#.*)?""")
_DEVICE_KEY = re.compile(r"""(?:device|"device"|'device')[ \t]*""")


def _device_lines(text: str) -> list[int]:
    """The line each device entry starts on: ``[[device]]`` headers, or ``{`` items of a root ``device = [...]``.

    A small scanner over text tomllib has already accepted: it follows strings,
    comments and bracket depth, which is all it takes to tell a header from data.
    """
    lines: list[int] = []
    in_string: str | None = None  # '"""' or "'''" while inside a multi-line string
    depth = 0
    at_root = True
    device_value = False
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        i, n = 0, len(line)
        if in_string is None and depth == 0:
            stripped = line.lstrip(" \t")
            if stripped.startswith("["):
                at_root = False
                device_value = False
                if _DEVICE_HEADER.fullmatch(stripped):
                    lines.append(lineno)
                continue
        while i < n:
            if in_string is not None:
                if in_string == '"""' and line[i] == "\\":
                    i += 2
                    continue
                if line.startswith(in_string, i):
                    i += 3
                    for _ in range(2):  # """" or """"": the first quotes are content, the last three close
                        if i < n and line[i] == in_string[0]:
                            i += 1
                    in_string = None
                    continue
                i += 1
                continue
            char = line[i]
            if char == "#":
                break
            if line.startswith('"""', i) or line.startswith("'''", i):
                in_string = line[i : i + 3]
                i += 3
                continue
            if char == '"':
                i += 1
                while i < n and line[i] != '"':
                    i += 2 if line[i] == "\\" else 1
                i += 1
                continue
            if char == "'":
                end = line.find("'", i + 1)
                i = n if end < 0 else end + 1
                continue
            if char == "=" and depth == 0:
                device_value = at_root and bool(_DEVICE_KEY.fullmatch(line[:i].strip(" \t")))
            elif char in "[{":
                depth += 1
                if char == "{" and depth == 2 and device_value:
                    lines.append(lineno)
            elif char in "]}":
                depth = max(depth - 1, 0)
            i += 1
    return lines
