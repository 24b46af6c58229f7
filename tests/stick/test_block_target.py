"""Block devices (loop devices over real images): exclusivity, mount detection, round trips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import ExitCode
from agent.stick import DirectoryTarget, FatTarget, StickRefused, open_target
from agent.stick.fatopen import open_held
from tests.fat_kit import ext4_image, fsck, loop_device, make_image, mounted, needs_root, run

pytestmark = needs_root
NAME = "certificates-omni_lab-device-1.zip"


def test_round_trip_on_a_loop_device(image: Path) -> None:
    data = b"PK\x03\x04" + os.urandom(5 * 1024)
    with loop_device(image) as dev:
        with open_target(dev) as target:
            assert isinstance(target, FatTarget) and target.kind == "block"
            desc = target.describe()
            assert (
                desc["fs_uuid"] == "1234-ABCD"
                and desc["rdev"] == f"{os.major(os.stat(dev).st_rdev)}:{os.minor(os.stat(dev).st_rdev)}"
            )
            target.write_atomic(NAME, data)
            assert target.read(NAME) == data  # BLKFLSBUF + DONTNEED first: from the device
            target.write("panorama/occ.log", b"log\n")
            assert target.wipe(NAME) > 0
            target.write_atomic(NAME, data)
        fsck(dev)
    assert data in image.read_bytes()  # it reached the backing image, not only a cache
    fsck(image)


def test_exclusive_hold_blocks_mount(tmp_path: Path) -> None:
    """O_EXCL on the device makes mount(2) fail; released, the same mount works (ext4: no vfat module here)."""
    img = ext4_image(tmp_path / "e.img")
    where = tmp_path / "mnt"
    where.mkdir()
    with loop_device(img) as dev:
        fd, writable = open_held(Path(dev), True, os.stat(dev))
        try:
            assert writable
            busy = run("mount", dev, str(where), check=False)
            assert busy.returncode != 0 and "busy" in (busy.stderr + busy.stdout)
            assert not os.path.ismount(where)
        finally:
            os.close(fd)
        with mounted(dev, where):
            assert os.path.ismount(where)


def test_held_fat_device_refuses_a_second_claim_but_mtools_works(image: Path) -> None:
    with loop_device(image) as dev:
        with open_target(dev) as target:
            with pytest.raises(StickRefused) as err:
                open_target(dev)
            assert err.value.reason == "stick-busy"
            target.write_atomic(NAME, b"while held")  # mtools opens without O_EXCL and still works
            assert target.read(NAME) == b"while held"
        with open_target(dev) as again:  # released on close
            assert again.read(NAME) == b"while held"


def test_mounted_device_yields_a_directory_target(tmp_path: Path) -> None:
    img = ext4_image(tmp_path / "e.img")
    with loop_device(img) as dev, mounted(dev, tmp_path / "mnt") as where:
        with pytest.raises(StickRefused) as err:
            open_target(dev)  # mounted, and not FAT
        assert err.value.reason == "stick-not-fat"
        with open_target(dev, allow_non_fat=True) as target:
            assert isinstance(target, DirectoryTarget) and target.path == where.resolve()
            target.write_atomic(NAME, b"via the mount")
        assert (where / NAME).read_bytes() == b"via the mount"


def test_read_only_mounted_device_is_refused(tmp_path: Path) -> None:
    img = ext4_image(tmp_path / "e.img")
    with loop_device(img) as dev, mounted(dev, tmp_path / "mnt", "-o", "ro"):
        with pytest.raises(StickRefused) as err:
            open_target(dev, allow_non_fat=True)
        assert err.value.reason == "stick-read-only" and err.value.exit_code == ExitCode.STICK_REFUSED


def test_read_only_device(image: Path) -> None:
    with open_target(image) as target:
        target.write_atomic(NAME, b"kept")
    with loop_device(image, readonly=True) as dev, open_target(dev) as target:
        assert target.writable is False and target.read(NAME) == b"kept"
        with pytest.raises(StickRefused) as err:
            target.write_atomic(NAME, b"x")
        assert err.value.reason == "stick-read-only"


def test_image_attached_to_a_loop_device_is_refused(image: Path) -> None:
    with loop_device(image) as dev:
        with pytest.raises(StickRefused) as err:
            open_target(image)
        assert dev in err.value.message


def test_format_on_a_device_keeps_label_and_volume_id(tmp_path: Path) -> None:
    img = make_image(tmp_path / "f.img", 32, label="KEEPME", volid="CAFEF00D")
    with loop_device(img) as dev:
        with open_target(dev) as target:
            target.write_atomic(NAME, b"gone after format")
            target.format()
            assert target.list_root() == []
            assert (target.fs_info().label, target.fs_info().uuid) == ("KEEPME", "CAFE-F00D")
            with pytest.raises(StickRefused):
                open_target(dev)  # claimed again after mkfs.fat
        fsck(dev)


def test_mounted_partition_of_the_device_is_detected(tmp_path: Path) -> None:
    """The whole disk is passed while its partition is mounted: use that mount, never write raw."""
    from tests.fat_kit import make_mbr_image

    img = make_mbr_image(tmp_path / "disk.img", [(0x83, 2048, 30720)], size_mb=16)
    run("mkfs.ext4", "-q", "-F", "-E", f"offset={2048 * 512}", str(img), "15M")
    proc = run("losetup", "-f", "--show", "-P", str(img), check=False)
    if proc.returncode != 0:
        pytest.skip(f"no partitioned loop device: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        part = f"{dev}p1"
        from tests.fat_kit import wait_for

        try:
            wait_for(lambda: os.path.exists(part), timeout=5, what=f"{part} to appear")
        except AssertionError:
            pytest.skip("this kernel does not scan MBR partitions on loop devices")
        with mounted(part, tmp_path / "mnt") as where:
            with open_target(dev, allow_non_fat=True) as target:
                assert isinstance(target, DirectoryTarget) and target.path == where.resolve()
            with pytest.raises(StickRefused):
                FatTarget.open(dev)  # O_EXCL on the whole disk fails while a partition is mounted
    finally:
        run("losetup", "-d", dev, check=False)
