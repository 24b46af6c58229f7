"""What reading a plan gives: checked entries, or the problems and errors that refuse the file."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agent.errors import ExitCode, InputValidationError, PanostageError, Violation

#: Problems shown in the error message; ``details`` (``--json``) lists all of them.
SHOWN_PROBLEMS = 40

#: What a format reader gives for each entry: the line it starts on (if known) and its parsed keys.
Row = tuple[int | None, object]


@dataclass(frozen=True)
class PlanEntry:
    """One device of a plan file, checked: ready for :meth:`agent.state.StateDB.add_entries`."""

    name: str
    request: dict[str, Any]
    actions: dict[str, Any]
    line: int | None = None

    def as_tuple(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return self.name, self.request, self.actions

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "line": self.line, "request": self.request, "actions": self.actions}


@dataclass(frozen=True)
class RowProblem:
    """A broken rule in one entry of a plan file."""

    line: int | None
    entry: str | None
    violation: Violation

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "line ?"
        if self.entry:
            where += f" ({self.entry})"
        return f"{where}: {self.violation}"

    def to_dict(self) -> dict[str, object]:
        return {"line": self.line, "entry": self.entry, **self.violation.to_dict()}


class PlanFileError(PanostageError):
    """The file itself cannot be read as a plan (syntax, encoding, shape, empty)."""

    exit_code = ExitCode.VALIDATION
    reason = "plan-file"

    def __init__(
        self, source: str, problem: str, *, line: int | None = None, column: int | None = None, hint: str | None = None
    ) -> None:
        where = (
            f" (line {line}" + (f", column {column}" if column is not None else "") + ")" if line is not None else ""
        )
        details: dict[str, object] = {"source": source}
        if line is not None:
            details["line"] = line
        if column is not None:
            details["column"] = column
        super().__init__(f"{source}: {problem}{where}", hint=hint, details=details)


class PlanValidationError(InputValidationError):
    """Entries of a plan file break documented rules: every problem, with its line."""

    reason = "validation"

    def __init__(self, problems: Iterable[RowProblem], *, source: str, entries: int) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line is None, p.line or 0))
        self.violations = [p.violation for p in self.problems]
        bad_lines = {p.line for p in self.problems}
        shown = "\n".join(f"  - {p}" for p in self.problems[:SHOWN_PROBLEMS])
        more = len(self.problems) - SHOWN_PROBLEMS
        if more > 0:
            shown += f"\n  … and {more} more (--json lists every one)"
        count = len(self.problems)
        lines = len(bad_lines)
        PanostageError.__init__(
            self,
            f"{source}: {count} {'problem' if count == 1 else 'problems'} on {lines} "
            f"{'line' if lines == 1 else 'lines'}; nothing was imported:\n{shown}",
            hint="fix these lines and import the whole file again",
            details={"source": source, "entries": entries, "violations": [p.to_dict() for p in self.problems]},
        )
