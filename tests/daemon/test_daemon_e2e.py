"""The daemon end to end (root) — crash, pull and SIGTERM cases live in tests/faults/test_daemon_faults.py: a real systemd-udevd, loop devices carrying FAT images, the real
`panostage watch` process with its embedded authority, sd_notify over a real socket.

Only sticks whose FS UUID this test enrolled are admitted, so loop devices of other tests
running at the same time are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fat_kit import fsck, loop_device, make_image, mtools
from tests.helpers import REPO, Notifications, clean_env, run_cli, wait_until
from tests.udev_kit import udevd  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (udevd, loop devices)")
_volids = iter(range(0x5A000000, 0x5AFFFFFF, 7919))


class Rig:
    """A staging laptop: state dir, the daemon process, the CLI, FAT images."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.env = {
            "PANOSTAGE_PATHS_STATE_DIR": str(self.state),
            "PANOSTAGE_PATHS_RUNTIME_DIR": str(tmp / "run"),
            "PANOSTAGE_STICKS_ALLOW_NON_USB": "true",
            "PANOSTAGE_DAEMON_POLL_SECONDS": "0.2",
            "PANOSTAGE_AUTHORITY_JOB_STEP_SECONDS": "0.1",
            "PANOSTAGE_DAEMON_SHUTDOWN_GRACE_SECONDS": "20",
            **env,
        }
        self.proc: subprocess.Popen | None = None
        self.notify: Notifications | None = None
        self.starts = 0

    def cli(self, *args: str, expect: int = 0):
        result = run_cli(*args, "--json", env=self.env, home=self.tmp)
        assert result.returncode == expect, f"{args}: exit {result.returncode}\n{result.stderr}"
        return json.loads(result.stdout) if result.stdout.strip() else None

    def image(self, name: str, bits: int = 16) -> Path:
        volid = f"{next(_volids):08X}"
        path = make_image(self.tmp / f"{name}.img", bits, volid=volid, label="PANOSTICK")
        self.cli("stick", "enroll", "--identity", f"fs:{volid[:4]}-{volid[4:]}")
        return path

    def start(self, **env: str) -> None:
        self.starts += 1
        self.notify = Notifications(self.tmp / f"notify{self.starts}.sock")
        full = clean_env(self.tmp, {**self.env, "NOTIFY_SOCKET": str(self.notify.path), **env})
        self.log = open(self.tmp / f"daemon{self.starts}.log", "wb")  # noqa: SIM115 - held while the daemon runs, closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "watch"], cwd=REPO, env=full, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_until(
            lambda: self.notify.seen("READY=1") or self.proc.poll() is not None,
            timeout=60,
            what="the daemon to be READY",
        )
        assert self.proc.poll() is None, self.daemon_log()

    def daemon_log(self) -> str:
        return (self.tmp / f"daemon{self.starts}.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.notify.close()
        self.log.close()
        self.proc = None
        return code

    def sticks(self) -> dict[str, dict]:
        return {s["devnode"]: s for s in self.cli("status")["sticks"]}

    def wait_stick(self, devnode: str, states: tuple[str, ...], timeout: float = 60) -> dict:
        def check():
            stick = self.sticks().get(devnode)
            return stick if stick and stick["state"] in states else None

        try:
            return wait_until(check, timeout=timeout, interval=0.1, what=f"{devnode} to be {states}")
        except AssertionError:
            raise AssertionError(f"{self.sticks().get(devnode)}\n--- daemon log ---\n{self.daemon_log()}") from None

    def live_devices(self) -> list[dict]:
        return [d for d in self.cli("device", "list") if d["ProvisioningStatus"] != "DELETING"]

    def log_records(self, kind: str | None = None) -> list[dict]:
        return [r for r in self.cli("log", "show") if kind is None or r["kind"] == kind]


@pytest.fixture
def rig(tmp_path, udevd) -> Iterator[Rig]:  # noqa: F811
    rig = Rig(tmp_path)
    yield rig
    if rig.proc is not None:
        rig.proc.kill()
        rig.proc.wait()


def archives_on(image: Path) -> list[str]:
    out = mtools("mdir", "-b", "-i", str(image), "::/").stdout.decode()
    return sorted(line.rsplit("/", 1)[-1] for line in out.split() if line)


def verify_image(rig: Rig, image: Path, device: str) -> dict:
    return rig.cli("verify", str(image), "--device", device, "--margin", "0")


def test_plug_in_a_stick_and_get_it_back_provisioned(rig, udevd):  # noqa: F811
    rig.cli("plan", "add", "--name", "e2e-cam-1", "--eth0", "dhcp", "--ntp", "pool.ntp.org")
    image = rig.image("stick1")
    rig.start()
    with loop_device(image) as dev:
        stick = rig.wait_stick(dev, ("ready",))
        assert stick["device"] == "e2e-cam-1" and stick["seconds_left"] > 200
        wait_until(
            lambda: any("1 ready" in line for line in rig.notify.seen("STATUS=")),
            timeout=10,
            what="STATUS= to report the ready stick",
        )
    assert archives_on(image) == ["certificates-omni_e2e-cam-1.zip"]
    fsck(image)
    assert verify_image(rig, image, "e2e-cam-1")["outcome"] == "ok"
    [record] = rig.log_records("handoff")
    assert record["outcome"] == "ready" and record["stick"]["identity"].startswith("fs:")
    assert [d["Name"] for d in rig.live_devices()] == ["e2e-cam-1"]
    assert rig.cli("plan", "list")[0]["status"] == "staged"
    assert rig.stop() == 0
    assert rig.notify.seen("STOPPING=1")


def test_sticks_present_before_start_are_handled_at_coldplug(rig, udevd):  # noqa: F811
    rig.cli("plan", "add", "--name", "e2e-cold-1")
    image = rig.image("cold")
    with loop_device(image) as dev:
        udevd.settle()
        rig.start()
        rig.wait_stick(dev, ("ready",))
    assert archives_on(image) == ["certificates-omni_e2e-cold-1.zip"]


@pytest.mark.parametrize("count", [2, 8])
def test_several_sticks_at_once_never_share_an_entry(rig, udevd, count):  # noqa: F811
    rig.cli("plan", "import", str(_plan_csv(rig.tmp, count)))
    images = [rig.image(f"multi{n}") for n in range(count)]
    rig.start()
    with contextlib.ExitStack() as stack:
        devs = [stack.enter_context(loop_device(image)) for image in images]
        for dev in devs:
            rig.wait_stick(dev, ("ready",), timeout=120)
        names = sorted(rig.sticks()[dev]["device"] for dev in devs)
    assert names == sorted(f"e2e-multi-{n}" for n in range(count))  # each entry exactly once
    found = sorted(name for image in images for name in archives_on(image))
    assert found == sorted(f"certificates-omni_e2e-multi-{n}.zip" for n in range(count))
    assert len(rig.live_devices()) == count
    assert {e["status"] for e in rig.cli("plan", "list")} == {"staged"}


def _plan_csv(tmp: Path, count: int) -> Path:
    path = tmp / "plan.csv"
    path.write_text("name,eth0,ntp\n" + "".join(f"e2e-multi-{n},dhcp,pool.ntp.org\n" for n in range(count)))
    return path


def test_empty_plan_leaves_the_stick_untouched(rig, udevd):  # noqa: F811
    image = rig.image("empty")
    rig.start()
    with loop_device(image) as dev:
        stick = rig.wait_stick(dev, ("idle",))
        assert "plan is empty" in stick["note"]
    assert archives_on(image) == []
    assert rig.live_devices() == []


def test_a_stick_that_is_not_enrolled_is_refused(rig, udevd):  # noqa: F811
    rig.cli("plan", "add", "--name", "e2e-refused")
    image = make_image(rig.tmp / "stranger.img", 16, volid=f"{next(_volids):08X}")
    rig.start()
    with loop_device(image) as dev:
        stick = rig.wait_stick(dev, ("rejected",))
        assert "not enrolled" in stick["note"]
    assert archives_on(image) == []
    assert rig.cli("plan", "list")[0]["status"] == "pending"


def test_watchdog_is_pinged_from_the_loop(rig, udevd):  # noqa: F811
    rig.start(WATCHDOG_USEC="400000")  # 0.4 s: the loop must ping at least every 0.1 s
    wait_until(lambda: len(rig.notify.seen("WATCHDOG=1")) >= 5, timeout=10, what="watchdog pings")
    assert rig.stop() == 0


def test_a_second_daemon_on_the_same_state_is_refused(rig, udevd):  # noqa: F811
    rig.start()
    result = run_cli("watch", env=rig.env, home=rig.tmp, timeout=60)
    assert result.returncode == 6 and "already runs" in result.stderr
    assert rig.cli("status")["daemon"]["running"] is True
    rig.stop()
    assert rig.cli("status")["daemon"]["running"] is False


def test_return_trip_then_next_entry_and_post_provision_actions(rig, udevd):  # noqa: F811
    rig.cli("plan", "add", "--name", "e2e-ret-1", "--ota", "4.3.94", "--reboot")
    rig.cli("plan", "add", "--name", "e2e-ret-2")
    image = rig.image("ret")
    rig.start()
    with loop_device(image) as dev:
        rig.wait_stick(dev, ("ready",))
    ran = rig.cli("sim", "appliance", str(image))  # the appliance reads the stick and writes its logs back
    assert ran["outcome"] == "provisioned"
    wait_until(lambda: rig.cli("plan", "list")[0]["status"] == "done", timeout=60, what="OTA then reboot to finish")
    entry = rig.cli("plan", "list")[0]
    assert entry["actions"]["progress"] == {
        "ota_job": entry["actions"]["progress"]["ota_job"],
        "ota": "COMPLETED",
        "reboot_job": entry["actions"]["progress"]["reboot_job"],
        "reboot": "COMPLETED",
    }
    assert rig.cli("device", "describe", "e2e-ret-1")["CurrentSoftware"] == "4.3.94"
    with loop_device(image) as dev:  # the stick comes back: collect, wipe, stage the next entry
        stick = rig.wait_stick(dev, ("ready",))
        assert stick["device"] == "e2e-ret-2"
    assert archives_on(image) == ["certificates-omni_e2e-ret-2.zip"]
    [collect] = rig.log_records("collect")
    assert collect["outcome"] == "provisioned" and collect["device"]["name"] == "e2e-ret-1"
    folder = Path(collect["folder"])
    assert "registration succeeded" in (folder / "occ.log").read_text()


def test_expired_archive_comes_back_and_is_restaged(rig, udevd):  # noqa: F811
    rig.env.update(
        PANOSTAGE_AUTHORITY_CERT_VALIDITY_SECONDS="3",
        PANOSTAGE_STAGE_MARGIN_SECONDS="0",
        PANOSTAGE_STAGE_SKEW_SECONDS="0",
    )
    rig.cli("plan", "add", "--name", "e2e-exp")
    image = rig.image("exp")
    rig.start()
    with loop_device(image) as dev:
        rig.wait_stick(dev, ("ready",))
    first = rig.live_devices()[0]["DeviceId"]
    wait_until(
        lambda: run_cli("verify", str(image), "--margin", "0", env=rig.env, home=rig.tmp).returncode == 21,
        timeout=20,
        what="the 3 s certificate to expire",
    )
    with loop_device(image) as dev:
        rig.wait_stick(dev, ("ready",))
    [again] = rig.live_devices()
    assert again["Name"] == "e2e-exp" and again["DeviceId"] != first
    deleted = rig.log_records("device-deleted")
    assert deleted and deleted[0]["device"]["id"] == first
    assert verify_image(rig, image, "e2e-exp")["archives"][0]["manifest"]["device_id"] == again["DeviceId"]
