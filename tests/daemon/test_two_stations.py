"""Two stations, one service, end to end (root): two real `panostage watch` daemons, each with its own
state directory, plan and enrolled sticks, against one real `authority serve`; a real systemd-udevd and
eight loop devices plugged at the same moment, the plans sharing two device names.

Whatever order things happen in: no live device is deleted, no device is left without its archive on a
stick, each name is ready on one station at most, and each hand-off is logged on its own station.
"""

from __future__ import annotations

import contextlib
import os

import pytest

from tests.authority_kit import REGION, TEST_KEY, TEST_SECRET
from tests.daemon.test_daemon_e2e import Rig, archives_on, verify_image
from tests.fat_kit import loop_device
from tests.udev_kit import udevd  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (udevd, loop devices)")

PLANS = {"warehouse": ["cam-1", "cam-2", "cam-3", "cam-4"], "van": ["cam-3", "cam-4", "cam-5", "cam-6"]}


@pytest.fixture
def stations(tmp_path, udevd, fresh_authority):  # noqa: F811
    service = fresh_authority()
    shared = {
        "PANOSTAGE_BACKEND_ENDPOINT_URL": service.endpoint_url,
        "PANOSTAGE_BACKEND_REGION": REGION,
        "AWS_ACCESS_KEY_ID": TEST_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
    }
    rigs = {name: Rig(tmp_path / name, PANOSTAGE_STAGE_STATION=name, **shared) for name in PLANS}
    yield service, rigs
    for rig in rigs.values():
        if rig.proc is not None:
            rig.proc.kill()
            rig.proc.wait()


def test_two_stations_on_one_service_never_lose_a_device(stations):
    service, rigs = stations
    images = {}
    for name, rig in rigs.items():
        for device in PLANS[name]:
            rig.cli("plan", "add", "--name", device)
        images[name] = [rig.image(f"{name}-{i}") for i in range(4)]  # enrolled on this station only
    for rig in rigs.values():
        rig.start()
    with contextlib.ExitStack() as stack:
        plugged = []  # (station, devnode, image), the two stations' sticks interleaved
        for pair in zip(*(images[name] for name in rigs)):
            for name, image in zip(rigs, pair):
                plugged.append((name, stack.enter_context(loop_device(image)), image))
        final = {dev: rigs[name].wait_stick(dev, ("ready", "failed"), timeout=120) for name, dev, _ in plugged}
    ready: dict[str, tuple[str, dict]] = {}  # device id -> (station, its ready record)
    for name, rig in rigs.items():
        records = rig.log_records("handoff")
        assert {r["station"] for r in records} == {name}, "a hand-off was logged on the wrong station"
        for record in [r for r in records if r["outcome"] == "ready"]:
            ready[record["device"]["id"]] = (name, record)
        assert rig.cli("log", "verify")["ok"]
    for name, dev, image in plugged:  # the sticks are unplugged now: read them as images
        if final[dev]["state"] == "ready":  # the stick holds exactly its archive, as logged
            [archive] = archives_on(image)
            device = archive.removeprefix("certificates-omni_").removesuffix(".zip")
            report = verify_image(rigs[name], image, device)
            assert report["outcome"] == "ok"
            assert any(r["archive"]["sha256"] == report["archives"][0]["sha256"] for _, r in ready.values())
        else:
            assert archives_on(image) == [], f"a failed stick holds an archive: {final[dev]}"
    live = {
        d["DeviceId"]: d
        for d in service.client().list_devices(MaxResults=25)["Devices"]
        if d["ProvisioningStatus"] != "DELETING"
    }
    assert set(live) == set(ready), (
        "the service's devices and the two logs disagree (a device without its archive, or a live one deleted)"
    )
    names = [record["device"]["name"] for _, record in ready.values()]
    assert len(names) == len(set(names)), f"a name is ready twice: {names}"
    assert {"cam-1", "cam-2", "cam-5", "cam-6"} <= set(names) and {"cam-3", "cam-4"} <= set(names)
    failed = [r for rig in rigs.values() for r in rig.log_records("handoff") if r["outcome"] == "failed"]
    assert {r["device"]["name"] for r in failed} <= {"cam-3", "cam-4"}, failed  # only the shared names collide
    assert {r["error"]["reason"] for r in failed} <= {"device-live", "conflict"}, failed  # refused, never deleted
    deleted = {r["device"]["id"] for rig in rigs.values() for r in rig.log_records("device-deleted")}
    assert not deleted & set(ready), "a station deleted a device whose archive is on a stick"
    for rig in rigs.values():
        assert rig.stop() == 0
