"""ProvisionDevice without duplicates, and the device look-ups around it.

ProvisionDevice is not idempotent and its archive exists only in the response:
a lost response means a device exists whose certificate nobody holds.  So the
call goes out with botocore's retries off, and before any retry we look for
devices of that name created since the first attempt began, delete them (their
archives are gone for good), and only then try again.  A retry never leaves two
devices, and never leaves a device without its archive.

An attempt that timed out reading may still be making its device when we look: the look
is repeated, for up to ``backend.read_timeout`` more, until that device has shown up.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from agent import interrupts
from agent.aws.errors import error_code, service_time
from agent.aws.paging import pages
from agent.clock import Clock, utc
from agent.errors import ExitCode, PanostageError

if TYPE_CHECKING:
    from agent.aws.backend import Client, ServiceBackend

RETRYABLE_CODES = {"InternalServerException", "ThrottlingException", "TooManyRequestsException", "ServiceUnavailable"}
#: How far before the first attempt a device may be dated and still count as ours
#: (covers the difference between our clock and the service's).
CREATION_TOLERANCE = timedelta(seconds=30)

#: ``on_event(kind, **data)``: told what happens on the way ("provision-attempt-failed", "orphan-deleted" ...);
#: the CLI narrates these; the stager records a deleted orphan and passes every event on to its own hook.
Event = Callable[..., None]


@dataclass
class Provisioned:
    """A device just created, with its archive (kept in memory only)."""

    device_id: str
    arn: str
    status: str
    iot_thing_name: str | None
    archive: bytes = field(repr=False)
    attempts: int = 1
    orphans_deleted: list[str] = field(default_factory=list)
    request_started: datetime | None = None
    #: The service's clock when it answered (HTTP Date), to tell a skewed workstation clock.
    server_time: datetime | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "DeviceId": self.device_id,
            "Arn": self.arn,
            "Status": self.status,
            "IotThingName": self.iot_thing_name,
            "attempts": self.attempts,
            "orphans_deleted": self.orphans_deleted,
        }


def devices_named(client: Client, name: str) -> list[dict[str, Any]]:
    """Every device whose name is exactly ``name`` (NameFilter is a prefix filter)."""
    return devices_named_at(client, name)[0]


def devices_named_at(client: Client, name: str) -> tuple[list[dict[str, Any]], datetime | None]:
    """:func:`devices_named`, and the service's clock when it answered (its HTTP ``Date``), to judge their age
    on the service's time rather than this workstation's."""
    times: list[datetime | None] = []

    def call(**params: Any) -> dict[str, Any]:
        response: dict[str, Any] = client.list_devices(**params)
        times.append(service_time(response))
        return response

    found = [d for d in pages(call, "Devices", NameFilter=name, MaxResults=25) if d.get("Name") == name]
    return found, next((t for t in reversed(times) if t is not None), None)


#: Tags panostage puts on every device it provisions, so another station can say whose it is.
TAG_STATION = "panostage:station"
TAG_HANDOFF = "panostage:handoff"
MAX_TAGS = 50


def describe_or_none(client: Client, device_id: str | None) -> dict[str, Any] | None:
    """DescribeDevice, or None when there is no ID or the service knows no such device (any other error raises)."""
    from botocore.exceptions import ClientError

    if not device_id:
        return None
    try:
        described: dict[str, Any] = client.describe_device(DeviceId=device_id)
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise
    return described


def tags_of(client: Client, device: dict[str, Any]) -> dict[str, str]:
    """A device's tags: from the listing, else from DescribeDevice (a device gone meanwhile has none)."""
    tags = device.get("Tags")
    if tags is None:
        tags = (describe_or_none(client, device["DeviceId"]) or {}).get("Tags")
    return tags or {}


def ours(client: Client, device: dict[str, Any], handoff_id: str | None) -> bool:
    """Did the hand-off ``handoff_id`` make ``device``?  Without a hand-off ID (an untagged request) nothing
    tells: a device that carries another hand-off's tag is still not ours."""
    tag = tags_of(client, device).get(TAG_HANDOFF)
    return tag == handoff_id if handoff_id else tag is None


def tagged(request: dict[str, Any], station: str, handoff_id: str) -> dict[str, Any]:
    """``request`` with the provisioning station and hand-off ID as tags (when the 50 tags allow it: with more
    than 48 of its own the request goes untagged, and :func:`ours` then knows its devices by having no tag)."""
    tags = {k: v for k, v in (request.get("Tags") or {}).items() if k not in (TAG_STATION, TAG_HANDOFF)}
    if len(tags) + 2 > MAX_TAGS:
        return request
    return {**request, "Tags": {**tags, TAG_STATION: station[:256], TAG_HANDOFF: handoff_id}}


def resolve_device_id(client: Client, ref: str) -> str:
    """Accept a device ID or an exact, unambiguous device name."""
    from botocore.exceptions import ClientError

    try:
        client.describe_device(DeviceId=ref)
        return ref
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
    matches = [d for d in devices_named(client, ref) if d.get("ProvisioningStatus") != "DELETING"]
    if len(matches) == 1:
        device_id: str = matches[0]["DeviceId"]
        return device_id
    if not matches:
        raise PanostageError(
            f"no device with ID or name {ref!r}",
            exit_code=ExitCode.NOT_FOUND,
            reason="not-found",
            hint="`panostage device list` shows the devices",
        )
    raise PanostageError(
        f"{len(matches)} devices are named {ref!r}: " + ", ".join(d["DeviceId"] for d in matches),
        exit_code=ExitCode.CONFLICT,
        reason="ambiguous-name",
        hint="give the device ID instead",
    )


def clock_offset(provisioned: Provisioned, received_at: datetime) -> float | None:
    """Seconds our clock is ahead of the service's (negative: behind), to within the Date header's second."""
    if provisioned.server_time is None:
        return None
    return (received_at - provisioned.server_time).total_seconds()


def _retryable(exc: BaseException) -> bool:
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in RETRYABLE_CODES or status >= 500 or status == 429
    # ConnectionError: never connected / timed out connecting; HTTPClientError: closed or timed out mid-answer
    return isinstance(exc, (bx.ConnectionError, bx.HTTPClientError))


def _never_sent(exc: BaseException) -> bool:
    """True when the request cannot have reached the service (nothing to clean up)."""
    from botocore import exceptions as bx

    return isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)) and not isinstance(
        exc, bx.ReadTimeoutError
    )


def provision_device(
    backend: ServiceBackend,
    request: dict[str, Any],
    *,
    clock: Clock,
    on_event: Event = lambda kind, **data: None,
    max_attempts: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Provisioned:
    """Call ProvisionDevice at most ``max_attempts`` times, never leaving two devices."""
    from botocore.exceptions import ClientError

    attempts_allowed = max_attempts or backend.settings.backend.max_attempts
    client = backend.panorama(max_attempts=1)
    lister = backend.panorama()
    name = request["Name"]
    handoff = (request.get("Tags") or {}).get(TAG_HANDOFF)  # what tells our devices from another station's
    first_started = clock.now()
    orphans: list[str] = []
    last_exc: BaseException | None = None
    in_flight = 0  # attempts that timed out reading: the service may still be making their device
    grace = backend.settings.backend.read_timeout  # as long again for such a device to show up
    for attempt in range(1, attempts_allowed + 1):
        started = clock.now()
        try:
            response = client.provision_device(**request)
        except ClientError as exc:
            conflict_after_retry = attempt > 1 and error_code(exc) == "ConflictException"
            if not (_retryable(exc) or conflict_after_retry):
                raise
            last_exc = exc
        except Exception as exc:  # classified just below
            if not _retryable(exc):
                raise
            last_exc = exc
        else:
            return Provisioned(
                device_id=response["DeviceId"],
                arn=response["Arn"],
                status=response["Status"],
                iot_thing_name=response.get("IotThingName"),
                archive=response["Certificates"],
                attempts=attempt,
                orphans_deleted=orphans,
                request_started=started,
                server_time=service_time(response),
            )
        on_event("provision-attempt-failed", attempt=attempt, error=str(last_exc))
        if _still_in_flight(last_exc):
            in_flight += 1
        if attempt == attempts_allowed or interrupts.pending():
            break
        if not _never_sent(last_exc):
            in_flight = _clear_orphans(lister, name, first_started, on_event, orphans, in_flight, grace, sleep, handoff)
        sleep(min(5.0, 0.2 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
    assert last_exc is not None
    if not _never_sent(last_exc):
        _clear_orphans(lister, name, first_started, on_event, orphans, in_flight, grace, sleep, handoff)
    raise last_exc


def _still_in_flight(exc: BaseException) -> bool:
    """The request reached the service and we stopped waiting for it: it may still make a device."""
    from botocore import exceptions as bx

    return isinstance(exc, bx.ReadTimeoutError)


def _clear_orphans(
    client: Client,
    name: str,
    since: datetime,
    on_event: Event,
    orphans: list[str],
    in_flight: int,
    grace: float,
    sleep: Callable[[float], None],
    handoff: str | None = None,
) -> int:
    """Delete the devices lost answers made; while requests we stopped waiting for (read timeouts)
    have not shown their device yet, look again for up to ``grace`` seconds.  Returns how many may
    still show up (their devices are the next `stage` of that name's to delete: never written)."""
    deadline = time.monotonic() + (grace if in_flight else 0.0)
    while True:
        found = _delete_orphans(client, name, since, on_event, handoff)
        orphans.extend(found)
        in_flight = max(0, in_flight - len(found))
        if not in_flight or time.monotonic() >= deadline:
            return in_flight
        sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def _delete_orphans(
    client: Client, name: str, since: datetime, on_event: Event, handoff: str | None = None
) -> list[str]:
    """Delete the devices an attempt of ours made whose answer was lost: named ``name``, created since ``since``
    and tagged with our ``handoff`` (another station's device of that name, made meanwhile, is never touched)."""
    try:
        found = devices_named(client, name)
    except Exception as exc:
        raise PanostageError(
            f"ProvisionDevice for {name!r} may have created a device, and checking for it failed: {exc}",
            exit_code=ExitCode.SERVICE,
            reason="provision-uncertain",
            hint=f"run `panostage device list --name {name}` and delete any device created just now",
        ) from exc
    deleted = []
    for device in found:
        created = device.get("CreatedTime")
        if (
            device.get("ProvisioningStatus") == "DELETING"
            or created is None
            or utc(created) < since - CREATION_TOLERANCE
        ):
            continue
        if not ours(client, device, handoff):
            continue
        client.delete_device(DeviceId=device["DeviceId"])
        deleted.append(device["DeviceId"])
        on_event("orphan-deleted", device_id=device["DeviceId"], name=name, created=created)
    return deleted
