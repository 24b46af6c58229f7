"""The stale-device rule as a plain function: the service's clock and the device's age decide."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.aws.provisioning import TAG_HANDOFF, TAG_STATION
from agent.errors import ExitCode, PanostageError
from agent.staging.stale import Rules, decide

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
RULES = Rules(certificate_seconds=300, skew_seconds=30, margin_seconds=60)


def device(age: float | None, status: str = "AWAITING_PROVISIONING", **tags: str) -> dict:
    made = {"Name": "cam-1", "DeviceId": "device-1", "ProvisioningStatus": status, "Tags": dict(tags)}
    if age is not None:
        made["CreatedTime"] = NOW - timedelta(seconds=age)
    return made


@pytest.mark.parametrize(
    ("age", "action", "seconds"),
    [
        (331, "delete", 0.0),  # past lifetime + skew: dead for everyone
        (330, "delete", 0.0),  # exactly at the end
        (329, "wait", 1.0),
        (270, "wait", 60.0),  # exactly the margin away: waited for
    ],
)
def test_dead_or_about_to_die(age, action, seconds):
    decision = decide(device(age), NOW, RULES)
    assert (decision.action, decision.seconds) == (action, seconds)
    if action == "delete":
        assert "expired on the service's clock" in decision.reason


def test_younger_is_refused_naming_who_made_it_and_when_it_expires():
    with pytest.raises(PanostageError) as info:
        decide(device(269, **{TAG_STATION: "van", TAG_HANDOFF: "h-7"}), NOW, RULES)
    error = info.value
    assert error.exit_code == ExitCode.CONFLICT and error.reason == "device-live"
    assert "by station van (hand-off h-7)" in error.message and error.details["seconds_left"] == 61
    assert error.details["expires"] == "2026-11-30T12:01:01.000Z"


@pytest.mark.parametrize("status", ["PENDING", "SUCCEEDED", "FAILED", "ERROR"])
def test_a_device_in_use_is_refused_unless_replace_device(status):
    with pytest.raises(PanostageError) as info:
        decide(device(10_000, status), NOW, RULES)
    assert info.value.reason == "device-exists" and status in info.value.message
    forced = decide(device(10_000, status), NOW, Rules(300, 30, 60, replace_device=True))
    assert forced.action == "delete" and status in forced.reason


def test_a_device_without_a_creation_time_is_treated_as_live():
    with pytest.raises(PanostageError) as info:
        decide(device(None), NOW, RULES)
    assert info.value.reason == "device-live" and "does not say when it was made" in info.value.message
