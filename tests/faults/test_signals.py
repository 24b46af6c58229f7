"""7. SIGTERM in the middle of ``panostage stage`` (the CLI turns it into an exception so the
undo runs): while ProvisionDevice is under way, and while the stick is being written.

Each hold is deterministic, no sleeps: the authority answers ProvisionDevice late (the test
acts once the relay has seen the request); an mtools child is replaced by a blocker that
announces itself in a marker file and waits to be killed (``mcopy`` - nothing on the stick
yet; ``mren`` - the temporary file is on the stick and flushed); on a mounted stick the CLI's
first ``fsync`` inside the write announces itself and waits (the temporary file is written,
not yet flushed or renamed).  The daemon's SIGTERM is in test_daemon_faults.
"""

from __future__ import annotations

import subprocess

import pytest

from agent.errors import ExitCode
from tests.faults.matrix import Case, Expect, Stick, blocked_tool, hold_at, needs_root, terminate_when, unique
from tests.helpers import wait_until

TERMINATED = Expect(ExitCode.INTERRUPTED, cause=("terminated",), reason="Terminated", untouched=True)


def test_sigterm_while_provisioning(kit, station, tmp_path):
    """The answer is on its way when SIGTERM comes: the device it makes must not outlive the CLI."""
    case = Case(kit, station, Stick.fat(tmp_path / "stick.img"), unique("term-prov"))
    with kit.faults({"ProvisionDevice": {"latency_ms": 1500, "count": 1}}), case.stick.plugged():
        proc = station.popen(*case.stage_args())
        wait_until(
            lambda: kit.relay.requested(b"POST /devices ") or proc.poll() is not None,
            timeout=60,
            what="ProvisionDevice to be sent",
        )
        assert proc.poll() is None
        proc.terminate()
        out, err = proc.communicate(timeout=120)
    case.check(TERMINATED, subprocess.CompletedProcess(proc.args, proc.returncode, out, err))


@pytest.mark.parametrize("tool", ["mcopy", "mren"])
def test_sigterm_while_an_mtools_child_writes(kit, station, tmp_path, tool):
    case = Case(kit, station, Stick.fat(tmp_path / "stick.img"), unique(f"term-{tool}"))
    marker = tmp_path / "held"
    with case.stick.plugged():
        proc = station.popen(*case.stage_args(), env=blocked_tool(tool, marker))
        result = terminate_when(proc, marker)
    # with mren held, the temporary file was on the stick: the undo journal took it back
    case.check(TERMINATED if tool == "mcopy" else Expect(**{**TERMINATED.__dict__, "untouched": False}), result)


@needs_root
def test_sigterm_during_the_write_to_a_mounted_stick(kit, station, tmp_path):
    case = Case(kit, station, Stick.fat(tmp_path / "stick.img", "mount"), unique("term-mnt"))
    marker = tmp_path / "held"
    with case.stick.plugged():
        proc = station.popen(*case.stage_args(), env=hold_at("fsync", 1, marker))
        result = terminate_when(proc, marker)
    case.check(Expect(**{**TERMINATED.__dict__, "untouched": False}), result)
