"""Hand-offs interrupted on the real machine: a stick pulled mid-write, `systemctl stop`, a hard reset, a
daemon that stops pinging the watchdog (scenarios 2 and 4 of issue 16).  Each ends with no orphan device,
nothing partial on the stick (fsck.fat on the pulled stick's backing file) and the entry staged again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fat_kit import fsck
from tests.station import files_on
from tests.vm.machine import Machine
from tests.vm.sticks import Layout, fat_stick

STATE = "/var/lib/panostage"


def _drop_in(laptop: Machine, name: str, text: str) -> None:
    """A drop-in for panostage.service (as `systemctl edit` makes), then a restart, READY again."""
    laptop.run("mkdir", "-p", "/etc/systemd/system/panostage.service.d")
    laptop.run("tee", f"/etc/systemd/system/panostage.service.d/{name}.conf", stdin=text.encode())
    laptop.run("systemctl", "daemon-reload")
    laptop.run("systemctl", "restart", "panostage.service", timeout=120)


def _hold_at(laptop: Machine, state: str) -> None:
    laptop.run("rm", "-f", *(f"{STATE}/held-at-{s}" for s in ("provisioned", "writing", "written")))
    _drop_in(laptop, "hold", f"[Service]\nEnvironment=PANOSTAGE_DEBUG_HOLD_AT={state}\n")


def _held(laptop: Machine, state: str) -> None:
    laptop.wait_for(
        f"the daemon to hold at {state}",
        lambda: laptop.run("test", "-e", f"{STATE}/held-at-{state}", check=False).returncode == 0,
    )


def _plug_and_hold(laptop: Machine, image: Path, *, at: str, name: str, serial: str, stick_id: str) -> None:
    """An entry, an enrolled stick plugged in, and the daemon holding its hand-off at checkpoint ``at``."""
    _hold_at(laptop, at)
    laptop.panostage("plan", "add", "--name", name)
    laptop.panostage("stick", "enroll", "--identity", f"usb:{serial}")
    laptop.plug(image, serial=serial, stick_id=stick_id)
    _held(laptop, at)


def _live_devices(laptop: Machine, name: str | None = None) -> list[dict[str, Any]]:
    devices = json.loads(laptop.panostage("device", "list", "--json").stdout)
    return [d for d in devices if d["ProvisioningStatus"] != "DELETING" and name in (None, d["Name"])]


def _entry(laptop: Machine, name: str) -> dict[str, Any]:
    [entry] = [e for e in json.loads(laptop.panostage("plan", "list", "--json").stdout) if e["name"] == name]
    return entry


def _clean_and_ours(image: Path, name: str) -> None:
    fsck(image)
    assert files_on(image) == [f"certificates-omni_{name}.zip"], files_on(image)


def test_a_stick_pulled_mid_hand_off_fails_cleanly_and_is_staged_when_plugged_back(
    laptop: Machine, tmp_path: Path
) -> None:
    image = fat_stick(tmp_path / "pull.img", Layout(32, 512, False), volid="50554C01")
    _plug_and_hold(laptop, image, at="writing", name="vm-pull-1", serial="PULL0001", stick_id="pull")
    laptop.pull("pull")
    laptop.wait_for("the entry to be pending again", lambda: _entry(laptop, "vm-pull-1")["status"] == "pending")
    assert _live_devices(laptop, "vm-pull-1") == []  # the device made for the pulled stick is gone: no orphan
    fsck(image)
    assert files_on(image) == []  # nothing partial, no temporary file
    journal = laptop.sh("journalctl -u panostage --no-pager -o cat")
    assert "left while being handled" in journal

    laptop.plug(image, serial="PULL0001", stick_id="pull")  # the same backing image, plugged back
    stick = laptop.wait_stick("usb:PULL0001", ("ready",))
    assert stick["device"] == "vm-pull-1"
    laptop.pull("pull")
    _clean_and_ours(image, "vm-pull-1")
    assert len(_live_devices(laptop, "vm-pull-1")) == 1


def test_systemctl_stop_during_a_hand_off_leaves_nothing_behind(laptop: Machine, tmp_path: Path) -> None:
    image = fat_stick(tmp_path / "stop.img", Layout(16, 512, False), volid="53544F01")
    _plug_and_hold(laptop, image, at="provisioned", name="vm-stop-1", serial="STOP0001", stick_id="stop")
    laptop.run("systemctl", "stop", "panostage.service", timeout=90)
    show = dict(
        line.split("=", 1)
        for line in laptop.sh("systemctl show panostage -p Result -p ExecMainStatus -p ActiveState").split()
    )
    assert show == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}
    assert _live_devices(laptop, "vm-stop-1") == []  # abandoned before the write: its device deleted at once
    assert _entry(laptop, "vm-stop-1")["status"] == "pending"
    fsck(image)
    laptop.run("systemctl", "start", "panostage.service", timeout=120)  # the stick, still plugged, at coldplug
    stick = laptop.wait_stick("usb:STOP0001", ("ready",))
    assert stick["device"] == "vm-stop-1"
    assert len(_live_devices(laptop, "vm-stop-1")) == 1
    laptop.pull("stop")
    _clean_and_ours(image, "vm-stop-1")


def test_a_hard_reset_during_a_hand_off_is_recovered_after_boot(laptop: Machine, tmp_path: Path) -> None:
    image = fat_stick(tmp_path / "reset.img", Layout(32, 512, False), volid="52535401")
    _plug_and_hold(laptop, image, at="written", name="vm-reset-1", serial="RSET0001", stick_id="reset")
    [first] = _live_devices(laptop, "vm-reset-1")
    laptop.hard_reset()  # power cut: nothing in the guest finishes
    laptop.wait_ready()
    stick = laptop.wait_stick("usb:RSET0001", ("ready",))  # recovery, then the stick (still plugged) at coldplug
    assert stick["device"] == "vm-reset-1"
    [second] = _live_devices(laptop, "vm-reset-1")
    assert second["DeviceId"] != first["DeviceId"]  # the interrupted one was deleted: no orphan
    records = [r["kind"] for r in json.loads(laptop.panostage("log", "show", "--json").stdout)]
    assert "device-deleted" in records or "recovered" in " ".join(records)
    laptop.pull("reset")
    _clean_and_ours(image, "vm-reset-1")


def test_the_watchdog_restarts_a_daemon_that_stops_pinging(laptop: Machine) -> None:
    laptop.run("rm", "-f", "/etc/systemd/system/panostage.service.d/hold.conf")
    # systemd's own watchdog, only shortened so the test does not wait 30 s + 45 s
    _drop_in(laptop, "watchdog", "[Service]\nWatchdogSec=4s\nTimeoutAbortSec=4s\nRestartSec=1s\n")
    before = laptop.sh("systemctl show panostage -p MainPID -p NRestarts")
    pid = before.split("MainPID=")[1].split()[0]
    laptop.sh(f"kill -STOP {pid}")  # a hang: the process runs nothing, pings nothing
    laptop.wait_for(
        "systemd to restart the hung daemon",
        lambda: (
            "ActiveState=active"
            in (now := laptop.sh("systemctl show panostage -p MainPID -p NRestarts -p ActiveState"))
            and f"MainPID={pid}\n" not in now
        ),
        timeout=90,
    )
    assert "NRestarts=1" in laptop.sh("systemctl show panostage -p NRestarts")
    assert "Watchdog timeout" in laptop.sh("journalctl -u panostage --no-pager -o cat")
