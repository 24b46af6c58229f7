"""Telling the technician: desktop notification when a session is there, a bell on a terminal, else the log."""

from __future__ import annotations

import os
import pty
from datetime import UTC, datetime

from agent.daemon.technician import Technician


def test_desktop_notification_when_a_graphical_session_is_there(tmp_path, monkeypatch):
    # notify-send talks to a session bus this machine does not have: a stand-in records what it was asked.
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "notify-send"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {calls}\necho >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
    tech = Technician("auto")
    assert tech.desktop and not tech.bell
    tech.ready("cam-1", "/dev/sdb1", datetime(2026, 11, 23, 12, 5, tzinfo=UTC))
    tech.failed("/dev/sdc", "stick removed")
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("-a|panostage|-u|normal|cam-1 ready|stick /dev/sdb1: plug it into the appliance before ")
    assert lines[1] == "-a|panostage|-u|critical|hand-off failed|stick /dev/sdc: stick removed|"


def test_bell_on_a_terminal_without_a_session(monkeypatch):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        tech = Technician("auto", stream=terminal)
        assert tech.bell and not tech.desktop
        tech.running_out("cam-1", 42)
    assert os.read(leader, 16) == b"\a"
    os.close(leader)


def test_nothing_but_the_log_without_a_terminal(tmp_path, caplog):
    with open(tmp_path / "out", "w") as plain:
        tech = Technician("auto", stream=plain)
        assert not tech.bell and not tech.desktop
        with caplog.at_level("INFO", logger="panostage.technician"):
            tech.empty_plan("/dev/sdb")
    assert (tmp_path / "out").read_text() == ""
    assert "the plan is empty" in caplog.text


def test_none_means_none(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")
    assert not Technician("none").desktop and not Technician("none").bell
