"""One hand-off's data: what it is given (:class:`StageOptions`), the hook its supervisor persists it through
(:data:`Checkpoint`), how far it got (:class:`Progress`), and what it ends with - a :class:`StageResult` (the
archive is proven on the stick), or an :class:`ArchiveRejected` (the archive failed verification, as received
or as read back).  The flow is :mod:`agent.staging.stage`'s."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.archive import ArchiveReport
from agent.clock import iso
from agent.errors import PanostageError

#: ``checkpoint(state, **data)``: called before each irreversible step (and while waiting); raising abandons the
#: hand-off (the daemon's worker persists the state, and abandons when its stick leaves or the daemon stops).
Checkpoint = Callable[..., None]


@dataclass(frozen=True)
class StageOptions:
    """What a hand-off may do and how long things last: ``[stage]``, overridden by the command's flags."""

    margin_seconds: float = 60.0
    skew_seconds: float = 30.0
    replace: bool = False
    replace_device: bool = False
    restarts: int = 1
    certificate_seconds: float = 300.0  # how long the service's certificates live (see agent.staging.stale)


@dataclass
class Progress:
    """How far one hand-off got: what its undo needs, and what its log records say."""

    handoff_id: str
    device: dict[str, Any]  # name; id, arn ... once provisioned
    stick: dict[str, Any] = field(default_factory=dict)
    deleted: list[dict[str, Any]] = field(default_factory=list)  # devices deleted on the way (id, name, reason)
    removed: list[str] = field(default_factory=list)  # cleared from the stick before provisioning
    writing: tuple[str, str] | None = None  # (file, sha256) once the write has begun
    written: str | None = None  # the file, once the write has returned
    log_errors: list[str] = field(default_factory=list)  # records the hand-off log could not take


class ArchiveRejected(PanostageError):
    """The archive failed verification; its exit code is the verification outcome's."""

    reason = "archive-rejected"

    def __init__(
        self, report: ArchiveReport, where: str, clock_offset: float | None = None, skew_seconds: float = 30.0
    ) -> None:
        problems = (
            "; ".join(p.message for p in report.problems if p.code != "network_json_missing") or report.outcome.name
        )
        message = f"the archive {where} is {report.outcome.name.lower()}: {problems}"
        hint = "nothing was written to the stick; the device was deleted again"
        time_codes = {"not_yet_valid", "expired", "expiring"} & set(report.codes())
        if time_codes and clock_offset is not None and abs(clock_offset) > skew_seconds:
            side = "ahead of" if clock_offset > 0 else "behind"
            message += f" — this workstation's clock is {abs(clock_offset):.0f}s {side} the service's"
            hint = "set the clock right (NTP: `timedatectl set-ntp true`) and stage again; " + hint
        super().__init__(
            message,
            exit_code=report.exit_code,
            reason=f"archive-{report.outcome.name.lower()}",
            details={"report": report.to_dict(), "clock_offset_seconds": clock_offset},
            hint=hint,
        )


@dataclass
class StageResult:
    """A hand-off that is ready: the device, the stick, the archive proven on it, and its deadline."""

    device: dict[str, Any]
    stick: dict[str, Any]
    archive: dict[str, Any]
    certificate: dict[str, Any]
    deadline: datetime
    seconds_left: float
    durations_ms: dict[str, float]
    removed_from_stick: list[str] = field(default_factory=list)
    devices_deleted: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 1
    #: What the stick's census found odd but harmless (it was not cleanly unmounted ...).
    stick_warnings: list[str] = field(default_factory=list)
    #: Set when the hand-off is ready but its record could not be appended to the hand-off log.
    log_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": "ready",
            "device": self.device,
            "stick": self.stick,
            "archive": self.archive,
            "certificate": self.certificate,
            "deadline": iso(self.deadline),
            "seconds_left": round(self.seconds_left, 1),
            "durations_ms": self.durations_ms,
            "removed_from_stick": self.removed_from_stick,
            "devices_deleted": self.devices_deleted,
            "provision_attempts": self.attempts,
            "stick_warnings": self.stick_warnings,
            "log_error": self.log_error,
        }
