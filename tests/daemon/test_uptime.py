"""Weeks of uptime, compressed (root): the daemon stays flat through hundreds of hand-offs and idle
follow-up passes, tells a departure from a failure, and says why it ignores a blank medium.

A real systemd-udevd, loop devices carrying FAT images, the real `panostage watch` process with its
embedded authority.  Sticks are admitted by a label of this test's own (no enrollment), so loop
devices of other tests are never touched.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.daemon.test_daemon_e2e import Rig
from tests.fat_kit import make_image, run
from tests.helpers import REPO, wait_until
from tests.proc_kit import resources
from tests.udev_kit import udevd  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (udevd, loop devices)")

HANDOFFS = 200
BURST = 4


@pytest.fixture
def rig(tmp_path, udevd):  # noqa: F811
    label = f"UP{os.getpid() % 100000:05d}"
    rig = Rig(
        tmp_path,
        PANOSTAGE_STICKS_REQUIRE_ENROLLMENT="false",
        PANOSTAGE_STICKS_LABEL=label,
        PANOSTAGE_DAEMON_POLL_SECONDS="0.2",
        PANOSTAGE_DAEMON_POLL_MAX_SECONDS="0.8",
    )
    rig.label = label
    yield rig
    if rig.proc is not None:
        rig.proc.kill()
        rig.proc.wait()


def images(rig: Rig, prefix: str, count: int) -> list[Path]:
    base = 0x7A000000 + (os.getpid() % 4096) * 4096
    return [
        make_image(rig.tmp / f"{prefix}{n}.img", 12, size="1M", volid=f"{base + n:08X}", label=rig.label)
        for n in range(count)
    ]


def attach(image: Path) -> str:
    return run("losetup", "-f", "--show", str(image)).stdout.strip()


def detach(rig: Rig, devs: list[str]) -> None:
    for dev in devs:
        run("losetup", "-d", dev, check=False)
    wait_until(lambda: not set(devs) & set(rig.sticks()), timeout=60, interval=0.02, what=f"{devs} to be forgotten")


def burst(rig: Rig, batch: list[Path]) -> None:
    devs = [attach(image) for image in batch]
    try:
        for dev in devs:
            rig.wait_stick(dev, ("ready",))
    finally:
        detach(rig, devs)


def test_hundreds_of_handoffs_and_idle_passes_leave_the_daemon_as_it_was(rig):
    plan = rig.tmp / "plan.csv"
    warm = 2 * BURST
    plan.write_text("name\n" + "".join(f"up-{n:03d}\n" for n in range(HANDOFFS + warm)))
    rig.cli("plan", "import", str(plan))
    sticks = images(rig, "s", HANDOFFS + warm)
    rig.start()
    pid = rig.proc.pid
    # warm: twice a burst at once grows the client's connection pool (and the authority's connection threads)
    # past what a burst and a follow-up pass need together; a pool is bounded, a leak is not
    burst(rig, sticks[:warm])
    # the loop's connection and the follow-up thread's: passes run every 0.2-0.8 s over the staged entries
    wait_until(lambda: resources(pid)["wal"] >= 2, timeout=30, what="the follow-up thread's first pass")
    baseline = resources(pid)
    for start in range(warm, HANDOFFS + warm, BURST):
        burst(rig, sticks[start : start + BURST])

    def flat() -> bool:
        now = resources(pid)
        return all(now[key] <= baseline[key] for key in ("fds", "threads", "wal"))

    try:
        wait_until(flat, timeout=30, interval=0.2, what="resources back to the baseline")
    except AssertionError:
        os.kill(pid, 10)  # SIGUSR1: the daemon writes every thread's stack to its log
        wait_until(lambda: "Thread 0x" in rig.daemon_log(), timeout=10, what="the stacks")
        kinds = Counter(
            re.sub(r"\[\d+\]|\d+", "N", os.readlink(f"/proc/{pid}/fd/{fd}"))
            for fd in os.listdir(f"/proc/{pid}/fd")
            if os.path.lexists(f"/proc/{pid}/fd/{fd}")
        )
        raise AssertionError(
            f"baseline {baseline}, now {resources(pid)}, {kinds}\n{rig.daemon_log()[-6000:]}"
        ) from None
    # botocore's pool: max_pool_connections (10) per client; the daemon has two Panorama clients (ProvisionDevice
    # without retries, the rest), which its own-process authority now serves at once
    assert resources(pid)["http_connections"] <= 2 * 10
    assert resources(pid)["database"] <= 2 * BURST + 2  # descriptors SQLite keeps to reuse: the most ever open
    assert len(rig.log_records("handoff")) >= HANDOFFS
    assert "Traceback" not in rig.daemon_log()


def test_a_stick_pulled_while_handled_is_a_departure_said_once(rig):
    rig.cli("plan", "add", "--name", "up-held")
    [image] = images(rig, "held", 1)
    rig.start(PANOSTAGE_DEBUG_HOLD_AT="provisioning")
    dev = attach(image)
    try:
        wait_until(lambda: (rig.state / "held-at-provisioning").exists(), timeout=30, what="the worker to hold")
        # the medium goes while the worker holds the device open (a loop device cannot be detached then):
        # its filesystem is wiped; udev's change shows no filesystem, which the daemon takes as the stick gone
        with open(dev, "r+b") as node:
            node.write(b"\0" * (1 << 20))
        wait_until(lambda: "departed" in rig.daemon_log(), timeout=30, what="the departure")
        wait_until(
            lambda: rig.cli("plan", "list")[0]["status"] == "pending", timeout=30, what="the entry back in the plan"
        )
    finally:
        detach(rig, [dev])
    log = rig.daemon_log()
    assert log.count("left while being handled") == 1, log
    assert "hand-off failed" not in log and "Traceback" not in log, log
    assert rig.live_devices() == []  # abandoned before ProvisionDevice: no device, no orphan


def test_a_blank_medium_is_ignored_with_its_reason_in_status_and_log(rig):
    blank = rig.tmp / "blank.img"
    blank.write_bytes(b"\0" * (1 << 20))
    rig.start()
    dev = attach(blank)
    try:
        stick = rig.wait_stick(dev, ("rejected",))
        assert stick["note"] == "no filesystem"
        assert f"stick {dev} ignored: no filesystem" in rig.daemon_log()
        run("mkfs.fat", "-F", "12", "-n", rig.label, dev)  # formatted where it sits: udev's change makes it a stick
        rig.wait_stick(dev, ("idle",))  # admitted now; the plan is empty
    finally:
        detach(rig, [dev])


ARENA_PROBE = """
import ctypes, sys, tempfile, threading
from agent.daemon.memory import limit_malloc_arenas
if sys.argv[1] == "limited":
    limit_malloc_arenas()
go = threading.Barrier(8)
def work():
    go.wait()  # all at once, as eight sticks are
    for _ in range(200):
        blob = bytearray(200_000)  # malloc'd outside pymalloc, in this thread's arena
        del blob
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    stream = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    print(open(out.name).read().count("<heap nr="))
"""


def test_the_daemon_keeps_to_two_malloc_arenas() -> None:
    """Eight threads at once get eight glibc arenas, each keeping its freed memory; the daemon's limit
    (set before any worker thread exists) keeps them to two.  Counted with malloc_info."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: there are no arenas to limit")

    def heaps(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, text=True, cwd=REPO, check=True
        )
        return int(out.stdout)

    assert heaps("limited") <= 2 < heaps("free")
