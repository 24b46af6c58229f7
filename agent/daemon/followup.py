"""After the stick: notice when staged devices come ONLINE, then run their post-provision actions.

A pass costs what changed, not what waits.  The devices still waiting are listed in bulk
(ListDevices filtered on AWAITING_PROVISIONING and PENDING, 25 a page), and only an entry whose
device has left that list is described (SUCCEEDED, FAILED, gone).  The staged entries as one
group, and each entry with a running OTA or reboot job on its own, wait ``poll_seconds`` after a
change; the wait doubles while nothing changes, up to ``poll_max_seconds``.  An entry with no
change for ``followup_hours`` needs attention and is no longer asked about.

Passes run in one thread (:class:`FollowUpThread`) with one database connection, for the
daemon's lifetime; the daemon's loop says when a pass is due (on a watchdog ping when it has
one, so following up adds no wake-up of its own).  Stick work comes first: before each call to
the service a pass waits while a stick is being handled.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from agent.aws.ota import major_update
from agent.aws.paging import pages
from agent.aws.provisioning import describe_or_none
from agent.clock import parse_iso

if TYPE_CHECKING:
    from agent.daemon.context import Context

log = logging.getLogger("panostage.followup")

#: Aggregated statuses of a device that has not registered yet (the model's enum).
WAITING = ("AWAITING_PROVISIONING", "PENDING")
#: How long a pass waits for stick work to end before it asks the service anyway.
STICKS_FIRST_SECONDS = 60.0

T = TypeVar("T")
D = TypeVar("D")
#: What one contained step is given: one plan entry, or the staged entries of a pass.
Entries = TypeVar("Entries", bound=dict[str, Any] | list[dict[str, Any]])


@dataclass
class Backoff:
    """When one group of work is next due: ``base`` after a change, doubling while nothing changes, up to ``cap``."""

    base: float
    cap: float
    due: float = 0.0
    interval: float = 0.0  # the wait that led to ``due`` (0: none yet, the next is ``base``)

    def after(self, changed: bool, now: float) -> None:
        """A pass ran at ``now``: the wait starts over at ``base`` after a change, else doubles."""
        self.interval = self.base if changed or not self.interval else min(self.interval * 2, self.cap)
        self.due = now + self.interval

    def __post_init__(self) -> None:
        self.cap = max(self.cap, self.base)  # a cap below the first wait would make the wait shrink

    def soon(self, now: float) -> None:
        """Something new to follow (a start, a hand-off): due ``base`` from now at the latest, as after a change."""
        self.interval = self.base
        self.due = now + self.base if not self.due else min(self.due, now + self.base)


class FollowUp:
    """What a pass does; :attr:`next_due` (monotonic seconds, None when nothing is followed) says when."""

    def __init__(
        self, ctx: Context, *, quiet: threading.Event | None = None, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.ctx = ctx
        self.quiet = quiet  # set while no stick is being handled
        self.monotonic = monotonic
        daemon = ctx.settings.daemon
        self.staged = Backoff(daemon.poll_seconds, daemon.poll_max_seconds)
        self.staged.soon(monotonic())  # a start is a change: what came online while the daemon was down
        self.jobs: dict[int, Backoff] = {}
        self.job_status: dict[str, str] = {}  # job ID -> status last seen (a change resets that entry's wait)
        self.next_due: float | None = self.staged.due  # the first pass finds out what there is
        self._lock = threading.Lock()  # kick() comes from the loop while a pass may be running
        self._kicked = False

    def kick(self) -> None:
        """A hand-off was staged (or a returned stick moved an entry): follow it from ``poll_seconds`` on."""
        with self._lock:
            self._kicked = True
            self.staged.soon(self.monotonic())
            self.next_due = min(self.next_due or self.staged.due, self.staged.due)

    def run_due(self) -> bool:
        """Run what is due; True when an entry changed.  Sets :attr:`next_due`."""
        now = self.monotonic()
        with self._lock:
            self._kicked = False
        state = self.ctx.state
        changed = False
        staged = state.brief("staged") if self.staged.due <= now else []  # read only when a pass is due
        if staged:
            moved = self._contained(self._staged_pass, staged, default=False)
            self.staged.after(moved, now)
            changed |= moved
        for entry in state.plan("provisioned"):
            backoff = self.jobs.setdefault(entry["id"], Backoff(self.staged.base, self.staged.cap, due=now))
            if backoff.due <= now:
                advanced = self._contained(self._advance_actions, entry, default=None)
                if advanced is None:  # the service keeps refusing (a device deleted, not online): not forever
                    advanced = self._horizon(entry, "its post-provision actions have failed at every try")
                backoff.after(advanced, now)
                changed |= advanced
        counts = state.plan_counts()  # what is still followed after this pass
        rows = state.plan("provisioned") if counts["provisioned"] else []
        still = [entry["id"] for entry in rows]
        running = {job for entry in rows for job in ((entry.get("actions") or {}).get("progress") or {}).values()}
        self.job_status = {job: status for job, status in self.job_status.items() if job in running}
        self.jobs = {
            key: self.jobs.get(key) or Backoff(self.staged.base, self.staged.cap, due=now + self.staged.base)
            for key in still
        }
        with self._lock:
            if self._kicked:  # staged while this pass ran
                self.staged.soon(now)
            dues = [backoff.due for backoff in self.jobs.values()] + (
                [self.staged.due] if counts["staged"] or self._kicked else []
            )
            self.next_due = min(dues) if dues else None
        return changed

    def run_once(self) -> bool:
        """One pass over everything followed, due or not (tests, recovery)."""
        self.staged.due = 0.0
        for backoff in self.jobs.values():
            backoff.due = 0.0
        return self.run_due()

    # ------------------------------------------------------------------ staged entries

    def _staged_pass(self, entries: list[dict[str, Any]]) -> bool:
        client = self.ctx.backend.panorama()
        waiting: set[str] = set()
        for status in WAITING:
            for device in pages(
                self._sticks_first(client.list_devices), "Devices", DeviceAggregatedStatusFilter=status, MaxResults=25
            ):
                waiting.add(device["DeviceId"])
        changed = False
        for entry in entries:
            if entry.get("device_id") in waiting:
                changed |= self._horizon(entry, "its device has not come online")
                continue
            moved = self._contained(self._check_online, entry, default=None)
            changed |= moved if moved is not None else self._horizon(entry, "asking about its device fails")
        return changed

    def _horizon(self, entry: dict[str, Any], what: str) -> bool:
        """:meth:`_past_horizon`, contained: one unreadable entry never stops the pass."""
        return bool(self._contained(lambda e: self._past_horizon(e, what), entry, default=False))

    def _check_online(self, entry: dict[str, Any]) -> bool:
        device = self._describe(entry.get("device_id"))
        status = (device or {}).get("ProvisioningStatus")
        if device is not None and status == "SUCCEEDED":
            log.info("%s is provisioned (%s)", entry["name"], device.get("DeviceConnectionStatus"))
            self.ctx.state.set_entry(entry["id"], status="provisioned")
            return True
        if device is None or status in ("FAILED", "ERROR"):
            why = f"the device is {status}" if device else "the device no longer exists"
            self.ctx.state.requeue(
                entry["id"], f"{why}; staging it again", max_attempts=self.ctx.settings.daemon.max_attempts
            )
            return True
        return self._past_horizon(entry, f"its device is still {status}")

    def _describe(self, device_id: str | None) -> dict[str, Any] | None:
        return self._sticks_first(lambda: describe_or_none(self.ctx.backend.panorama(), device_id))()

    # ------------------------------------------------------------------ provisioned entries: OTA, reboot

    def _advance_actions(self, entry: dict[str, Any]) -> bool:
        actions = dict(entry.get("actions") or {})
        progress = dict(actions.get("progress") or {})
        client = self.ctx.backend.panorama()
        for kind in ("ota", "reboot"):
            if not actions.get(kind) or progress.get(kind) == "COMPLETED":
                continue
            job_id = progress.get(f"{kind}_job")
            if job_id is None:
                request: dict[str, Any] = {"DeviceIds": [entry["device_id"]], "JobType": kind.upper()}
                if kind == "ota" and self._refused_major(entry, actions, progress):
                    return True
                if kind == "ota":
                    request["DeviceJobConfig"] = {
                        "OTAJobConfig": {
                            "ImageVersion": actions["ota"]["image_version"],
                            "AllowMajorVersionUpdate": bool(actions["ota"].get("allow_major")),
                        }
                    }
                progress[f"{kind}_job"] = self._sticks_first(client.create_job_for_devices)(**request)["Jobs"][0][
                    "JobId"
                ]
                log.info("%s: %s job %s started", entry["name"], kind, progress[f"{kind}_job"])
                self._save(entry, actions, progress)
                return True  # one step at a time: the job runs before the next is started
            status = self._sticks_first(client.describe_device_job)(JobId=job_id).get("Status")
            if status == "FAILED":
                progress[kind] = "FAILED"
                self._save(entry, actions, progress, status="attention", last_error=f"{kind} job {job_id} failed")
                return True
            if status != "COMPLETED":
                seen, self.job_status[job_id] = self.job_status.get(job_id), status
                return status != seen or self._past_horizon(entry, f"its {kind} job {job_id} is still {status}")
            progress[kind] = "COMPLETED"
            self._save(entry, actions, progress)
        log.info("%s: done", entry["name"])
        self._save(entry, actions, progress, status="done")
        return True

    def _refused_major(self, entry: dict[str, Any], actions: dict[str, Any], progress: dict[str, Any]) -> bool:
        """An OTA the service would accept and then fail (a major update not allowed): not made; attention."""
        ota = actions["ota"]
        if ota.get("allow_major"):
            return False
        device = self._describe(entry["device_id"]) or {}
        update = major_update(device.get("CurrentSoftware"), ota["image_version"])
        if update is None:
            return False
        why = (
            f"ota {update.image_version} not started: {update.words}, which the plan entry does not allow "
            f"(the service would fail it); `panostage job ota {entry['name']} --image-version "
            f"{update.image_version} --allow-major` runs it, or a {update.have}.x version"
        )
        log.warning("%s: %s", entry["name"], why)
        progress["ota"] = "REFUSED"
        self._save(entry, actions, progress, status="attention", last_error=why)
        return True

    def _save(self, entry: dict[str, Any], actions: dict[str, Any], progress: dict[str, Any], **fields: Any) -> None:
        actions["progress"] = progress
        self.ctx.state.set_entry(entry["id"], actions=json.dumps(actions), **fields)

    # ------------------------------------------------------------------ shared

    def _past_horizon(self, entry: dict[str, Any], what: str) -> bool:
        """Past ``followup_hours`` since the entry last changed: it needs attention (True), and is no longer followed."""
        hours = self.ctx.settings.daemon.followup_hours
        if (self.ctx.clock.now() - parse_iso(entry["updated_at"])).total_seconds() < hours * 3600:
            return False
        why = (
            f"{what} {hours:g} h after its last change: no longer followed up (`panostage plan retry` stages it again)"
        )
        log.warning("%s: %s", entry["name"], why)
        self.ctx.state.set_entry(entry["id"], status="attention", last_error=why)
        return True

    def _sticks_first(self, call: Callable[..., T]) -> Callable[..., T]:
        """``call``, made once no stick is being handled (or after STICKS_FIRST_SECONDS)."""

        def paced(**params: Any) -> T:
            if self.quiet is not None:
                self.quiet.wait(STICKS_FIRST_SECONDS)
            return call(**params)

        return paced

    @staticmethod
    def _contained(step: Callable[[Entries], T], arg: Entries, default: D) -> T | D:
        try:
            return step(arg)
        except Exception as exc:  # noqa: BLE001 - one entry's trouble never stops the others
            what = arg["name"] if isinstance(arg, dict) else f"{len(arg)} staged entries"
            log.warning("follow-up of %s: %s", what, exc)
            return default


class FollowUpThread:
    """The one thread passes run in, for the daemon's lifetime; its database connection ends with it."""

    def __init__(self, followup: FollowUp, *, on_pass_end: Callable[[], None] = lambda: None) -> None:
        self.followup = followup
        self.on_pass_end = on_pass_end
        self.running = False  # a pass was asked for and has not ended (read by the loop)
        self._go = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="follow-up", daemon=True)

    def start(self) -> FollowUpThread:
        self._thread.start()
        return self

    def run_pass(self) -> None:
        self.running = True
        self._go.set()

    def stop(self, timeout: float) -> None:
        self._stopping = True
        self._go.set()
        self._thread.join(timeout)

    def _main(self) -> None:
        try:
            while True:
                self._go.wait()
                self._go.clear()
                if self._stopping:
                    return
                try:
                    self.followup.run_due()
                except Exception:  # the thread outlives one bad pass
                    log.exception("follow-up pass")
                    self.followup.next_due = self.followup.monotonic() + self.followup.staged.cap
                finally:
                    self.running = False
                    self.on_pass_end()
        finally:
            self.followup.ctx.state.close()
