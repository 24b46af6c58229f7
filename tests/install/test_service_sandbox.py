"""The installed daemon under the unit's own confinement (root): its user, no capabilities, its
device cgroup, its seccomp filters, its read-only file system (see tests/install/sandbox.py for what
is emulated and how).  A FAT loop device made to look like a USB stick (the test-only udev rule) gets
the panostage group from the real 85-panostage.rules; the real installed `panostage watch` then
stages a device onto it, with sd_notify READY/STATUS/WATCHDOG/STOPPING going to a socket we hold.

This is what the unit would do on a workstation, short of systemd itself starting it: it proves
the device permissions, the empty capability set and the system call filter are enough for the
stage path (udev netlink, O_EXCL, mtools children, O_DIRECT read-back, SQLite, the embedded
authority on loopback), and the controls prove each confinement actually bites.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fat_kit import fsck, loop_device, make_image, mtools
from tests.helpers import Notifications, run_cli, wait_until
from tests.install.conftest import PREFIX, Installed, needs_root
from tests.install.sandbox import DEVICES_CGROUP, Sandbox

pytestmark = [needs_root, pytest.mark.root, pytest.mark.slow]

UNIT = "/usr/local/lib/systemd/system/panostage.service"
LAB_DEVICES = ["block-loop rw"]  # the README's lab drop-in: loop devices instead of /dev/sd*


def _usable() -> str | None:
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not (DEVICES_CGROUP / "devices.allow").exists():
        return "no cgroup-v1 devices controller to emulate DevicePolicy= with"
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "libseccomp2 is not installed"
    return None


@pytest.fixture
def service_dirs(tmp_path: Path, panostage_account) -> Iterator[tuple[Path, Path, Path]]:
    """Host directories for the state, logs and the notify socket (the socket dir lives in /run:
    /tmp is private inside the sandbox)."""
    state, logs = tmp_path / "state", tmp_path / "logs"
    state.mkdir(mode=0o700)
    logs.mkdir(mode=0o750)
    run = Path(f"/run/panostage-test-{secrets.token_hex(4)}")
    run.mkdir(mode=0o755)
    try:
        yield state, logs, run
    finally:
        shutil.rmtree(run, ignore_errors=True)


def make_sandbox(installed: Installed, account, state: Path, logs: Path, extra: list[str]) -> Sandbox:
    reason = _usable()
    if reason:
        pytest.skip(reason)
    box = Sandbox(
        unit=installed.path(UNIT),
        prefix_tree=installed.path(PREFIX),
        state=state,
        logs=logs,
        uid=account.uid,
        gid=account.gid,
        extra_devices=extra,
    )
    try:
        box.prepare()
    except OSError as exc:
        box.cleanup()
        pytest.skip(f"cannot make a devices cgroup here: {exc}")
    return box


PROBE = r"""
import errno, json, mmap, os, socket, subprocess, sys
dev = sys.argv[1]
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters"):
    out[key] = status.get(key, "").strip()
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
attempt("open_stick_rw", lambda: os.close(os.open(dev, os.O_RDWR | os.O_EXCL)))
attempt("af_packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close())
attempt("af_netlink_uevent", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15).close())
attempt("af_inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
attempt("mmap_wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close())
attempt("setuid0", lambda: os.setuid(0))
attempt("write_etc", lambda: open("/etc/panostage-probe", "w").close())
attempt("write_usr", lambda: open("/opt/panostage/probe", "w").close())
attempt("write_state", lambda: open(os.environ["STATE_DIRECTORY"] + "/probe", "w").close())
attempt("write_runtime", lambda: open(os.environ["RUNTIME_DIRECTORY"] + "/probe", "w").close())
attempt("write_tmp", lambda: open("/tmp/probe", "w").close())
attempt("read_root_home", lambda: os.listdir("/root/.ssh"))
attempt("proc_pid1", lambda: open("/proc/1/status").read())
attempt("proc_sys", lambda: open("/proc/sys/kernel/hostname").read())
attempt("write_sys", lambda: open("/sys/kernel/uevent_helper", "w").close())
attempt("spawn", lambda: subprocess.run(["mdir", "--version"], check=True, capture_output=True))
import ctypes, ctypes.util  # what the daemon's release_memory() does, under MemoryDenyWriteExecute
ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
out["ctypes"] = "ok"
print(json.dumps(out))
"""


def run_probe(box: Sandbox, dev: str) -> dict:
    proc = subprocess.run(
        box.command([f"{PREFIX}/bin/python", "-c", PROBE, dev], {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def fat_stick(tmp_path: Path, runtime_rules, udevd) -> tuple[Path, str]:
    volid = secrets.randbits(32) | 0x10000000
    image = make_image(tmp_path / "stick.img", 32, volid=f"{volid:08X}", label="PANOSTICK")
    uuid = f"{volid >> 16:04X}-{volid & 0xFFFF:04X}"
    runtime_rules.fake_usb(f'ENV{{ID_FS_UUID}}=="{uuid}"')
    return image, uuid


def test_the_confinement_holds_and_leaves_the_stick_usable(
    installed, panostage_account, runtime_rules, udevd, service_dirs, tmp_path: Path
) -> None:
    state, logs, _run = service_dirs
    os.chown(state, panostage_account.uid, panostage_account.gid)
    image, uuid = fat_stick(tmp_path, runtime_rules, udevd)
    with loop_device(image) as dev:
        udevd.trigger(dev, "change")
        udevd.wait_properties(dev, lambda p: p.get("ID_FS_UUID") == uuid and p.get("PANOSTAGE_STICK") == "1")
        lab = make_sandbox(installed, panostage_account, state, logs, LAB_DEVICES)
        try:
            got = run_probe(lab, dev)
        finally:
            lab.cleanup()
        unit_only = make_sandbox(installed, panostage_account, state, logs, [])
        try:
            strict = run_probe(unit_only, dev)
        finally:
            unit_only.cleanup()
    assert (got["uid"], got["gid"]) == (panostage_account.uid, panostage_account.gid)
    assert set(got["groups"]) <= {panostage_account.gid}
    assert {got[k] for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")} == {"0000000000000000"}
    assert got["NoNewPrivs"] == "1" and got["Seccomp"] == "2" and int(got["Seccomp_filters"]) >= 4
    assert got["open_stick_rw"] == "ok"  # udev's group + the lab drop-in's block-loop: enough, no capability
    assert strict["open_stick_rw"] == "EPERM"  # the unit alone (block-sd) keeps loop devices out
    assert got["af_packet"] == "EAFNOSUPPORT" and got["af_netlink_uevent"] == "ok" and got["af_inet"] == "ok"
    assert got["mmap_wx"] == "EPERM"
    assert got["setuid0"] == "EPERM"
    assert got["write_etc"] == "EROFS" and got["write_usr"] == "EROFS" and got["write_sys"] in ("EROFS", "EACCES")
    assert got["write_state"] == "ok" and got["write_runtime"] == "ok" and got["write_tmp"] == "ok"
    assert got["read_root_home"] == "ENOENT"
    assert got["proc_pid1"] == "ENOENT" and got["proc_sys"] == "ENOENT"
    assert got["spawn"] == "ok" and got["ctypes"] == "ok"


def test_the_installed_daemon_stages_a_stick_under_the_units_confinement(
    installed, panostage_account, runtime_rules, udevd, service_dirs, tmp_path: Path
) -> None:
    state, logs, run = service_dirs
    home = tmp_path / "home"
    home.mkdir()
    cli_env = {"PANOSTAGE_PATHS_STATE_DIR": str(state), "PANOSTAGE_PATHS_RUNTIME_DIR": str(tmp_path / "cli-run")}

    def cli(*args: str) -> object:
        result = run_cli(*args, "--json", env=cli_env, home=home)
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
        return json.loads(result.stdout) if result.stdout.strip() else None

    image, uuid = fat_stick(tmp_path, runtime_rules, udevd)
    name = f"sbx-{secrets.token_hex(3)}"
    cli("plan", "add", "--name", name, "--eth0", "dhcp", "--ntp", "pool.ntp.org")
    cli("stick", "enroll", "--identity", f"fs:{uuid}")
    # what systemd does to StateDirectory= at start: hand it to the service's user
    for path in [state, *state.rglob("*")]:
        os.lchown(path, panostage_account.uid, panostage_account.gid)
    before = set(state.rglob("*"))

    box = make_sandbox(installed, panostage_account, state, logs, LAB_DEVICES)
    notify = Notifications(run / "notify.sock", mode=0o666)  # the service user sends to it
    log_path = tmp_path / "daemon.log"
    proc = None
    try:
        with loop_device(image) as dev, open(log_path, "wb") as log:
            udevd.trigger(dev, "change")
            udevd.wait_properties(dev, lambda p: p.get("PANOSTAGE_STICK") == "1")
            env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
            proc = subprocess.Popen(
                box.command([f"{PREFIX}/bin/panostage", "watch"], env), stdout=log, stderr=subprocess.STDOUT
            )

            def daemon_log() -> str:
                return log_path.read_text(errors="replace")

            try:
                wait_until(
                    lambda: notify.seen("READY=1") or proc.poll() is not None,
                    timeout=60,
                    what="READY=1 from the confined daemon",
                )
                assert proc.poll() is None, daemon_log()

                def ready() -> dict | None:
                    sticks = {s["devnode"]: s for s in cli("status")["sticks"]}
                    stick = sticks.get(dev)
                    return stick if stick and stick["state"] in ("ready", "failed", "rejected") else None

                stick = wait_until(ready, timeout=90, interval=0.2, what=f"{dev} to be staged")
                assert stick["state"] == "ready" and stick["device"] == name, f"{stick}\n{daemon_log()}"
                wait_until(lambda: len(notify.seen("WATCHDOG=1")) >= 2, timeout=10, what="watchdog pings")
                assert any("1 ready" in line for line in notify.seen("STATUS=")), notify.messages
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- daemon log ---\n{daemon_log()}") from None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, daemon_log()
            proc = None
            assert notify.seen("STOPPING=1")
        out = mtools("mdir", "-b", "-i", str(image), "::/").stdout.decode()
        assert f"certificates-omni_{name}.zip" in out
        fsck(image)
        text = log_path.read_text(errors="replace")
        # the one refusal expected: no CAP_NET_ADMIN for SO_RCVBUFFORCE (logged, not fatal)
        refused = [line for line in text.splitlines() if "not permitted" in line or "denied" in line.lower()]
        assert refused == [line for line in refused if "cannot raise receive buffer" in line], text
        assert "Traceback" not in text and " ERROR " not in f" {text}", text
        # everything it made belongs to the service user and is private (UMask=0077)
        made = set(state.rglob("*")) - before
        assert made, "the daemon wrote its state"
        for path in made:
            st = path.lstat()
            assert st.st_uid == panostage_account.uid, path
            assert st.st_mode & 0o077 == 0, (path, oct(st.st_mode))
        [record] = [r for r in cli("log", "show") if r["kind"] == "handoff"]
        assert record["outcome"] == "ready" and record["operator"] == "panostage"
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        notify.close()
        box.cleanup()
