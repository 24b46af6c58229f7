"""Resolve what a previous process left unfinished, before watching for sticks.

An unfinished hand-off's archive died with that process (it lived only in memory), so
its device can never be provisioned: find it again — by ID, or, when the crash came before
the ID was recorded, by name, creation time and the hand-off's tag (another station's device
of that name is never touched) — delete it, and put the plan entry back in the queue.  Every
action goes to the hand-off log.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from agent.aws.errors import error_code
from agent.aws.provisioning import CREATION_TOLERANCE, TAG_HANDOFF, devices_named, ours, tagged
from agent.clock import Clock, parse_iso, utc
from agent.handoff_log import HandoffLog
from agent.state import TERMINAL_HANDOFF, StateDB

if TYPE_CHECKING:
    from agent.aws.backend import Client, ServiceBackend


def _parse(value: str | None) -> datetime | None:
    return parse_iso(value) if value else None


def _delete(client: Client, device_id: str) -> bool:
    """Delete a device; False when it was already gone."""
    from botocore.exceptions import ClientError

    try:
        client.delete_device(DeviceId=device_id)
        return True
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return False
        raise


def _devices_of(client: Client, handoff: dict[str, Any], request: dict[str, Any] | None) -> list[str]:
    """The device(s) an interrupted hand-off may have created (``request``: its plan entry's, to tell whether it
    went out tagged with the hand-off)."""
    if handoff.get("device_id"):
        return [handoff["device_id"]]
    started = _parse(handoff.get("provision_started_at"))
    if handoff.get("state") != "provisioning" or started is None or not handoff.get("device_name"):
        return []  # ProvisionDevice was never called
    since = started - CREATION_TOLERANCE - timedelta(seconds=1)
    went = tagged(request or {"Name": handoff["device_name"]}, "-", handoff["id"])
    tag = (went.get("Tags") or {}).get(TAG_HANDOFF)  # None: the request had no room for our tags
    return [
        d["DeviceId"]
        for d in devices_named(client, handoff["device_name"])
        if d.get("ProvisioningStatus") != "DELETING"
        and d.get("CreatedTime")
        and utc(d["CreatedTime"]) >= since
        and ours(client, d, tag)
    ]  # never another station's device of that name, made meanwhile


def _request_of(state: StateDB, handoff: dict[str, Any]) -> dict[str, Any] | None:
    """The ProvisionDevice request of the hand-off's plan entry, when it still has one."""
    from agent.errors import PanostageError

    if handoff.get("plan_id") is None:
        return None
    try:
        return state.entry(handoff["plan_id"]).get("request")
    except PanostageError:
        return None


def recover(
    state: StateDB,
    backend: ServiceBackend,
    log: HandoffLog,
    clock: Clock,
    *,
    station: str,
    operator: str,
    max_attempts: int,
) -> list[dict[str, Any]]:
    """Resolve every unfinished hand-off and every claimed entry without one; return what was done."""
    done: list[dict[str, Any]] = []
    for handoff in state.unfinished_handoffs():
        client = backend.panorama()  # only when there is something to recover: an idle start makes no client
        deleted = [
            device_id
            for device_id in _devices_of(client, handoff, _request_of(state, handoff))
            if _delete(client, device_id)
        ]
        plan_status = None
        if handoff.get("plan_id") is not None:
            plan_status = state.requeue(
                handoff["plan_id"], f"interrupted while {handoff['state']}; recovered", max_attempts=max_attempts
            )
        state.update_handoff(handoff["id"], "recovered", error=f"the process ended while {handoff['state']}")
        action = {
            "handoff": handoff["id"],
            "interrupted_state": handoff["state"],
            "devices_deleted": deleted,
            "plan_status": plan_status,
        }
        log.append(
            "recovery",
            time=clock.now(),
            station=station,
            operator=operator,
            outcome="recovered",
            device={"name": handoff.get("device_name"), "id": handoff.get("device_id")},
            **action,
        )
        done.append(action)
    for entry in state.plan("claimed"):
        claimed_by = state.handoff(entry["handoff_id"]) if entry.get("handoff_id") else None
        if claimed_by is not None and claimed_by["state"] not in TERMINAL_HANDOFF:
            continue  # a live hand-off of another process
        plan_status = state.requeue(
            entry["id"], "claimed by a process that ended; recovered", max_attempts=max_attempts
        )
        action = {"plan_entry": entry["name"], "plan_status": plan_status, "devices_deleted": []}
        log.append(
            "recovery",
            time=clock.now(),
            station=station,
            operator=operator,
            outcome="recovered",
            device={"name": entry["name"]},
            **action,
        )
        done.append(action)
    return done
