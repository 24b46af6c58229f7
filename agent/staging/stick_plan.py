"""What the stick already holds, judged before any device is made: what the write replaces, removes, or is
blocked by (reads only), and the removal itself once the hand-off may change the stick."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from agent.archive import Limits, Outcome, archive_file_name
from agent.clock import Clock, iso
from agent.errors import PanostageError
from agent.stick import checks, names
from agent.stick.errors import StickConflict
from agent.stick.model import Entry, StickTarget


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
        if self.not_after is not None:  # live
            return f"{self.name} is the live archive{whose} (until {iso(self.not_after)})"
        return f"{self.name} is not a usable configuration archive ({self.problem})"


def plan_stick(
    target: StickTarget, name: str, *, replace: bool, limits: Limits, clock: Clock, skew_seconds: float
) -> StickPlan:
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
            if entry.size > limits.max_file_bytes:  # judged by its size, never read
                plan.remove_before.append(entry.name)
            continue
        found = archive_on_stick(target, entry, limits=limits, clock=clock, skew_seconds=skew_seconds)
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


def archive_on_stick(
    target: StickTarget, entry: Entry, *, limits: Limits, clock: Clock, skew_seconds: float
) -> OnStick:
    """What an archive-like file on the stick is (judged by its size first, read only when it could be one)."""
    try:
        report = checks.archive_report(target, entry, now=clock.now(), limits=limits, skew_seconds=skew_seconds)
    except PanostageError as exc:
        return OnStick(entry.name, problem=f"unreadable: {exc.message}")
    device = report.device_name or (report.device_certificate.subject if report.device_certificate else None)
    if report.outcome is Outcome.EXPIRED:
        return OnStick(entry.name, device=device, expired=True)
    if report.outcome in (Outcome.OK, Outcome.EXPIRING):
        return OnStick(entry.name, device=device, not_after=report.not_after)
    return OnStick(entry.name, device=device, problem=report.summary())


def clear(target: StickTarget, entries: list[str]) -> list[str]:
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
