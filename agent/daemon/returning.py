"""What to do with what an admitted stick already holds (plain code: facts in, a verdict out).

A stick arrives clean, or it comes back: with the appliance's logs (the return trip),
with a live archive (leave it: it is on its way to an appliance), with an expired archive
of a device that never registered (restage that device), or with an archive whose device
no longer exists (garbage: wipe it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    STAGE = "stage"  # claim the next plan entry and stage it
    RETURN_TRIP = "return-trip"  # collect the appliance's logs (then maybe wipe and stage)
    LEAVE = "leave"  # do not touch the stick
    RESTAGE = "restage"  # same device, new archive: delete it, provision again, rewrite
    WIPE_THEN_STAGE = "wipe-then-stage"  # the archive is garbage; clear it and stage


@dataclass(frozen=True)
class StickFacts:
    """What the stick holds, as the daemon found it."""

    has_logs: bool
    archive: str | None = None  # file name of the (first) archive at the root
    archive_count: int = 0
    archive_outcome: str | None = None  # agent.archive Outcome value: ok, expiring, expired, corrupt, unverifiable
    device_status: str | None = None  # ProvisioningStatus of the archive's device; None when it does not exist
    device_known: bool = False  # False: the archive names no device, or the service does not know it


def judge(facts: StickFacts, *, returned_logs: str, expired_return: str) -> tuple[Verdict, str]:
    """The verdict and a sentence for the technician."""
    if facts.has_logs:
        if returned_logs == "leave":
            return Verdict.LEAVE, "back from the appliance; left untouched (daemon.returned_logs = leave)"
        return Verdict.RETURN_TRIP, "back from the appliance: collecting its logs"
    if facts.archive is None:
        return Verdict.STAGE, "clean stick"
    if facts.archive_count > 1:
        return Verdict.LEAVE, f"holds {facts.archive_count} archives; wipe it first (`panostage stick wipe`)"
    if not facts.device_known or facts.device_status == "DELETING":
        return Verdict.WIPE_THEN_STAGE, f"{facts.archive} belongs to no existing device: wiping it"
    if facts.archive_outcome in ("ok", "expiring"):
        return Verdict.LEAVE, f"{facts.archive} is still valid: plug the stick into its appliance"
    if facts.archive_outcome == "expired" and facts.device_status == "AWAITING_PROVISIONING":
        if expired_return == "restage":
            return Verdict.RESTAGE, f"{facts.archive} expired before its appliance read it: provisioning again"
        return Verdict.LEAVE, f"{facts.archive} expired; left untouched (daemon.expired_return = leave)"
    return (
        Verdict.STAGE,
        f"{facts.archive} is {facts.archive_outcome}; its device is {facts.device_status}: replacing it",
    )
