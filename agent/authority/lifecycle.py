"""States derived from stored timestamps and the authority's clock (no background threads).

Every asynchronous thing the authority models (device deletion, device jobs, package
imports, Snow task executions) is a fixed sequence of states, each lasting
``job_step_seconds``; what a read reports depends only on when the thing started and
what time it is now.  The clock can be shifted at run time, which is how tests move
through a lifecycle without waiting.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent.authority.store import Row
from agent.clock import Clock, SystemClock

#: software every claimed device reports until an OTA job changes it
BASE_SOFTWARE = "4.3.93"
LATEST_SOFTWARE = "4.3.93"
LEASE = timedelta(days=365)

OTA_STEPS = ("PENDING", "DOWNLOADING", "VERIFYING", "IN_PROGRESS", "REBOOTING")
OTA_FAILING_STEPS = ("PENDING", "DOWNLOADING", "VERIFYING")
REBOOT_STEPS = ("PENDING", "REBOOTING")
JOB_TERMINAL = ("COMPLETED", "FAILED")
EXECUTION_TERMINAL = ("CANCELED", "FAILED", "SUCCEEDED", "REJECTED", "TIMED_OUT")


#: How far the authority's clock may be shifted from its base, either way: ten years.
MAX_OFFSET_SECONDS = 10 * 365.25 * 86400


def offset_problem(seconds: float) -> str | None:
    """The rule a clock offset breaks (None when it is a finite number within ten years)."""
    if not math.isfinite(seconds):
        return "must be a finite number of seconds"
    if abs(seconds) > MAX_OFFSET_SECONDS:
        return f"the clock offset must stay within ±{MAX_OFFSET_SECONDS:.0f} s (ten years); it would be {seconds:g} s"
    return None


class ShiftableClock:
    """Another clock plus an offset that can be changed while the authority runs (within ten years)."""

    def __init__(self, base: Clock | None = None, offset_seconds: float = 0.0) -> None:
        self.base = base or SystemClock()
        self._offset = offset_seconds
        self._lock = threading.Lock()

    @property
    def offset_seconds(self) -> float:
        return self._offset

    def set_offset(self, seconds: float) -> None:
        """Set the offset; ValueError (nothing changed) for one that is not finite or over ten years."""
        self._shift(lambda _old: float(seconds))

    def advance(self, seconds: float) -> None:
        """Move the offset on; ValueError (nothing changed) when the step or the result breaks the bounds."""
        step = float(seconds)
        if not math.isfinite(step):
            raise ValueError("must be a finite number of seconds")
        self._shift(lambda old: old + step)

    def _shift(self, new_offset: Callable[[float], float]) -> None:
        with self._lock:
            offset = new_offset(self._offset)
            problem = offset_problem(offset)
            if problem:
                raise ValueError(problem)
            self._offset = offset

    def now(self) -> datetime:
        return self.base.now() + timedelta(seconds=self._offset)

    def timestamp(self) -> float:
        """Now as epoch seconds."""
        return self.now().timestamp()

    def monotonic(self) -> float:
        return self.base.monotonic()


def to_datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True)
class Phase:
    """Where a stepped process is: its state and when it entered it."""

    state: str
    since: float
    terminal: bool


def stepped(start: float, steps: Sequence[str], final: str, now: float, step: float) -> Phase:
    """The phase of a process that enters ``steps[i]`` at ``start + i*step`` and ``final`` after."""
    if step <= 0:
        return Phase(final, start, True)
    index = max(0, math.floor((now - start) / step))
    if index >= len(steps):
        return Phase(final, start + len(steps) * step, True)
    return Phase(steps[index], start + index * step, False)


# ---------------------------------------------------------------- versions and jobs


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key for dotted versions (numbers numerically, the rest as text)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[.\-+]", version))


def major(version: str) -> int | None:
    match = re.match(r"\d+", version)
    return int(match.group()) if match else None


def job_outcome(job_type: str, image_version: str | None, allow_major: bool, current: str) -> tuple[str, str | None]:
    """How a new job will end (decided when it is created) and why if it fails."""
    if job_type == "OTA" and image_version is not None and not allow_major:
        have, want = major(current), major(image_version)
        if have is not None and want is not None and want > have:
            return "FAILED", f"major version update {current} -> {image_version} needs AllowMajorVersionUpdate"
    return "COMPLETED", None


def job_phase(job: Row, now: float, step: float) -> Phase:
    """The state of a device job row at ``now``."""
    if job["job_type"] == "REBOOT":
        return stepped(job["created"], REBOOT_STEPS, "COMPLETED", now, step)
    if job["outcome"] == "FAILED":
        return stepped(job["created"], OTA_FAILING_STEPS, "FAILED", now, step)
    return stepped(job["created"], OTA_STEPS, "COMPLETED", now, step)


def current_software(jobs: Iterable[Row], now: float, step: float) -> str:
    """The software a claimed device runs: the last completed OTA's image, else the base."""
    software = BASE_SOFTWARE
    for job in jobs:
        if job["job_type"] == "OTA" and job_phase(job, now, step).state == "COMPLETED":
            software = job["image_version"]
    return software


def latest_software(current: str) -> str:
    return max(LATEST_SOFTWARE, current, key=version_key)


# ---------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceState:
    provisioning: str
    connection: str
    aggregated: str
    gone: bool
    last_updated: float


def device_state(device: Row, jobs: Sequence[Row], now: float, step: float) -> DeviceState:
    """The statuses of a device row (with its jobs, oldest first) at ``now``."""
    created = device["created"]
    deleted = device["deleted_at"]
    if deleted is not None:
        gone_at = deleted + max(step, 0.0)
        if now >= gone_at:
            return DeviceState("DELETING", "NOT_AVAILABLE", "DELETING", True, gone_at)
        return DeviceState("DELETING", "NOT_AVAILABLE", "DELETING", False, deleted)
    claim = device["claim_status"]
    if claim is None:
        return DeviceState("AWAITING_PROVISIONING", "AWAITING_CREDENTIALS", "AWAITING_PROVISIONING", False, created)
    claimed = device["claimed_at"]
    if claim == "FAILED":
        return DeviceState("FAILED", "ERROR", "FAILED", False, claimed)
    last = claimed
    aggregated = "ONLINE"
    if jobs:
        phase = job_phase(jobs[-1], now, step)
        last = max(last, phase.since)
        if phase.state == "REBOOTING":
            aggregated = "REBOOTING"
    return DeviceState("SUCCEEDED", "ONLINE", aggregated, False, last)


# ---------------------------------------------------------------- package import jobs


def import_phase(job: Row, now: float, step: float) -> Phase:
    return stepped(job["created"], ("PENDING",), "SUCCEEDED", now, step)


# ---------------------------------------------------------------- snow executions


@dataclass(frozen=True)
class ExecutionPhase:
    state: str
    started: float | None  # when it began to run (None while queued)
    last_updated: float
    ended: float | None  # when it reached its terminal state (None while unfinished)


def execution_timeline(rows: Sequence[Row], now: float, step: float) -> dict[tuple[str, str], ExecutionPhase]:
    """The phase of every execution in ``rows`` (all executions on some devices, in queue order).

    One task runs on a device at a time: an execution leaves QUEUED one step after its task
    was created or when the device's previous execution ends, whichever is later; it then
    runs one step and SUCCEEDS.  A cancellation ends an unfinished execution at that moment.
    """
    free_at: dict[str, float] = {}
    out: dict[tuple[str, str], ExecutionPhase] = {}
    for row in rows:
        created, canceled = row["created"], row["canceled_at"]
        start = max(created + step, free_at.get(row["device_id"], created))
        end = start + step
        if canceled is not None and canceled < end:
            end = max(canceled, created)
            if now >= end:
                phase = ExecutionPhase("CANCELED", start if start <= end else None, end, end)
            else:
                phase = _running(created, start, end, now)
        else:
            phase = _running(created, start, end, now) if now < end else ExecutionPhase("SUCCEEDED", start, end, end)
        free_at[row["device_id"]] = end
        out[(row["task_id"], row["device_id"])] = phase
    return out


def _running(created: float, start: float, end: float, now: float) -> ExecutionPhase:
    if now >= start:
        return ExecutionPhase("IN_PROGRESS", start, start, None)
    return ExecutionPhase("QUEUED", None, created, None)


def task_state(task: Row, phases: Sequence[ExecutionPhase], now: float) -> tuple[str, float | None, float]:
    """(state, completedAt, lastUpdatedAt) of a task from its executions' phases."""
    canceled = task["canceled_at"]
    last = max([task["created"]] + [p.last_updated for p in phases])
    if canceled is not None and now >= canceled:
        return "CANCELED", canceled, max(last, canceled)
    if phases and all(p.ended is not None for p in phases):
        done = max(p.ended for p in phases if p.ended is not None)
        return "COMPLETED", done, last
    return "IN_PROGRESS", None, last
