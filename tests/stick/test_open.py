"""open_target's decisions that need no real device."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent.errors import ExitCode
from agent.stick import StickIOError, StickRefused, mounts, open_target
from agent.stick.mounts import Mount
from agent.stick.opener import parse_spec


def test_missing_path_and_special_files() -> None:
    with pytest.raises(StickIOError) as err:
        open_target("/nonexistent/stick.img")
    assert err.value.errno == errno.ENOENT and err.value.exit_code == ExitCode.IO
    with pytest.raises(StickRefused):
        open_target("/dev/null")


def test_spec_with_offset(tmp_path: Path) -> None:
    assert parse_spec(f"{tmp_path}/a.img@@1048576") == (tmp_path / "a.img", 1048576)
    odd = tmp_path / "b.img@@12"  # a file really named like that wins
    odd.write_bytes(b"")
    assert parse_spec(odd) == (odd, None)


def test_partitions_count_as_mounts_of_their_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    disk, part, other = os.makedev(8, 16), os.makedev(8, 17), os.makedev(8, 32)
    table = [
        Mount("/dev/sdb1", Path("/media/stick"), "vfat", frozenset({"rw"})),
        Mount("/dev/sdc", Path("/media/other"), "vfat", frozenset({"rw"})),
        Mount("tmpfs", Path("/run"), "tmpfs", frozenset({"rw"})),
    ]
    rdevs = {"/dev/sdb1": part, "/dev/sdc": other}
    sysfs = {disk: "/sys/devices/x/block/sdb", part: "/sys/devices/x/block/sdb/sdb1", other: "/sys/devices/y/block/sdc"}
    monkeypatch.setattr(mounts, "mounts", lambda: table)
    monkeypatch.setattr(mounts, "device_rdev", lambda device: rdevs.get(device))
    monkeypatch.setattr(mounts, "_sysfs", lambda rdev: sysfs.get(rdev))
    assert [m.device for m in mounts.mounts_of_device(disk)] == ["/dev/sdb1"]
    assert [m.device for m in mounts.mounts_of_device(part)] == ["/dev/sdb1"]
    assert [m.device for m in mounts.mounts_of_device(other)] == ["/dev/sdc"]
