"""One admitted stick's work, in a thread of its own: return trip, then a hand-off.

The worker persists the hand-off's state before every irreversible step (through the
Stager's checkpoints), so a crash leaves a record recovery can act on.  A removed stick
or a stopping daemon sets ``cancel``: the next checkpoint abandons the hand-off cleanly
(the Stager deletes the device again and removes anything half-written).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.daemon.context import Context
from agent.daemon.returning import StickFacts, Verdict, judge
from agent.errors import ExitCode, PanostageError
from agent.paths import fsync_dir, write_atomic
from agent.timing import StepTimer

if TYPE_CHECKING:
    from agent.stick.model import StickTarget
    from agent.udev import StickInfo

__all__ = ["ABANDON_BEFORE", "CHECKPOINT_STATES", "HOLD_ENV", "Abandoned", "Context", "StickWorker"]

log = logging.getLogger("panostage.daemon")

#: Stager checkpoint -> hand-off state recorded before that step
CHECKPOINT_STATES = {
    "provisioning": "provisioning",
    "provisioned": "provisioned",
    "writing": "writing",
    "written": "written",
    "verified": "verified",
}
#: Checkpoints before an irreversible step: a cancelled worker stops there.
ABANDON_BEFORE = {"provisioning", "writing", "waiting"}
#: Fault-injection aid for the crash tests: hold the worker at this checkpoint (see README, faults).
HOLD_ENV = "PANOSTAGE_DEBUG_HOLD_AT"


class Abandoned(PanostageError):
    exit_code = ExitCode.INTERRUPTED
    reason = "abandoned"


@dataclass
class StickWorker:
    """Handles one stick, once; the daemon starts it and is told when it is done."""

    ctx: Context
    info: StickInfo
    on_done: Callable[[StickWorker], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    outcome: str = "working"
    message: str = ""
    handoff_id: str | None = None
    thread: threading.Thread | None = None
    departed: bool = False  # set by the daemon when udev says the stick went away
    collected: bool = False  # a return trip ran (plan entries may have moved)
    device_name: str | None = None  # set with the deadline when the hand-off is ready
    deadline: datetime | None = None  # the ready archive's: the daemon warns the technician before it

    @property
    def syspath(self) -> str:
        return self.info.syspath

    def start(self) -> StickWorker:
        self.thread = threading.Thread(target=self._main, name=f"stick {self.info.devnode}", daemon=True)
        self.thread.start()
        return self

    def _main(self) -> None:
        try:
            self._run()
        except Exception as exc:  # contained: one bad stick never kills the daemon
            if self.departed or self._stick_gone():  # whatever broke, the stick had left: not a failure to report
                message = exc.message if isinstance(exc, PanostageError) else f"{type(exc).__name__}: {exc}"
                self._finish("departed", f"the stick left before its hand-off ended ({message})")
            elif isinstance(exc, Abandoned):
                self._finish("abandoned", exc.message)
            elif isinstance(exc, PanostageError):
                self._finish("failed", exc.message)
            else:
                log.exception("stick %s: unexpected error", self.info.devnode)
                self._finish("failed", f"unexpected {type(exc).__name__}: {exc}")
        finally:
            self.ctx.state.close()  # this thread's database connection ends with it
            self.on_done(self)

    def _stick_gone(self) -> bool:
        """The medium is no longer there: the device left sysfs, or its size is 0 (pulled card, detached loop)."""
        try:
            return Path(self.info.syspath, "size").read_text().strip() == "0"
        except OSError:
            return True

    def _finish(self, outcome: str, message: str) -> None:
        self.outcome, self.message = outcome, message
        self.ctx.state.see_stick(self.syspath, state=outcome, reason=message, handoff_id=self.handoff_id)
        if outcome in ("failed", "abandoned"):
            self.ctx.technician.failed(self.info.devnode, message)
        elif outcome == "departed":
            self.ctx.technician.departed(self.info.devnode, message)
        log.info("stick %s: %s: %s", self.info.devnode, outcome, message)

    # ------------------------------------------------------------------ the work

    def _run(self) -> None:
        from agent.stick import open_target

        ctx = self.ctx
        self.timer = StepTimer()
        ctx.state.see_stick(self.syspath, state="working", devnode=self.info.devnode, identity=self.info.identity)
        with self.timer.step("open_stick"):
            assert self.info.devnode is not None  # udev names every block device that carries a filesystem
            target = open_target(self.info.devnode, runtime_dir=ctx.runtime_dir)
        with target:
            with self.timer.step("look"):
                verdict, why, facts = self._look(target)
            log.info("stick %s: %s", self.info.devnode, why)
            if verdict is Verdict.LEAVE:
                self._finish("left", why)
                return
            if verdict is Verdict.RETURN_TRIP:
                if not self._return_trip(target):
                    return
            elif verdict is Verdict.WIPE_THEN_STAGE:
                assert facts.archive is not None  # the verdict is given only of an archive
                target.wipe(facts.archive)
            entry = self._restage_entry(facts) if verdict is Verdict.RESTAGE else None
            self._stage(target, entry)

    def _look(self, target: StickTarget) -> tuple[Verdict, str, StickFacts]:
        from agent.stick import LOG_DIR, archives
        from agent.stick.checks import archive_report

        target.check_sound()  # a damaged stick is refused before anything on it is judged or touched
        found = [e for e in archives(target) if e.kind == "file"]
        logs = target.lookup(LOG_DIR)
        has_logs = logs is not None and logs.kind == "dir" and bool(target.list_dir(LOG_DIR))
        facts = StickFacts(has_logs=has_logs, archive_count=len(found))
        if found and not has_logs:
            report = archive_report(
                target,
                found[0],
                now=self.ctx.clock.now(),
                limits=self.ctx.limits,
                skew_seconds=self.ctx.settings.stage.skew_seconds,
            )
            device_id = (report.manifest or {}).get("device_id")
            status = self._device_status(device_id)
            facts = StickFacts(
                has_logs=False,
                archive=found[0].name,
                archive_count=len(found),
                archive_outcome=report.outcome.value,
                device_status=status,
                device_known=status is not None,
            )
        verdict, why = judge(
            facts,
            returned_logs=self.ctx.settings.daemon.returned_logs,
            expired_return=self.ctx.settings.daemon.expired_return,
        )
        return verdict, why, facts

    def _device_status(self, device_id: str | None) -> str | None:
        from agent.aws.provisioning import describe_or_none

        return (describe_or_none(self.ctx.backend.panorama(), device_id) or {}).get("ProvisioningStatus")

    def _return_trip(self, target: StickTarget) -> bool:
        """Collect the appliance's logs; True when the stick is clean afterwards and may be staged."""
        from agent.staging import returns

        ctx = self.ctx
        self.collected = True
        result = returns.collect(
            target,
            ctx.backend,
            ctx.handoff_log,
            ctx.clock,
            ctx.state_dir,
            ctx.station,
            ctx.operator,
            ctx.limits,
        )
        name = result.device.get("name")
        entry = self._entry_named(name)
        if entry is not None and entry["status"] == "staged":  # never undo progress the follow-up made
            if result.outcome == "provisioned":
                ctx.state.set_entry(entry["id"], status="provisioned", device_id=result.device.get("id"))
            elif result.outcome == "failed":
                ctx.state.requeue(
                    entry["id"],
                    "the appliance could not register: see the collected logs",
                    max_attempts=ctx.settings.daemon.max_attempts,
                )
        if ctx.settings.daemon.returned_logs != "collect-wipe":
            self._finish("returned", f"{name or 'stick'}: {result.outcome}; logs collected")
            return False
        returns.wipe(target, ctx.handoff_log, ctx.clock, ctx.station, ctx.operator)
        return True

    def _entry_named(self, name: str | None) -> dict[str, Any] | None:
        if not name:
            return None
        try:
            return self.ctx.state.entry(name)
        except PanostageError:
            return None

    def _restage_entry(self, facts: StickFacts) -> dict[str, Any] | None:
        """The plan entry whose expired archive this stick holds (restaged on this stick)."""
        from agent.archive import device_name_from_file_name

        entry = self._entry_named(device_name_from_file_name(facts.archive or ""))
        if entry is None or entry["status"] not in ("staged", "pending"):
            return None
        return entry

    def _stage(self, target: StickTarget, entry: dict[str, Any] | None) -> None:
        ctx = self.ctx
        self.handoff_id = ctx.state.new_id()
        with self.timer.step("claim"):
            if entry is not None:  # the same device again, on the stick that held its expired archive
                ctx.state.set_entry(
                    entry["id"], status="claimed", handoff_id=self.handoff_id, attempts=entry["attempts"] + 1
                )
            else:
                entry = ctx.state.claim_next(self.handoff_id)
        if entry is None:
            ctx.technician.empty_plan(self.info.devnode)
            self._finish("idle", "the plan is empty: nothing to stage (`panostage plan add` or `plan import`)")
            return
        ctx.state.new_handoff(
            handoff_id=self.handoff_id,
            plan_id=entry["id"],
            device_name=entry["name"],
            stick_identity=self.info.identity,
            stick=self.info.to_dict(),
        )
        ctx.state.see_stick(
            self.syspath, state="working", handoff_id=self.handoff_id, reason=f"staging {entry['name']}"
        )
        self._forget_failed_device(entry)
        stager = ctx.stager_factory(checkpoint=self._checkpoint)
        try:
            result = stager.stage(
                entry["request"],
                target,
                stick_extra=self._identity_fields(),
                timer=self.timer,
                handoff_id=self.handoff_id,
            )
        except BaseException as exc:
            message = exc.message if isinstance(exc, PanostageError) else f"{type(exc).__name__}: {exc}"
            ctx.state.update_handoff(
                self.handoff_id, "abandoned" if isinstance(exc, Abandoned) else "failed", error=message[:500]
            )
            status = ctx.state.requeue(entry["id"], message, max_attempts=ctx.settings.daemon.max_attempts)
            log.warning(
                "stick %s: %s failed (%s); plan entry now %s", self.info.devnode, entry["name"], message, status
            )
            raise
        ctx.state.set_entry(entry["id"], status="staged", device_id=result.device["id"], last_error=None)
        ctx.state.update_handoff(
            self.handoff_id,
            "ready",
            deadline=result.deadline,
            sha256=result.archive["sha256"],
            device_id=result.device["id"],
            device_arn=result.device.get("arn"),
        )
        self.device_name, self.deadline = result.device["name"], result.deadline
        self.outcome, self.message = "ready", f"{entry['name']} ready until {result.deadline.isoformat()}"
        ctx.state.see_stick(self.syspath, state="ready", reason=self.message, handoff_id=self.handoff_id)
        ctx.technician.ready(entry["name"], self.info.devnode, result.deadline)

    def _identity_fields(self) -> dict[str, Any]:
        info = self.info
        return {
            k: v
            for k, v in {
                "identity": info.identity,
                "usb_serial": info.usb_serial,
                "devnode": info.devnode,
                "vendor": info.vendor,
                "model": info.model,
            }.items()
            if v
        }

    def _forget_failed_device(self, entry: dict[str, Any]) -> None:
        """A retried entry's earlier device (never registered) is ours to delete before provisioning anew."""
        device_id = entry.get("device_id")
        status = self._device_status(device_id)
        if device_id and status not in (None, "SUCCEEDED", "DELETING"):
            self.ctx.backend.panorama().delete_device(DeviceId=device_id)
            self.ctx.handoff_log.append(
                "device-deleted",
                time=self.ctx.clock.now(),
                station=self.ctx.station,
                operator=self.ctx.operator,
                device={"name": entry["name"], "id": device_id},
                reason=f"restaging the plan entry (device was {status})",
            )

    def _checkpoint(self, state: str, **data: Any) -> None:
        """Persist the hand-off's state before the step; abandon, or hold for a crash test, if asked."""
        if state in ABANDON_BEFORE and self.cancel.is_set():
            raise Abandoned(f"abandoned before {state}: the stick was removed or the daemon is stopping")
        if state == "waiting":  # the technician sees why this stick takes longer
            self.ctx.state.see_stick(
                self.syspath,
                state="working",
                handoff_id=self.handoff_id,
                reason=f"waiting {data['seconds_left']:.0f} s for {data['name']}'s old device "
                "to expire on the service's clock",
            )
        if state in CHECKPOINT_STATES and self.handoff_id:
            fields: dict[str, Any] = {}
            if state == "provisioning":
                fields = {"provision_started_at": data["started"], "device_name": data["name"]}
            elif state == "provisioned":
                fields = {"device_id": data["device_id"], "device_arn": data.get("arn")}
            elif data.get("sha256"):
                fields = {"sha256": data["sha256"]}
            self.ctx.state.update_handoff(self.handoff_id, CHECKPOINT_STATES[state], **fields)
        marker = self.ctx.state_dir / f"held-at-{state}"
        if os.environ.get(HOLD_ENV) == state and not marker.exists():  # once: a restarted daemon goes on
            write_atomic(marker, (self.handoff_id or "").encode())  # durable: a power cut must not hold again
            fsync_dir(marker.parent)
            log.warning("holding at %s (%s is set)", state, HOLD_ENV)
            self.cancel.wait()
            raise Abandoned(f"abandoned at {state} (held there): the stick was removed or the daemon is stopping")
