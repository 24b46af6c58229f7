"""Free a device name before it is provisioned again: delete the devices of that name the service says
are dead, wait for one about to die, refuse the rest (the rules: :mod:`agent.staging.stale`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.aws.provisioning import Event, devices_named_at, tags_of
from agent.clock import Clock
from agent.errors import ExitCode, PanostageError
from agent.staging import stale
from agent.staging.handoff import Checkpoint

if TYPE_CHECKING:
    from agent.aws.backend import Client

#: ``delete(device_id, reason)``: delete one device of the name, and record why.
Delete = Callable[[str, str], None]


def free_name(
    client: Client,
    name: str,
    rules: stale.Rules,
    *,
    clock: Clock,
    delete: Delete,
    on_event: Event,
    checkpoint: Checkpoint,
    sleep: Callable[[float], None],
) -> None:
    """Look, delete the dead, wait for the dying, until no device of ``name`` is left but the refused (raised).

    A device's age is judged on the service's clock (its HTTP ``Date``), else on ``clock``.  A wait is told
    (``on_event("waiting", ...)``) and passes through ``checkpoint("waiting", ...)`` every second, which may
    abandon it (the daemon's, when the stick leaves or the daemon stops)."""
    waited = 0.0
    while True:
        found, server_time = devices_named_at(client, name)
        now = server_time or clock.now()
        wait = 0.0
        why = ""
        for device in [d for d in found if d.get("ProvisioningStatus") != "DELETING"]:
            decision = stale.decide(device, now, rules, tags_of=functools.partial(tags_of, client, device))
            if decision.action == "delete":
                delete(device["DeviceId"], decision.reason)
            else:
                wait = max(wait, decision.seconds)
                why = decision.reason
        if not wait:
            return
        if waited > rules.margin_seconds + 10:  # a service whose clock does not move: give up, do not spin
            raise PanostageError(
                f"waited {waited:.0f} s for {why}, and the service still says it lives",
                exit_code=ExitCode.CONFLICT,
                reason="device-live",
                hint="check the service's clock; pass --replace-device to go on regardless",
            )
        _wait(name, why, wait, clock=clock, on_event=on_event, checkpoint=checkpoint, sleep=sleep)
        waited += wait


def _wait(
    name: str,
    why: str,
    seconds: float,
    *,
    clock: Clock,
    on_event: Event,
    checkpoint: Checkpoint,
    sleep: Callable[[float], None],
) -> None:
    """Wait ``seconds`` (plus a second for the Date header's resolution), telling the person."""
    seconds += 1.0
    on_event("waiting", name=name, reason=why, seconds=seconds)
    deadline = clock.monotonic() + seconds
    while (left := deadline - clock.monotonic()) > 0:
        checkpoint("waiting", name=name, seconds_left=left)
        sleep(min(1.0, left))
