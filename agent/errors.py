"""The one named set of exit codes and the errors that carry them.

Every failure a user can meet is a :class:`PanostageError` with a stable
``reason`` (a short machine-readable slug), a plain message, an optional hint
and structured ``details``.  The CLI maps it to its exit code in one place
(:func:`agent.cli.main`); tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Process exit codes.  Values are part of the interface: never renumber."""

    OK = 0
    ERROR = 1  # unexpected failure: a bug, run again with --debug
    USAGE = 2  # bad command line (click's own code)
    CONFIG = 3  # configuration file or PANOSTAGE_* environment invalid
    VALIDATION = 4  # input breaks a documented constraint (client side or HTTP 400)
    NOT_FOUND = 5  # HTTP 404
    CONFLICT = 6  # HTTP 409, or the stick/device is in a state that forbids the step
    ACCESS_DENIED = 7  # HTTP 403, missing or wrong credentials
    QUOTA = 8  # HTTP 402 ServiceQuotaExceeded
    THROTTLED = 9  # HTTP 429 after retries
    SERVICE = 10  # HTTP 5xx after retries, or a response that breaks the protocol
    UNREACHABLE = 11  # endpoint refused, DNS failure, connect/read timeout
    TIMEOUT = 12  # --wait ran out before a terminal state
    OPERATION_FAILED = 13  # an asynchronous operation ended in a failed state
    IO = 14  # local I/O: stick, image, file
    STICK_REFUSED = 15  # the stick policy or its contents forbid writing
    VERIFY_EXPIRING = 20  # archive valid but inside the safety margin
    VERIFY_EXPIRED = 21  # certificate expired (past its notAfter on this workstation's clock)
    VERIFY_CORRUPT = 22  # archive damaged, unsafe or inconsistent
    VERIFY_UNVERIFIABLE = 23  # no certificate found to check
    INTERRUPTED = 130  # SIGINT / SIGTERM


class PanostageError(Exception):
    """Base of every expected error.  Subclasses fix the exit code and reason."""

    exit_code: ExitCode = ExitCode.ERROR
    reason: str = "error"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        details: dict[str, Any] | None = None,
        reason: str | None = None,
        exit_code: ExitCode | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or {}
        if reason is not None:
            self.reason = reason
        if exit_code is not None:
            self.exit_code = exit_code

    def also(self, note: str) -> None:
        """Add a second failure to report after this one (``also: ...``), once."""
        notes = self.details.setdefault("also", [])
        if note not in notes:
            notes.append(note)

    def to_dict(self) -> dict[str, Any]:
        """The error as data (for ``--json``)."""
        data: dict[str, Any] = {
            "reason": self.reason,
            "exit_code": int(self.exit_code),
            "exit_name": self.exit_code.name,
            "message": self.message,
        }
        if self.hint:
            data["hint"] = self.hint
        if self.details:
            data["details"] = self.details
        return data


class ConfigError(PanostageError):
    exit_code = ExitCode.CONFIG
    reason = "config"


class UsageError(PanostageError):
    exit_code = ExitCode.USAGE
    reason = "usage"


@dataclass(frozen=True)
class Violation:
    """One broken rule: which field, which value, which rule."""

    path: str
    value: Any
    rule: str

    def __str__(self) -> str:
        return f"{self.path} = {_short_repr(self.value)}: {self.rule}"

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.path, "value": _jsonable(self.value), "rule": self.rule}


class InputValidationError(PanostageError):
    """Input that breaks one or more documented constraints; lists them all."""

    exit_code = ExitCode.VALIDATION
    reason = "validation"

    def __init__(self, violations: Iterable[Violation], *, subject: str = "input", hint: str | None = None):
        self.violations = list(violations)
        count = len(self.violations)
        lines = "\n".join(f"  - {v}" for v in self.violations)
        noun = "rule" if count == 1 else "rules"
        super().__init__(
            f"{subject} breaks {count} documented {noun}:\n{lines}",
            hint=hint,
            details={"violations": [v.to_dict() for v in self.violations]},
        )


class ServiceError(PanostageError):
    """An error answered by the service (or its absence)."""

    exit_code = ExitCode.SERVICE
    reason = "service"


class WaitTimeout(PanostageError):
    exit_code = ExitCode.TIMEOUT
    reason = "wait-timeout"


class OperationFailed(PanostageError):
    exit_code = ExitCode.OPERATION_FAILED
    reason = "operation-failed"


class LocalIOError(PanostageError):
    exit_code = ExitCode.IO
    reason = "io"


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    if (isinstance(value, float) and value != value) or value in (float("inf"), float("-inf")):
        return repr(value)  # NaN/inf are not JSON
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
