"""One hand-off: provision a device and put its archive on a stick, provably.

validate → inspect the stick → (start over if the name is taken by a stale device)
→ ProvisionDevice → verify in memory → margin check → durable write → read back
(bypassing caches) → same SHA-256 → verify from the stick → log → report the deadline.

Any failure after the device exists and before its archive is verified on the
stick deletes the device again: nothing half-done is left in the authority, and
the stick keeps no partial or temporary file.  The ``checkpoint`` hook is called
before each irreversible step so a supervisor (the daemon) can persist progress.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent import interrupts
from agent.archive import ArchiveReport, Limits, Outcome, archive_file_name, verify_archive
from agent.aws import validation
from agent.aws.provisioning import Provisioned, clock_offset, devices_named_at, provision_device, tagged, tags_of
from agent.clock import Clock, iso, utc
from agent.errors import ExitCode, PanostageError, to_error
from agent.handoff_log import HandoffLog
from agent.staging import stale
from agent.stick import checks, names
from agent.stick.errors import StickConflict
from agent.timing import StepTimer

#: A guess at an archive's size before we have it (they are a few KB): refuse a full stick early.
EXPECTED_ARCHIVE_BYTES = 64 * 1024


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


@dataclass(frozen=True)
class StageOptions:
    margin_seconds: float = 60.0
    skew_seconds: float = 30.0
    replace: bool = False
    replace_device: bool = False
    restarts: int = 1
    certificate_seconds: float = 300.0  # how long the service's certificates live (see agent.staging.stale)


@dataclass
class StageResult:
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


Checkpoint = Callable[..., None]


@dataclass
class StickPlan:
    """What the stick holds that the write will replace or remove."""

    target_name: str
    #: removed before the device is provisioned (once every check has passed): what is dead or in the way -
    #: expired archives, and with --replace junk, anything at a FAT-equal name, a symlink or empty directory
    remove_before: list[str] = field(default_factory=list)
    #: other devices' live archives (--replace), removed once ours is proven on the stick
    remove_after: list[str] = field(default_factory=list)
    #: harmless oddities of the stick (it was not cleanly unmounted ...), reported with the hand-off
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OnStick:
    """An archive-like file found on a stick: whose it is and whether it still matters."""

    name: str
    device: str | None = None
    not_after: datetime | None = None  # set when it is a live archive
    expired: bool = False
    problem: str | None = None  # not a usable archive (too large, unreadable, corrupt ...)

    @property
    def live(self) -> bool:
        return self.not_after is not None

    def describe(self) -> str:
        whose = f" of device {self.device}" if self.device else ""
        if self.live:
            return f"{self.name} is the live archive{whose} (until {iso(self.not_after)})"
        return f"{self.name} is not a usable configuration archive ({self.problem})"


class Stager:
    """Runs hand-offs against one backend; every collaborator is a seam."""

    def __init__(
        self,
        backend: Any,
        *,
        clock: Clock,
        log: HandoffLog,
        options: StageOptions,
        station: str,
        operator: str,
        verify_limits: Any = None,
        on_event: Callable[..., None] = lambda kind, **data: None,
        checkpoint: Checkpoint = lambda state, **data: None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.log = log
        self.options = options
        self.station = station
        self.operator = operator
        self.verify_limits = verify_limits
        self.on_event = on_event
        self.checkpoint = checkpoint
        self.sleep = sleep

    # ------------------------------------------------------------------ the flow

    def stage(
        self,
        request: dict[str, Any],
        target: Any,
        *,
        stick_extra: dict[str, Any] | None = None,
        timer: StepTimer | None = None,
        handoff_id: str | None = None,
    ) -> StageResult:
        """Run one hand-off of ``request`` onto ``target``; ``stick_extra`` adds identity (USB serial) to the
        record, and a ``timer`` already running (the daemon's steps before this) keeps one breakdown.
        The device is tagged with this station and ``handoff_id`` (made up when not given), so another
        station can say whose it is."""
        timer = timer or StepTimer()
        name = request.get("Name", "")
        handoff_id = handoff_id or uuid.uuid4().hex
        context: dict[str, Any] = {"device": {"name": name}, "stick": {}, "deleted": [], "handoff_id": handoff_id}
        provisioned: Provisioned | None = None
        try:
            with timer.step("validate"):
                validation.validate("ProvisionDevice", request)
                archive_file_name(name)  # a name FAT cannot hold is the input's fault, not the stick's
            # everything that can refuse comes first; the stick changes only once nothing will
            with timer.step("inspect_stick"):
                context["stick"] = {**target.describe(), **(stick_extra or {})}
                plan = self._inspect(target, name)
                self.log.check_appendable()  # a log that cannot take the record must not cost a device
            with timer.step("check_room"):
                target.check_room(plan.target_name, EXPECTED_ARCHIVE_BYTES, freeing=plan.remove_before)
            with timer.step("existing_device"):
                self._clear_stale_device(name, context)
            if plan.remove_before:
                with timer.step("clear_stick"):
                    context["removed"] = self._clear(target, plan.remove_before)
                    target.check_room(plan.target_name, EXPECTED_ARCHIVE_BYTES)
            for attempt in range(self.options.restarts + 1):
                self.checkpoint("provisioning", name=name, started=self.clock.now())
                # SIGTERM waits for the answer: the undo must know the device to delete it
                with timer.step("provision"), interrupts.held():
                    provisioned = provision_device(
                        self.backend,
                        tagged(request, self.station, handoff_id),
                        clock=self.clock,
                        on_event=self._provision_event(context),
                    )
                context["device"] = {
                    "name": name,
                    "id": provisioned.device_id,
                    "arn": provisioned.arn,
                    "iot_thing_name": provisioned.iot_thing_name,
                }
                self.checkpoint("provisioned", device_id=provisioned.device_id, arn=provisioned.arn)
                with timer.step("verify_received"):
                    report = self._verify(provisioned.archive, name, margin=self.options.margin_seconds)
                if report.outcome in (Outcome.OK,):
                    break
                self._delete(
                    provisioned.device_id, name, "archive unusable on arrival: " + report.outcome.name, context
                )
                provisioned_last, provisioned = provisioned, None
                offset = clock_offset(provisioned_last, self.clock.now())
                skewed = offset is not None and abs(offset) > self.options.skew_seconds
                if (
                    report.outcome not in (Outcome.EXPIRING, Outcome.EXPIRED)
                    or attempt == self.options.restarts
                    or skewed
                ):
                    raise ArchiveRejected(report, "received from the service", offset, self.options.skew_seconds)
                self.on_event(
                    "start-over",
                    name=name,
                    reason=f"only {report.seconds_left:.0f}s of validity left "
                    f"(margin {self.options.margin_seconds:g}s)",
                    deleted=provisioned_last.device_id,
                )
            assert provisioned is not None
            result = self._write_and_prove(provisioned, report, plan, target, timer, context)
        except BaseException as exc:
            self._fail(exc, provisioned, target, context, timer)
            if isinstance(exc, PanostageError):
                for message in context.get("log_errors", []):
                    exc.also(f"the hand-off log could not record this: {message}")
            raise
        return result

    def _write_and_prove(
        self,
        provisioned: Provisioned,
        report: ArchiveReport,
        plan: StickPlan,
        target: Any,
        timer: StepTimer,
        context: dict[str, Any],
    ) -> StageResult:
        data = provisioned.archive
        digest = hashlib.sha256(data).hexdigest()
        name = context["device"]["name"]
        left = (utc(report.device_certificate.not_after) - self.clock.now()).total_seconds()
        if left < self.options.margin_seconds:
            raise PanostageError(
                f"only {left:.0f}s of validity left when the write would start (margin {self.options.margin_seconds:g}s); "
                "nothing was written",
                exit_code=ExitCode.VERIFY_EXPIRING,
                reason="too-late",
                hint="run stage again: a new device will be provisioned",
            )
        self.checkpoint("writing", device_id=provisioned.device_id, sha256=digest, file=plan.target_name)
        context["writing"] = (plan.target_name, digest)
        with timer.step("write"):
            write_report = target.write_atomic(plan.target_name, data)
        context["written"] = plan.target_name
        self.checkpoint("written", device_id=provisioned.device_id, sha256=digest, file=plan.target_name)
        with timer.step("read_back"):
            on_stick = target.read(plan.target_name, bypass_cache=True)
        if hashlib.sha256(on_stick).digest() != hashlib.sha256(data).digest():
            raise PanostageError(
                f"the stick returned different bytes for {plan.target_name} than were written "
                f"({len(on_stick)} vs {len(data)} bytes)",
                exit_code=ExitCode.VERIFY_CORRUPT,
                reason="read-back-mismatch",
                hint="the stick may be failing; use another one",
            )
        with timer.step("verify_stick"):
            stick_report = self._verify(on_stick, name, margin=0.0, file_name=plan.target_name)
        if stick_report.outcome is not Outcome.OK:
            raise ArchiveRejected(stick_report, "read back from the stick")
        with timer.step("tidy_stick"):
            removed = context.get("removed", []) + self._clear(target, plan.remove_after)
        self.checkpoint("verified", device_id=provisioned.device_id, sha256=digest)
        cert = stick_report.device_certificate
        now = self.clock.now()
        result = StageResult(
            device={**context["device"], "status": provisioned.status},
            stick=context["stick"],
            archive={
                "file": plan.target_name,
                "sha256": digest,
                "size": len(data),
                "write_steps_ms": getattr(write_report, "durations_ms", None),
            },
            certificate={
                "serial": cert.serial,
                "sha256": cert.sha256,
                "subject": cert.subject,
                "not_before": cert.not_before,
                "not_after": cert.not_after,
            },
            deadline=utc(cert.not_after),
            seconds_left=(utc(cert.not_after) - now).total_seconds(),
            durations_ms={},
            removed_from_stick=removed,
            devices_deleted=context["deleted"],
            attempts=provisioned.attempts,
        )
        result.stick_warnings = plan.warnings
        with timer.step("log"):  # the archive is proven on the stick: a log that fails now is reported, never undone
            self._record(
                context,
                "handoff",
                time=now,
                outcome="ready",
                device=result.device,
                stick=result.stick,
                archive={k: v for k, v in result.archive.items() if v is not None},
                certificate={k: (iso(v) if isinstance(v, datetime) else v) for k, v in result.certificate.items()},
                removed_from_stick=removed,
                stick_warnings=plan.warnings,
                durations_ms=dict(timer.durations_ms),
            )
        result.log_error = "; ".join(dict.fromkeys(context.get("log_errors", []))) or None
        result.durations_ms = dict(timer.durations_ms)
        self.checkpoint("ready", device_id=provisioned.device_id, deadline=result.deadline)
        return result

    # ------------------------------------------------------------------ pieces

    def _verify(self, data: bytes, name: str, *, margin: float, file_name: str | None = None) -> ArchiveReport:
        kwargs: dict[str, Any] = {}
        if self.verify_limits is not None:
            kwargs["limits"] = self.verify_limits
        return verify_archive(
            data,
            now=self.clock.now(),
            skew_seconds=self.options.skew_seconds,
            margin_seconds=margin,
            file_name=file_name,
            device_name=name,
            **kwargs,
        )

    def _inspect(self, target: Any, name: str) -> StickPlan:
        """Decide what happens to what the stick already holds, before any device is made (reads only).

        The stick must be sound (a damaged FAT is refused).  Every entry a FAT reader could take for an
        archive, or for this archive's name, is judged by what it is, not by its name alone: the same
        device's older archive (or junk at its name) is replaced atomically; an expired archive, or (with
        ``--replace``) junk or an entry in the way, is removed before provisioning; another device's live archive blocks
        the write unless ``--replace`` (then it goes once ours is proven, or first when its name is
        FAT-equal to ours: the stick cannot hold both).
        """
        plan = StickPlan(target_name=archive_file_name(name))
        target.require_writable()
        plan.warnings = target.check_sound()
        replace = self.options.replace
        blockers: list[str] = []
        at_name = target.lookup(plan.target_name)
        others = [e for e in checks.archives(target) if at_name is None or e.name != at_name.name]
        for entry in [e for e in [at_name] if e] + others:
            ours = entry.name == plan.target_name  # this device's own name, exactly (device names are case-sensitive)
            alike = names.same(entry.name, plan.target_name)
            what = {"dir": "a directory", "symlink": "a symlink", "other": "a special file"}.get(entry.kind, "a file")
            if entry.kind == "dir" and target.list_dir(entry.name):
                raise StickConflict(
                    f"{entry.name} on the stick is a directory with files in it; it is never removed for you",
                    reason="stick-name-is-dir",
                    hint="move its contents away, or use another stick",
                )
            if entry.kind != "file":
                if not replace:
                    blockers.append(f"{entry.name} is {what} (a symlink is never followed)")
                (plan.remove_before if alike else plan.remove_after).append(entry.name)
                continue
            if ours and entry.readonly and not replace:
                blockers.append(f"{entry.name} is a read-only file")
            if ours:  # whatever is at this archive's own name (an older archive, junk): the write replaces it -
                if entry.size > (self.verify_limits or Limits()).max_file_bytes:  # judged by its size, never read
                    plan.remove_before.append(entry.name)
                continue
            found = self._archive_on_stick(target, entry)
            if found.expired:
                plan.remove_before.append(entry.name)
            elif not replace:
                blockers.append(
                    found.describe()
                    + (
                        f"; on FAT its name is the same as {plan.target_name}, so the stick cannot hold both"
                        if alike
                        else ""
                    )
                )
            elif alike or not found.live:
                plan.remove_before.append(entry.name)
            else:
                plan.remove_after.append(entry.name)
        if blockers:
            raise StickConflict(
                "the stick already holds: " + "; ".join(blockers) + " (the appliance must meet exactly one archive)",
                reason="stick-occupied",
                hint="use another stick, wipe it (`panostage stick wipe`), or pass --replace",
                details={"blockers": blockers},
            )
        return plan

    def _archive_on_stick(self, target: Any, entry: Any) -> OnStick:
        """What an archive-like file on the stick is (judged by its size first, read only when it could be one)."""
        try:
            report = checks.archive_report(
                target,
                entry,
                now=self.clock.now(),
                limits=self.verify_limits or Limits(),
                skew_seconds=self.options.skew_seconds,
            )
        except PanostageError as exc:
            return OnStick(entry.name, problem=f"unreadable: {exc.message}")
        device = report.device_name or (report.device_certificate.subject if report.device_certificate else None)
        if report.outcome is Outcome.EXPIRED:
            return OnStick(entry.name, device=device, expired=True)
        if report.outcome in (Outcome.OK, Outcome.EXPIRING):
            return OnStick(entry.name, device=device, not_after=report.not_after)
        return OnStick(entry.name, device=device, problem=report.summary())

    def _clear(self, target: Any, entries: list[str]) -> list[str]:
        """Remove ``entries`` from the stick: files are wiped (overwritten, then deleted), the rest removed."""
        removed = []
        for name in entries:
            entry = target.lookup(name)
            if entry is not None and entry.kind == "file":
                target.wipe(entry.name)
            elif entry is not None:
                target.remove(entry.name)
            removed.append(name)
        return removed

    def _clear_stale_device(self, name: str, context: dict[str, Any]) -> None:
        """Delete the devices of this name the service says are dead, wait for one about to die, refuse
        the rest (:mod:`agent.staging.stale`)."""
        client = self.backend.panorama()
        rules = stale.Rules(
            certificate_seconds=self.options.certificate_seconds,
            skew_seconds=self.options.skew_seconds,
            margin_seconds=self.options.margin_seconds,
            replace_device=self.options.replace_device,
        )
        waited = 0.0
        while True:
            found, server_time = devices_named_at(client, name)
            now = server_time or self.clock.now()
            wait = 0.0
            for device in [d for d in found if d.get("ProvisioningStatus") != "DELETING"]:
                decision = stale.decide(device, now, rules, tags_of=lambda d=device: tags_of(client, d))
                if decision.action == "delete":
                    self._delete(device["DeviceId"], name, decision.reason, context)
                else:
                    wait = max(wait, decision.seconds)
                    why = decision.reason
            if not wait:
                return
            if waited > self.options.margin_seconds + 10:  # a service whose clock does not move: give up, do not spin
                raise PanostageError(
                    f"waited {waited:.0f} s for {why}, and the service still says it lives",
                    exit_code=ExitCode.CONFLICT,
                    reason="device-live",
                    hint="check the service's clock; pass --replace-device to go on regardless",
                )
            self._wait(name, why, wait)
            waited += wait

    def _wait(self, name: str, why: str, seconds: float) -> None:
        """Wait ``seconds`` (plus a second for the Date header's resolution), telling the person; the daemon's
        checkpoint abandons the wait when the stick leaves or the daemon stops."""
        seconds += 1.0
        self.on_event("waiting", name=name, reason=why, seconds=seconds)
        deadline = self.clock.monotonic() + seconds
        while (left := deadline - self.clock.monotonic()) > 0:
            self.checkpoint("waiting", name=name, seconds_left=left)
            self.sleep(min(1.0, left))

    def _record(self, context: dict[str, Any], kind: str, **fields: Any) -> None:
        """Append to the hand-off log; a failure is kept in ``context`` to be reported after the stick's outcome."""
        try:
            self.log.append(
                kind, station=self.station, operator=self.operator, handoff_id=context["handoff_id"], **fields
            )
        except Exception as exc:  # noqa: BLE001 - the stick's outcome comes first; the log's failure is named second
            context.setdefault("log_errors", []).append(to_error(exc).message)

    def _delete(self, device_id: str, name: str, reason: str, context: dict[str, Any]) -> None:
        self.backend.panorama().delete_device(DeviceId=device_id)
        entry = {"id": device_id, "name": name, "reason": reason}
        context["deleted"].append(entry)
        self._record(
            context, "device-deleted", time=self.clock.now(), device={"name": name, "id": device_id}, reason=reason
        )
        self.on_event("device-deleted", **entry)

    def _provision_event(self, context: dict[str, Any]) -> Callable[..., None]:
        def on_event(kind: str, **data: Any) -> None:
            if kind == "orphan-deleted":
                entry = {
                    "id": data["device_id"],
                    "name": data["name"],
                    "reason": "created by an attempt whose answer was lost",
                }
                context["deleted"].append(entry)
                self._record(
                    context,
                    "device-deleted",
                    time=self.clock.now(),
                    device={"name": data["name"], "id": data["device_id"]},
                    reason=entry["reason"],
                )
            self.on_event(kind, **data)

        return on_event

    @staticmethod
    def _ours_in_place(target: Any, name: str, digest: str) -> bool:
        """Did a write that failed put our archive in place all the same (it failed after the rename)?"""
        try:
            return hashlib.sha256(target.read(name, bypass_cache=False)).hexdigest() == digest
        except Exception:  # noqa: BLE001 - unreadable or absent: nothing of ours to take back
            return False

    def _fail(
        self,
        exc: BaseException,
        provisioned: Provisioned | None,
        target: Any,
        context: dict[str, Any],
        timer: StepTimer,
    ) -> None:
        """Undo what can be undone, and record the failure."""
        if context.get("written") or (context.get("writing") and self._ours_in_place(target, *context["writing"])):
            name = context.get("written") or context["writing"][0]
            try:
                target.wipe(name)
            except Exception as cleanup_exc:  # noqa: BLE001 - report both
                self.on_event("cleanup-failed", what=name, error=str(cleanup_exc))
        if provisioned is not None:
            try:
                self._delete(provisioned.device_id, context["device"]["name"], "hand-off failed", context)
            except Exception as cleanup_exc:  # noqa: BLE001
                self.on_event("cleanup-failed", what=provisioned.device_id, error=str(cleanup_exc))
        error = to_error(exc) if isinstance(exc, Exception) else None  # the message the user saw, not a class name
        self.checkpoint("failed", error=str(exc))
        if timer.current == "validate":
            return  # nothing was attempted: bad input is the caller's to report
        self._record(
            context,
            "handoff",
            time=self.clock.now(),
            outcome="failed",
            device=context["device"],
            stick=context["stick"],
            failed_step=timer.current or timer.last,
            error={
                "reason": error.reason if error else type(exc).__name__,
                "message": (error.message if error else str(exc))[:500],
            },
            durations_ms=dict(timer.durations_ms),
        )
