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
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent import interrupts
from agent.archive import ArchiveReport, CertificateInfo, Limits, Outcome, archive_file_name, verify_archive
from agent.aws import validation
from agent.aws.provisioning import Event, Provisioned, clock_offset, provision_device, tagged
from agent.clock import Clock, iso, utc
from agent.error_mapping import to_error
from agent.errors import ExitCode, PanostageError
from agent.handoff_log import HandoffLog
from agent.staging import stale
from agent.staging.free_name import free_name
from agent.staging.handoff import ArchiveRejected, Checkpoint, Progress, StageOptions, StageResult
from agent.staging.stick_plan import StickPlan, clear, plan_stick
from agent.timing import StepTimer

if TYPE_CHECKING:
    from agent.aws.backend import ServiceBackend
    from agent.stick.model import StickTarget

__all__ = ["EXPECTED_ARCHIVE_BYTES", "ArchiveRejected", "Checkpoint", "StageOptions", "StageResult", "Stager"]

#: A guess at an archive's size before we have it (they are a few KB): refuse a full stick early.
EXPECTED_ARCHIVE_BYTES = 64 * 1024


class Stager:
    """Runs hand-offs against one backend; every collaborator is a seam."""

    def __init__(
        self,
        backend: ServiceBackend,
        *,
        clock: Clock,
        log: HandoffLog,
        options: StageOptions,
        station: str,
        operator: str,
        verify_limits: Limits | None = None,
        on_event: Event = lambda kind, **data: None,
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
        target: StickTarget,
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
        progress = Progress(handoff_id=handoff_id, device={"name": name})
        provisioned: Provisioned | None = None
        try:
            with timer.step("validate"):
                validation.validate("ProvisionDevice", request)
                archive_file_name(name)  # a name FAT cannot hold is the input's fault, not the stick's
            # everything that can refuse comes first; the stick changes only once nothing will
            with timer.step("inspect_stick"):
                progress.stick = {**target.describe(), **(stick_extra or {})}
                plan = plan_stick(
                    target,
                    name,
                    replace=self.options.replace,
                    limits=self.verify_limits or Limits(),
                    clock=self.clock,
                    skew_seconds=self.options.skew_seconds,
                )
                self.log.check_appendable()  # a log that cannot take the record must not cost a device
            with timer.step("check_room"):
                target.check_room(plan.target_name, EXPECTED_ARCHIVE_BYTES, freeing=plan.remove_before)
            with timer.step("existing_device"):
                self._free_name(name, progress)
            if plan.remove_before:
                with timer.step("clear_stick"):
                    progress.removed = clear(target, plan.remove_before)
                    target.check_room(plan.target_name, EXPECTED_ARCHIVE_BYTES)
            for attempt in range(self.options.restarts + 1):
                self.checkpoint("provisioning", name=name, started=self.clock.now())
                # SIGTERM waits for the answer: the undo must know the device to delete it
                with timer.step("provision"), interrupts.held():
                    provisioned = provision_device(
                        self.backend,
                        tagged(request, self.station, handoff_id),
                        clock=self.clock,
                        on_event=self._provision_event(progress),
                    )
                progress.device = {
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
                    provisioned.device_id, name, "archive unusable on arrival: " + report.outcome.name, progress
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
            result = self._write_and_prove(provisioned, report, plan, target, timer, progress)
        except BaseException as exc:
            self._fail(exc, provisioned, target, progress, timer)
            if isinstance(exc, PanostageError):
                for message in progress.log_errors:
                    exc.also(f"the hand-off log could not record this: {message}")
            raise
        return result

    def _write_and_prove(
        self,
        provisioned: Provisioned,
        report: ArchiveReport,
        plan: StickPlan,
        target: StickTarget,
        timer: StepTimer,
        progress: Progress,
    ) -> StageResult:
        data = provisioned.archive
        digest = hashlib.sha256(data).hexdigest()
        name = progress.device["name"]
        left = (utc(_device_certificate(report).not_after) - self.clock.now()).total_seconds()
        if left < self.options.margin_seconds:
            raise PanostageError(
                f"only {left:.0f}s of validity left when the write would start (margin {self.options.margin_seconds:g}s); "
                "nothing was written",
                exit_code=ExitCode.VERIFY_EXPIRING,
                reason="too-late",
                hint="run stage again: a new device will be provisioned",
            )
        self.checkpoint("writing", device_id=provisioned.device_id, sha256=digest, file=plan.target_name)
        progress.writing = (plan.target_name, digest)
        with timer.step("write"):
            write_report = target.write_atomic(plan.target_name, data)
        progress.written = plan.target_name
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
            removed = progress.removed + clear(target, plan.remove_after)
        self.checkpoint("verified", device_id=provisioned.device_id, sha256=digest)
        cert = _device_certificate(stick_report)
        now = self.clock.now()
        result = StageResult(
            device={**progress.device, "status": provisioned.status},
            stick=progress.stick,
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
            devices_deleted=progress.deleted,
            attempts=provisioned.attempts,
        )
        result.stick_warnings = plan.warnings
        with timer.step("log"):  # the archive is proven on the stick: a log that fails now is reported, never undone
            self._record(
                progress,
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
        result.log_error = "; ".join(dict.fromkeys(progress.log_errors)) or None
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

    def _free_name(self, name: str, progress: Progress) -> None:
        """Delete the devices of this name the service says are dead, wait for one about to die, refuse
        the rest (:mod:`agent.staging.free_name`, by the rules of :mod:`agent.staging.stale`)."""
        rules = stale.Rules(
            certificate_seconds=self.options.certificate_seconds,
            skew_seconds=self.options.skew_seconds,
            margin_seconds=self.options.margin_seconds,
            replace_device=self.options.replace_device,
        )
        free_name(
            self.backend.panorama(),
            name,
            rules,
            clock=self.clock,
            delete=lambda device_id, reason: self._delete(device_id, name, reason, progress),
            on_event=self.on_event,
            checkpoint=self.checkpoint,
            sleep=self.sleep,
        )

    def _record(self, progress: Progress, kind: str, **fields: Any) -> None:
        """Append to the hand-off log; a failure is kept in ``progress`` to be reported after the stick's outcome."""
        try:
            self.log.append(
                kind, station=self.station, operator=self.operator, handoff_id=progress.handoff_id, **fields
            )
        except Exception as exc:  # noqa: BLE001 - the stick's outcome comes first; the log's failure is named second
            progress.log_errors.append(to_error(exc).message)

    def _delete(self, device_id: str, name: str, reason: str, progress: Progress) -> None:
        self.backend.panorama().delete_device(DeviceId=device_id)
        entry = {"id": device_id, "name": name, "reason": reason}
        progress.deleted.append(entry)
        self._record(
            progress, "device-deleted", time=self.clock.now(), device={"name": name, "id": device_id}, reason=reason
        )
        self.on_event("device-deleted", **entry)

    def _provision_event(self, progress: Progress) -> Event:
        def on_event(kind: str, **data: Any) -> None:
            if kind == "orphan-deleted":
                entry = {
                    "id": data["device_id"],
                    "name": data["name"],
                    "reason": "created by an attempt whose answer was lost",
                }
                progress.deleted.append(entry)
                self._record(
                    progress,
                    "device-deleted",
                    time=self.clock.now(),
                    device={"name": data["name"], "id": data["device_id"]},
                    reason=entry["reason"],
                )
            self.on_event(kind, **data)

        return on_event

    @staticmethod
    def _ours_in_place(target: StickTarget, name: str, digest: str) -> bool:
        """Did a write that failed put our archive in place all the same (it failed after the rename)?"""
        try:
            return hashlib.sha256(target.read(name, bypass_cache=False)).hexdigest() == digest
        except Exception:  # noqa: BLE001 - unreadable or absent: nothing of ours to take back
            return False

    def _fail(
        self,
        exc: BaseException,
        provisioned: Provisioned | None,
        target: StickTarget,
        progress: Progress,
        timer: StepTimer,
    ) -> None:
        """Undo what can be undone, and record the failure."""
        writing = progress.writing
        name = progress.written or (writing[0] if writing and self._ours_in_place(target, *writing) else None)
        if name:
            try:
                target.wipe(name)
            except Exception as cleanup_exc:  # noqa: BLE001 - report both
                self.on_event("cleanup-failed", what=name, error=str(cleanup_exc))
        if provisioned is not None:
            try:
                self._delete(provisioned.device_id, progress.device["name"], "hand-off failed", progress)
            except Exception as cleanup_exc:  # noqa: BLE001
                self.on_event("cleanup-failed", what=provisioned.device_id, error=str(cleanup_exc))
        error = to_error(exc) if isinstance(exc, Exception) else None  # the message the user saw, not a class name
        self.checkpoint("failed", error=str(exc))
        if timer.current == "validate":
            return  # nothing was attempted: bad input is the caller's to report
        self._record(
            progress,
            "handoff",
            time=self.clock.now(),
            outcome="failed",
            device=progress.device,
            stick=progress.stick,
            failed_step=timer.current or timer.last,
            error={
                "reason": error.reason if error else type(exc).__name__,
                "message": (error.message if error else str(exc))[:500],
            },
            durations_ms=dict(timer.durations_ms),
        )


def _device_certificate(report: ArchiveReport) -> CertificateInfo:
    """The device certificate of an archive that verified (OK or EXPIRING: verification found it)."""
    assert report.device_certificate is not None, report.outcome
    return report.device_certificate
