"""JSON plan files: a list of device objects (or ``{"devices": [...]}``), each with the line it starts on."""

from __future__ import annotations

import json

from agent.errors import Violation
from agent.staging.plan.entries import PlanFileError, Row, RowProblem
from agent.staging.plan.json_scanner import JsonPlanScanner


def json_rows(text: str, source: str) -> tuple[list[Row], list[RowProblem]]:
    """Every device as (the line it starts on, its object), and a problem for each key given twice in one."""
    scanner = JsonPlanScanner(text)
    try:
        found = scanner.devices(source)
    except json.JSONDecodeError as exc:
        raise PlanFileError(source, f"not valid JSON: {exc.msg}", line=exc.lineno, column=exc.colno) from None
    except RecursionError:
        raise PlanFileError(source, "not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise PlanFileError(source, f"not valid JSON: {exc}") from None
    rows: list[Row] = []
    problems: list[RowProblem] = []
    for offset, value, duplicates in found:
        line = scanner.line(offset)
        for key in dict.fromkeys(duplicates):
            name = value.get("name") if isinstance(value, dict) else None
            problems.append(
                RowProblem(
                    line,
                    name if isinstance(name, str) else None,
                    Violation(
                        key, value.get(key) if isinstance(value, dict) else None, "key given twice in one object"
                    ),
                )
            )
        rows.append((line, value))
    return rows, problems
