"""Which existing device of a name may be deleted before the name is provisioned again.

The service's view decides, never one station's log: several stations share one service, and
a device one station made may be on its stick right now.  A device still AWAITING_PROVISIONING
lives as long as its certificate could - its ``CreatedTime`` plus the certificate's lifetime plus
the tolerated clock skew, all on the service's clock (its HTTP ``Date``).  Past that it is dead
for everyone and is deleted; a little before (no more than the safety margin) the stage waits for
it; younger, it is refused and named - with the station and hand-off that made it when its tags
say (:data:`~agent.aws.provisioning.TAG_STATION`).  Any other status is a device in use.
``--replace-device`` deletes whatever is there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent.aws.provisioning import TAG_HANDOFF, TAG_STATION
from agent.clock import iso, utc
from agent.errors import ExitCode, PanostageError


@dataclass(frozen=True)
class Rules:
    certificate_seconds: float  # how long the service's certificates live
    skew_seconds: float  # how far an appliance's clock may be off
    margin_seconds: float  # the longest wait worth making instead of refusing
    replace_device: bool = False


@dataclass(frozen=True)
class Decision:
    """``delete`` now, or ``wait`` ``seconds`` and look again."""

    action: str  # "delete" | "wait"
    reason: str
    seconds: float = 0.0


def decide(
    device: dict[str, Any], service_now: datetime, rules: Rules, tags_of: Callable[[], dict[str, str]] | None = None
) -> Decision:
    """What to do with one existing device of the name (raises a CONFLICT when it must stay).

    ``tags_of`` fetches the device's tags when the listing left them out; asked only to name who made a
    device that is refused.
    """
    name, device_id, status = device.get("Name"), device["DeviceId"], device.get("ProvisioningStatus")
    if status != "AWAITING_PROVISIONING":
        if rules.replace_device:
            return Decision("delete", f"--replace-device (was {status})")
        raise PanostageError(
            f"device {name} already exists ({device_id}, {status})",
            exit_code=ExitCode.CONFLICT,
            reason="device-exists",
            hint="pick another name, or pass --replace-device to delete it and provision a new one",
            details={"device_id": device_id, "status": status},
        )
    if rules.replace_device:
        return Decision("delete", "--replace-device")
    if not isinstance(device.get("CreatedTime"), datetime):
        raise PanostageError(
            f"device {name} ({device_id}) awaits provisioning and the service does not say when it was made: its "
            "archive may be on a stick",
            exit_code=ExitCode.CONFLICT,
            reason="device-live",
            hint="plug that stick into its appliance, or pass --replace-device",
            details={"device_id": device_id},
        )
    created = utc(device["CreatedTime"])
    dead_at = created + timedelta(seconds=rules.certificate_seconds + rules.skew_seconds)
    left = (dead_at - service_now).total_seconds()
    if left <= 0:
        return Decision("delete", f"its archive expired on the service's clock (made {iso(created)})")
    if left <= rules.margin_seconds:
        return Decision("wait", f"{name}'s old archive ({device_id}) to expire on the service's clock", left)
    tags = tags_of() if tags_of else device.get("Tags") or {}
    raise PanostageError(
        f"device {name} ({device_id}) was made {(service_now - created).total_seconds():.0f} s ago{made_by(tags)}: its "
        f"archive may be live on a stick until {iso(dead_at)} ({left:.0f} s from now, on the service's clock)",
        exit_code=ExitCode.CONFLICT,
        reason="device-live",
        hint="plug that stick into its appliance, stage again after it expires, or pass --replace-device "
        "(that archive then becomes useless)",
        details={
            "device_id": device_id,
            "expires": iso(dead_at),
            "seconds_left": round(left),
            "station": tags.get(TAG_STATION),
        },
    )


def made_by(tags: dict[str, str]) -> str:
    """`` by station S (hand-off H)`` from a device's tags; what is known when they are missing."""
    station = tags.get(TAG_STATION)
    if not station:
        return " (not by panostage, or by a station that does not say)"
    handoff = tags.get(TAG_HANDOFF)
    return f" by station {station}" + (f" (hand-off {handoff})" if handoff else "")
