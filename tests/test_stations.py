"""Several stations, one service: which existing device may go is the service's call, never one station's log.

Each station is the real CLI with a state directory of its own; they share one real `authority serve`
process.  Certificates live 120 s here, the margin is 20 s and the skew 5 s, so a device is dead 125 s
after the service made it.  A device made "a while ago" is made with the authority's clock set back for
that one call (its CreatedTime and HTTP Date follow that clock), as another station would have made it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.aws.provisioning import TAG_HANDOFF, TAG_STATION
from agent.errors import ExitCode
from tests.authority_kit import REGION, TEST_KEY, TEST_SECRET
from tests.fat_kit import make_image
from tests.station import Station, files_on

LIFETIME, MARGIN, SKEW = 120, 20, 5


@pytest.fixture
def service(fresh_authority):
    return fresh_authority(env={"PANOSTAGE_AUTHORITY_CERT_VALIDITY_SECONDS": str(LIFETIME)})


def station(service, home: Path, name: str) -> Station:
    return Station(
        home / name,
        PANOSTAGE_BACKEND_ENDPOINT_URL=service.endpoint_url,
        PANOSTAGE_BACKEND_REGION=REGION,
        AWS_ACCESS_KEY_ID=TEST_KEY,
        AWS_SECRET_ACCESS_KEY=TEST_SECRET,
        PANOSTAGE_STAGE_STATION=name,
        PANOSTAGE_STAGE_CERTIFICATE_SECONDS=str(LIFETIME),
        PANOSTAGE_STAGE_MARGIN_SECONDS=str(MARGIN),
        PANOSTAGE_STAGE_SKEW_SECONDS=str(SKEW),
    )


def made_ago(service, name: str, seconds: float, station: str | None = "warehouse") -> str:
    """A device of ``name`` the service made ``seconds`` ago (tagged by ``station`` as panostage tags it)."""
    tags = {TAG_STATION: station, TAG_HANDOFF: "h-" + name} if station else {}
    service.admin.set_clock_offset(-seconds)
    try:
        return service.client().provision_device(Name=name, Tags=tags)["DeviceId"]
    finally:
        service.admin.set_clock_offset(0)


def endpoint_backend(service, tmp_path: Path, monkeypatch):
    """This process's own backend on the shared service (for the tests that need the Stager's seams)."""
    from agent.aws.backend import open_backend
    from agent.config import load

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    return open_backend(
        load(
            env={
                "HOME": str(tmp_path),
                "PANOSTAGE_SYSTEM_CONFIG": str(tmp_path / "none"),
                "PANOSTAGE_BACKEND_ENDPOINT_URL": service.endpoint_url,
                "PANOSTAGE_BACKEND_REGION": REGION,
            }
        ).settings
    )


def error_of(result) -> dict:
    return json.loads(result.stderr.strip().splitlines()[-1])["error"]


def test_another_stations_live_device_is_left_alone_and_named(service, tmp_path):
    a, b = station(service, tmp_path, "warehouse"), station(service, tmp_path, "van")
    stick_a, stick_b = make_image(tmp_path / "a.img", 16), make_image(tmp_path / "b.img", 16)
    staged = a.json("stage", "--name", "cam-shared", "--to", str(stick_a))
    described = service.client().describe_device(DeviceId=staged["device"]["id"])
    assert described["Tags"][TAG_STATION] == "warehouse" and described["Tags"][TAG_HANDOFF]
    refused = b.run("stage", "--name", "cam-shared", "--to", str(stick_b), "--json")
    assert refused.returncode == ExitCode.CONFLICT, refused.stderr
    error = error_of(refused)
    assert error["reason"] == "device-live" and "by station warehouse" in error["message"]
    assert error["details"]["station"] == "warehouse" and 0 < error["details"]["seconds_left"] <= LIFETIME + SKEW
    assert [d["DeviceId"] for d in b.devices()] == [staged["device"]["id"]]  # A's device is alive
    assert files_on(stick_b) == []
    assert [r["outcome"] for r in b.log() if r["kind"] == "handoff"] == ["failed"]
    assert not [r for r in b.log() if r["kind"] == "device-deleted"]


def test_a_device_dead_on_the_services_clock_is_deleted_by_any_station(service, tmp_path):
    old = made_ago(service, "cam-old", LIFETIME + SKEW + 2)
    again = station(service, tmp_path, "van").json(
        "stage", "--name", "cam-old", "--to", str(make_image(tmp_path / "b.img", 16))
    )
    [deleted] = again["devices_deleted"]
    assert deleted["id"] == old and "expired on the service's clock" in deleted["reason"]
    assert [d["DeviceId"] for d in station(service, tmp_path, "van").devices()] == [again["device"]["id"]]


def test_restaging_just_after_expiry_waits_instead_of_failing(service, tmp_path):
    old = made_ago(service, "cam-late", LIFETIME + SKEW - 3)  # expired for the appliance, still inside the skew
    started = time.monotonic()
    result = station(service, tmp_path, "warehouse").run(
        "stage", "--name", "cam-late", "--to", str(make_image(tmp_path / "a.img", 16)), "--json"
    )
    waited = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "waiting" in result.stderr and "to expire on the service's clock" in result.stderr
    assert waited >= 2.0  # it did wait for the device to die, then went on
    assert [d["id"] for d in json.loads(result.stdout)["devices_deleted"]] == [old]


def test_a_long_wait_is_still_refused_with_the_time(service, tmp_path):
    made_ago(service, "cam-wait", LIFETIME + SKEW - MARGIN - 30)  # 30 s more than the margin to go
    refused = station(service, tmp_path, "warehouse").run(
        "stage", "--name", "cam-wait", "--to", str(make_image(tmp_path / "a.img", 16)), "--json"
    )
    assert refused.returncode == ExitCode.CONFLICT
    assert MARGIN < error_of(refused)["details"]["seconds_left"] <= MARGIN + 31


def test_a_device_made_without_panostage_is_judged_the_same(service, tmp_path):
    """Made by the console or the aws cli (no tags): refused while young, deleted once dead; --replace-device forces."""
    a = station(service, tmp_path, "warehouse")
    made = {"DeviceId": made_ago(service, "cam-console", 0, station=None)}
    refused = a.run("stage", "--name", "cam-console", "--to", str(make_image(tmp_path / "a.img", 16)), "--json")
    assert refused.returncode == ExitCode.CONFLICT and "not by panostage" in error_of(refused)["message"]
    forced = a.json(
        "stage", "--name", "cam-console", "--to", str(make_image(tmp_path / "b.img", 16)), "--replace-device"
    )
    assert [d["id"] for d in forced["devices_deleted"]] == [made["DeviceId"]]


def test_a_wait_ends_when_the_stick_leaves(service, tmp_path, monkeypatch):
    """In the daemon a pulled stick cancels the worker: the wait stops at its next checkpoint, nothing is made."""
    from agent.clock import SystemClock
    from agent.daemon.worker import Abandoned
    from agent.handoff_log import HandoffLog
    from agent.staging.stage import StageOptions, Stager
    from agent.stick import open_target

    backend = endpoint_backend(service, tmp_path, monkeypatch)
    old = made_ago(service, "cam-gone", LIFETIME + SKEW - 10)
    seen: list[str] = []

    def checkpoint(state: str, **data) -> None:
        seen.append(state)
        if state == "waiting" and len(seen) >= 2:
            raise Abandoned("abandoned while waiting: the stick was removed")

    image = make_image(tmp_path / "a.img", 16)
    stager = Stager(
        backend,
        clock=SystemClock(),
        log=HandoffLog(tmp_path / "state"),
        checkpoint=checkpoint,
        options=StageOptions(margin_seconds=MARGIN, skew_seconds=SKEW, certificate_seconds=LIFETIME),
        station="warehouse",
        operator="tester",
    )
    try:
        with open_target(image) as target, pytest.raises(Abandoned):
            stager.stage({"Name": "cam-gone"}, target)
    finally:
        backend.close()
    assert "provisioning" not in seen
    live = [d["DeviceId"] for d in service.client().list_devices()["Devices"] if d["ProvisioningStatus"] != "DELETING"]
    assert live == [old] and files_on(image) == []


def test_a_lost_answer_deletes_only_the_device_its_own_attempt_made(fresh_authority, tmp_path, monkeypatch):
    """ProvisionDevice's answer is lost (the device was made); while we look for it, another station makes a device
    of the same name.  Only ours - by its hand-off tag - is deleted before the retry."""
    from agent.aws.provisioning import provision_device, tagged
    from agent.clock import SystemClock

    service = fresh_authority(env={"PANOSTAGE_AUTHORITY_UNIQUE_NAMES": "false"})
    service.admin.set_fault("ProvisionDevice", after_commit=True, count=1, error=500)
    backend = endpoint_backend(service, tmp_path, monkeypatch)
    theirs: list[str] = []

    def another_station_meanwhile(kind: str, **_data) -> None:
        if kind == "provision-attempt-failed" and not theirs:
            request = tagged({"Name": "cam-race"}, "van", "their-handoff")
            theirs.append(service.client().provision_device(**request)["DeviceId"])

    try:
        made = provision_device(
            backend,
            tagged({"Name": "cam-race"}, "warehouse", "our-handoff"),
            clock=SystemClock(),
            on_event=another_station_meanwhile,
            sleep=lambda _s: None,
        )
    finally:
        backend.close()
    assert made.attempts == 2 and len(made.orphans_deleted) == 1 and theirs[0] not in made.orphans_deleted
    live = {d["DeviceId"] for d in service.client().list_devices()["Devices"] if d["ProvisioningStatus"] != "DELETING"}
    assert live == {made.device_id, theirs[0]}
