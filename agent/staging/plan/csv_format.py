"""CSV plan files: a header row of plan keys, then one row per device, each with its physical line."""

from __future__ import annotations

import csv
import io

from agent.errors import Violation
from agent.staging.plan.entries import PlanFileError, Row, RowProblem
from agent.staging.plan.keys import FLAT_KEYS, SHAPE_HINT


def csv_rows(text: str, source: str) -> tuple[list[Row], list[RowProblem]]:
    """Every data row as (the line it starts on, its non-empty cells by column), and the header's problems."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[Row] = []
    problems: list[RowProblem] = []
    header: list[str] | None = None
    header_line = 0
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise PlanFileError(
                source,
                f"not valid CSV in the row starting here: {exc}",
                line=start,
                hint='quote a cell holding "," or a line break, and double a quote inside one',
            ) from None
        cells = [cell.strip() for cell in cells]
        if not any(cells):
            continue  # a blank line, or a row of empty cells (spreadsheets write those)
        if header is None:
            header, header_line = [cell.lower() for cell in cells], start
            problems += _header_problems(header, header_line)
            continue
        row: dict[str, str] = {}
        for index, cell in enumerate(cells):
            if not cell:
                continue  # an empty cell: not given
            column = header[index] if index < len(header) else ""
            if not column:
                problems.append(
                    RowProblem(
                        start, None, Violation(f"column {index + 1}", cell, "a cell in a column without a header name")
                    )
                )
            elif column in FLAT_KEYS and column not in row:
                row[column] = cell
        rows.append((start, row))
    if header is None:
        raise PlanFileError(source, "holds no header row", hint=SHAPE_HINT["csv"])
    return rows, problems


def _header_problems(header: list[str], line: int) -> list[RowProblem]:
    problems = []
    seen: set[str] = set()
    for index, column in enumerate(header):
        if column and column not in FLAT_KEYS:
            rule = f"unknown column; known: {', '.join(FLAT_KEYS)}"
            if ";" in column and len(header) == 1:
                rule += " (the separator is a comma, not a semicolon)"
            problems.append(RowProblem(line, None, Violation(f"header column {index + 1}", column, rule)))
        elif column in seen:
            problems.append(
                RowProblem(line, None, Violation(f"header column {index + 1}", column, "column given twice"))
            )
        seen.add(column)
    if "name" not in header:
        problems.append(RowProblem(line, None, Violation("header", None, "the name column is required")))
    return problems
