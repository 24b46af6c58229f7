"""4., 3. and 7. for the daemon: kill -9 at each persisted state then a restart, the stick pulled
while a hand-off is held, SIGTERM while a write is held - with the five invariants on top.

The machinery is the daemon end-to-end tests' own (:class:`tests.daemon.test_daemon_e2e.Rig`: a
real systemd-udevd, loop devices, the real ``panostage watch``); the station it runs as talks to
the matrix's served authority through the recording relay, so every archive the daemon was ever
answered - also those a crash threw away - is searched for on the workstation's disk.  The
daemon's end is read from what it leaves: its log (no traceback), the plan (the staged device),
and the hand-off log's record.  The holds are the daemon's checkpoints (PANOSTAGE_DEBUG_HOLD_AT);
one more case kills it while an mtools child is inside the write, between checkpoints.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from agent.errors import ExitCode
from tests.daemon.test_daemon_e2e import Rig
from tests.fat_kit import loop_device
from tests.faults.matrix import SHIM, Case, Ended, Expect, Station, Stick, blocked_tool, unique
from tests.helpers import REPO, wait_until
from tests.udev_kit import udevd  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (udevd, loop devices)")


class DaemonCase:
    """A Rig (the daemon's station) wired to the matrix: its env, its stick, its invariants."""

    def __init__(self, kit, tmp: Path, prefix: str) -> None:
        self.station = Station(tmp / "rig", kit)
        self.rig = Rig(self.station.home, **self.station.env)
        self.name = unique(prefix)
        self.rig.cli("plan", "add", "--name", self.name, "--eth0", "dhcp", "--ntp", "pool.ntp.org")
        image = self.rig.image(prefix)
        self.case = Case(kit, self.station, Stick(image, "block"), self.name)

    def daemon_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.rig.tmp.glob("daemon*.log")))

    def held(self, state: str) -> None:
        wait_until(
            lambda: (self.rig.state / f"held-at-{state}").exists(), timeout=60, what=f"the daemon to hold at {state}"
        )

    def ready(self) -> Ended:
        """The daemon staged the plan entry: the device the plan records as staged."""
        [entry] = [e for e in self.rig.cli("plan", "list") if e["name"] == self.name]
        assert entry["status"] == "staged", entry
        return Ended(0, self.daemon_logs(), device_id=entry["device_id"])

    def failed(self) -> Ended:
        """The hand-off was abandoned: the daemon says why in the log record; the entry is queued again."""
        [entry] = [e for e in self.rig.cli("plan", "list") if e["name"] == self.name]
        assert entry["status"] == "pending", entry
        last = [r for r in self.station.records() if r.get("kind") == "handoff"][-1]
        return Ended(ExitCode.INTERRUPTED, self.daemon_logs(), error=last["error"])

    def stop(self) -> None:
        if self.rig.proc is not None:
            self.rig.proc.kill()
            self.rig.proc.wait()


@pytest.fixture
def daemon(kit, tmp_path, udevd):  # noqa: F811
    made: list[DaemonCase] = []

    def make(prefix: str) -> DaemonCase:
        made.append(DaemonCase(kit, tmp_path, prefix))
        return made[-1]

    yield make
    for one in made:
        one.stop()


ABANDONED = Expect(ExitCode.INTERRUPTED, cause=("abandoned",), reason="abandoned", untouched=True)


@pytest.mark.parametrize("at", ["provisioning", "provisioned", "writing", "written", "verified"])
def test_kill_9_at_each_persisted_state_then_restart(daemon, at):
    d = daemon(f"k9-{at}")
    d.rig.start(PANOSTAGE_DEBUG_HOLD_AT=at)
    with loop_device(d.case.stick.image) as dev:
        d.held(at)
        assert d.rig.stop(signal.SIGKILL) == -signal.SIGKILL
        d.rig.start()  # recovery first, then coldplug finds the same stick and stages the entry again
        d.rig.wait_stick(dev, ("ready",))
    ended = d.ready()
    d.rig.stop()
    learnt = d.case.check(Expect(), ended)
    [recovery] = [r for r in d.station.records() if r["kind"] == "recovery"]
    assert recovery["interrupted_state"] == at
    assert learnt["device_id"] not in recovery["devices_deleted"]
    assert len(recovery["devices_deleted"]) == (0 if at == "provisioning" else 1)
    assert len(learnt["archives"]) == (1 if at == "provisioning" else 2)  # the crash threw one away


def test_kill_9_while_mren_is_inside_the_write(daemon, tmp_path):
    """Between checkpoints: mcopy has put the temporary file on the stick and mren hangs when the
    daemon is killed.  After the restart the hand-off is recovered, the temporary file (its writer
    is dead) is scrubbed, and the entry is staged again."""
    d = daemon("k9-mren")
    marker = tmp_path / "mren-held"
    d.rig.start(PYTHONPATH=os.pathsep.join([str(SHIM), str(REPO)]), **blocked_tool("mren", marker))
    with loop_device(d.case.stick.image) as dev:
        wait_until(marker.exists, timeout=60, what="mren to be held")
        assert d.rig.stop(signal.SIGKILL) == -signal.SIGKILL
        os.kill(int(marker.read_text()), signal.SIGKILL)  # the blocker we put there (it holds the stick open)
        d.rig.start()
        d.rig.wait_stick(dev, ("ready",))
    ended = d.ready()
    d.rig.stop()
    temp = rf"\.certificates-omni_{d.name}\.zip\.[0-9]+\.tmp"
    assert not any(name.startswith(".") for name in d.case.stick.root())
    learnt = d.case.check(Expect(scrubbed=(temp,)), ended)
    assert len(learnt["archives"]) == 2


def test_stick_pulled_while_held_then_plugged_in_again(daemon, udevd):  # noqa: F811
    d = daemon("pulled")
    d.rig.start(PANOSTAGE_DEBUG_HOLD_AT="provisioned")
    with loop_device(d.case.stick.image) as dev:
        d.held("provisioned")
        udevd.trigger(dev, "remove")  # udev announces the stick gone
        wait_until(lambda: dev not in d.rig.sticks(), timeout=30, what="the stick to be forgotten")
        d.case.check(Expect(**{**ABANDONED.__dict__, "cause": ("abandoned", "removed")}), d.failed())
        d.case.begin()
        udevd.trigger(dev, "add")  # plugged in again
        d.rig.wait_stick(dev, ("ready",))
    ended = d.ready()
    d.rig.stop()
    d.case.check(Expect(), ended)


def test_sigterm_while_a_write_is_held(daemon):
    d = daemon("term")
    d.rig.start(PANOSTAGE_DEBUG_HOLD_AT="writing")
    with loop_device(d.case.stick.image):
        d.held("writing")
        assert d.rig.stop(signal.SIGTERM) == 0
    d.case.check(Expect(**{**ABANDONED.__dict__, "cause": ("abandoned", "stopping")}), d.failed())
