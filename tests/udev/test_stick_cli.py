"""``panostage stick enroll|list|revoke|check|prepare`` through the real CLI process.

Enrollment needs nothing special; check and prepare use loop devices, real mounts and a real
systemd-udevd (root).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ExitCode
from tests.fat_kit import (
    ext4_image,
    fsck,
    loop_device,
    make_image,
    make_mbr_image,
    mkfs_at,
    mounted,
    needs_root,
    raw_contains,
    run,
    wait_for,
)
from tests.helpers import run_cli


class Cli:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {"PANOSTAGE_PATHS_STATE_DIR": str(home / "state")}

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return run_cli("stick", *args, env={**self.env, **env}, home=self.home)

    def json(self, *args: str, expect: int = 0, **env: str) -> Any:
        """stdout as JSON (exit ``expect``); for a failure, the error object from stderr."""
        result = self.run(*args, "--json", **env)
        assert result.returncode == expect, (
            f"exit {result.returncode} (wanted {expect})\n{result.stdout}\n{result.stderr}"
        )
        if result.stdout.strip():
            return json.loads(result.stdout)
        return json.loads(result.stderr.splitlines()[-1])["error"]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


# ------------------------------------------------------------------ enrollment (no root needed)
def test_enroll_list_revoke_round_trip(cli: Cli) -> None:
    first = cli.json("enroll", "--identity", "fs:12ab-34cd", "--label", "blue-07", "--note", "spare")
    assert (first["identity"], first["label"], first["note"], first["revoked_at"]) == (
        "fs:12AB-34CD",
        "blue-07",
        "spare",
        None,
    )
    cli.json("enroll", "--identity", "usb:4C530001230101117343")
    assert [r["identity"] for r in cli.json("list")] == ["fs:12AB-34CD", "usb:4C530001230101117343"]

    assert cli.json("revoke", "fs:12ab-34cd") == {"identity": "fs:12AB-34CD", "revoked": True}
    assert [r["identity"] for r in cli.json("list")] == ["usb:4C530001230101117343"]
    everything = {r["identity"]: r for r in cli.json("list", "--all")}
    assert everything["fs:12AB-34CD"]["revoked_at"] and everything["usb:4C530001230101117343"]["revoked_at"] is None

    again = cli.json("revoke", "fs:12AB-34CD", expect=ExitCode.NOT_FOUND)
    assert again["reason"] == "not-found"
    cli.json("enroll", "--identity", "fs:12AB-34CD")  # enrolling again restores it
    assert {r["identity"] for r in cli.json("list")} == {"fs:12AB-34CD", "usb:4C530001230101117343"}
    human = cli.run("list")
    assert human.returncode == 0 and "usb:4C530001230101117343" in human.stdout and "IDENTITY" in human.stdout


def test_enroll_refuses_bad_input(cli: Cli) -> None:
    assert cli.json("enroll", "--identity", "serial:123", expect=ExitCode.USAGE)["reason"] == "usage"
    assert cli.json("enroll", expect=ExitCode.USAGE)["reason"] == "usage"  # neither DEVICE nor --identity
    assert cli.json("revoke", "usb:has space", expect=ExitCode.USAGE)["reason"] == "usage"
    assert cli.json("check", "/etc/hostname", expect=ExitCode.STICK_REFUSED)["reason"] == "stick-not-block"
    assert cli.json("list") == []


# ------------------------------------------------------------------ check (root, udevd, loop devices)
@pytest.fixture
def fat_loop(udevd, tmp_path: Path):
    """A loop device with a fresh FAT32 image, once udev has probed it: (device, fs UUID)."""
    volid = secrets.randbits(32) | 0x10000000
    uuid = f"{volid >> 16:04X}-{volid & 0xFFFF:04X}"
    image = make_image(tmp_path / "stick.img", 32, volid=f"{volid:08X}", label="PANOLOOP")
    with loop_device(image) as dev:
        udevd.wait_properties(dev, lambda p: p.get("ID_FS_UUID") == uuid, what="the FAT filesystem")
        yield dev, uuid


@needs_root
def test_check_says_why_a_loop_device_is_ignored(cli: Cli, fat_loop) -> None:
    dev, uuid = fat_loop
    refused = cli.json("check", dev, expect=ExitCode.STICK_REFUSED)
    assert not refused["admitted"] and refused["decisions"][0]["reason"] == "not USB mass storage"
    assert "allow_non_usb" in refused["decisions"][0]["hint"]

    lab = {"PANOSTAGE_STICKS_ALLOW_NON_USB": "1"}
    pending = cli.json("check", dev, expect=ExitCode.STICK_REFUSED, **lab)
    assert pending["decisions"][0]["reason"] == f"not enrolled: fs:{uuid}"
    assert pending["decisions"][0]["hint"] == f"enroll it: panostage stick enroll {dev}"
    human = cli.run("check", dev, **lab)
    assert human.returncode == ExitCode.STICK_REFUSED and f"{dev}: ignored: not enrolled: fs:{uuid}" in human.stdout

    enrolled = cli.json("enroll", dev, **lab)
    assert (enrolled["identity"], enrolled["label"], enrolled["warnings"]) == (f"fs:{uuid}", "PANOLOOP", [])
    admitted = cli.json("check", dev, **lab)
    assert admitted["admitted"] and admitted["decisions"][0]["identity"] == f"fs:{uuid}"
    assert admitted["decisions"][0]["info"]["fs_type"] == "vfat"

    other = cli.json("check", dev, expect=ExitCode.STICK_REFUSED, PANOSTAGE_STICKS_LABEL="STICK*", **lab)
    assert other["decisions"][0]["reason"] == "label 'PANOLOOP' does not match 'STICK*'"
    cli.json("revoke", f"fs:{uuid}")
    assert cli.json("check", dev, expect=ExitCode.STICK_REFUSED, **lab)["decisions"][0]["reason"].startswith(
        "not enrolled"
    )


@needs_root
def test_enroll_by_device_warns_when_the_policy_would_still_ignore_it(cli: Cli, fat_loop) -> None:
    dev, uuid = fat_loop
    enrolled = cli.json("enroll", dev, "--label", "bench")
    assert enrolled["identity"] == f"fs:{uuid}" and enrolled["label"] == "bench"
    assert enrolled["warnings"] == ["enrolled, but the policy still ignores it: not USB mass storage"]


# ------------------------------------------------------------------ prepare (root, udevd, loop devices)
@pytest.fixture
def blank_loop(udevd, tmp_path: Path):
    @contextlib.contextmanager
    def attach(size: str = "64M"):
        image = tmp_path / f"blank-{size}.img"
        run("truncate", "-s", size, str(image))
        with loop_device(image) as dev:
            udevd.settle()  # udevd has handled the add event, so its inotify watch on the node is set
            yield dev

    return attach


@needs_root
def test_prepare_refuses_a_fixed_device_without_force(cli: Cli, blank_loop) -> None:
    with blank_loop() as dev:
        error = cli.json("prepare", dev, expect=ExitCode.STICK_REFUSED)
        assert error["reason"] == "stick-not-removable" and "--force" in error["hint"]
        with open(dev, "rb") as handle:
            assert handle.read(1 << 20) == bytes(1 << 20)  # untouched


@needs_root
def test_prepare_refuses_a_mounted_device(cli: Cli, udevd, tmp_path: Path) -> None:
    image = ext4_image(tmp_path / "ext4.img", "16M")
    with loop_device(image) as dev, mounted(dev, tmp_path / "mnt"):
        error = cli.json("prepare", dev, "--force", expect=ExitCode.STICK_REFUSED)
        assert error["reason"] == "stick-mounted" and str(tmp_path / "mnt") in error["message"]
    assert run("e2fsck", "-fn", str(image), check=False).returncode == 0  # the ext4 filesystem is intact


@needs_root
def test_prepare_refuses_a_disk_with_a_mounted_partition_and_the_partition_itself(
    cli: Cli, udevd, tmp_path: Path
) -> None:
    image = make_mbr_image(tmp_path / "mbr.img", [(0x0C, 2048, 30720)], size_mb=24)
    mkfs_at(image, 2048, 30720, bits=16, label="PART")
    proc = run("losetup", "-f", "--show", "-P", str(image), check=False)
    if proc.returncode != 0:
        pytest.skip(f"no loop device: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        part = f"{dev}p1"
        udevd.settle()
        if not Path(part).exists():
            pytest.skip("the kernel made no partition device for the loop (no MBR support: CONFIG_MSDOS_PARTITION)")
        assert cli.json("prepare", part, "--force", expect=ExitCode.STICK_REFUSED)["reason"] == "stick-partition"
        with mounted(part, tmp_path / "mnt"):
            error = cli.json("prepare", dev, "--force", expect=ExitCode.STICK_REFUSED)
            assert error["reason"] == "stick-mounted" and part in error["message"]
    finally:
        run("losetup", "-d", dev, check=False)
        udevd.settle()
    assert raw_contains(image, b"PART       ")  # the partition's boot sector was not touched


@needs_root
def test_prepare_formats_fat32_and_enrolls_the_new_uuid(cli: Cli, udevd, blank_loop) -> None:
    with blank_loop("64M") as dev:
        made = cli.json("prepare", dev, "--force", "--label", "pano 01", "--note", "bench stick")
        assert (made["fat_bits"], made["label"], made["is_usb"], made["enrolled"], made["forced"]) == (
            32,
            "PANO 01",
            False,
            True,
            True,
        )
        uuid = made["fs_uuid"]
        assert made["identity"] == f"fs:{uuid}" and made["size_bytes"] == 64 << 20
        assert any("not removable" in w for w in made["warnings"]) and any("1 GB" in w for w in made["warnings"])
        fsck(dev)
        # closing our read-write descriptor made udev re-probe: it knows the new filesystem
        udevd.wait_properties(
            dev, lambda p: p.get("ID_FS_UUID") == uuid and p.get("ID_FS_TYPE") == "vfat", what="the new filesystem"
        )
        listed = {r["identity"]: r for r in cli.json("list")}
        assert listed[f"fs:{uuid}"]["label"] == "PANO 01" and listed[f"fs:{uuid}"]["note"] == "bench stick"
        assert cli.json("check", dev, PANOSTAGE_STICKS_ALLOW_NON_USB="1")["admitted"]

        again = cli.json("prepare", dev, "--force")  # a prepared stick can be prepared again: a new UUID
        assert again["fs_uuid"] != uuid and again["label"] == "PANOSTAGE"
        fsck(dev)


@needs_root
def test_prepare_small_device_gets_fat16_and_a_label_matching_the_policy(cli: Cli, blank_loop) -> None:
    with blank_loop("16M") as dev:
        wrong = cli.json(
            "prepare", dev, "--force", "--label", "OTHER", expect=ExitCode.VALIDATION, PANOSTAGE_STICKS_LABEL="PANO*"
        )
        assert wrong["reason"] == "stick-label"
        made = cli.json("prepare", dev, "--force", PANOSTAGE_STICKS_LABEL="PANOLAB")
        assert made["fat_bits"] == 16 and made["label"] == "PANOLAB"
        assert any("FAT16" in w for w in made["warnings"])
        fsck(dev)
        refused = cli.json("prepare", dev, "--force", "--label", "much too long a label", expect=ExitCode.VALIDATION)
        assert refused["reason"] == "stick-label"


@needs_root
def test_prepare_refuses_a_device_that_changes_underneath(udevd, tmp_path: Path, monkeypatch, capsys) -> None:
    """The loop device gets another backing file while mkfs.fat holds it (a new medium): refused, and
    the enrollment made for this attempt is withdrawn.  In-process, to swap the medium at that moment."""
    from agent.cli import main
    from agent.state import StateDB
    from agent.stick import prepare as prep

    other = tmp_path / "other.img"
    run("truncate", "-s", "64M", str(other))
    real_mkfs = prep._mkfs

    def mkfs_then_swap(argv):
        result = real_mkfs(argv)
        dev = argv[-1]
        backing = Path(f"/sys/block/{Path(dev).name}/loop/backing_file")

        def swapped() -> bool:  # detaching is lazy while udev still probes the device (udev watch)
            if backing.exists():
                if backing.read_text().strip() == str(other):
                    return True
                run("losetup", "-d", dev, check=False)
                return False
            run("losetup", dev, str(other), check=False)  # same name and number, another medium (new diskseq)
            return False

        wait_for(swapped, timeout=20, what=f"{dev} to take {other}")
        return result

    blank = tmp_path / "blank.img"
    run("truncate", "-s", "64M", str(blank))
    state = tmp_path / "state"
    for var in [v for v in os.environ if v.startswith("PANOSTAGE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PANOSTAGE_SYSTEM_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with loop_device(blank) as dev:
        monkeypatch.setattr(prep, "_mkfs", mkfs_then_swap)
        code = main(["--state-dir", str(state), "stick", "prepare", dev, "--force", "--json"])
        error = json.loads(capsys.readouterr().err.splitlines()[-1])["error"]
        assert (code, error["reason"]) == (ExitCode.STICK_REFUSED, "stick-replaced")
        before, now = error["details"]["before"], error["details"]["now"]
        assert before["rdev"] == now["rdev"] and before["size"] == now["size"]  # only the medium differs
        assert before["diskseq"] != now["diskseq"]
    rows = StateDB(state).enrolled(include_revoked=True)
    assert len(rows) == 1 and rows[0]["identity"].startswith("fs:") and rows[0]["revoked_at"]  # withdrawn
