"""FatTarget on real FAT image files: writes with mtools, reads back, never leaves a mess."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.errors import ExitCode
from agent.stick import (
    FatTarget,
    StickConflict,
    StickIOError,
    StickRefused,
    archives,
    check_space,
    leftovers,
    name_state,
    open_target,
    preflight,
    require,
)
from agent.stick.blockio import drop_cache
from agent.stick.model import temp_name
from agent.stick.mtools import memory_file
from tests.fat_kit import ext4_image, fsck, make_image, make_mbr_image, mkfs_at, mtools, raw_contains, run

NAME = "certificates-omni_lab-device-1.zip"


def archive_bytes(size: int = 5 * 1024) -> bytes:
    """Recognisable, incompressible bytes (a stand-in for an archive with a private key)."""
    return b"PK\x03\x04SECRET-KEY-" + os.urandom(size - 15)


def no_temp(target) -> None:
    assert leftovers(target) == [], "a temporary file was left behind"


@pytest.mark.parametrize("bits", [12, 16, 32])
def test_round_trip(tmp_path: Path, bits: int) -> None:
    img = make_image(tmp_path / "s.img", bits)
    data = archive_bytes()
    with open_target(img) as target:
        assert isinstance(target, FatTarget) and target.kind == "image"
        assert name_state(target, NAME).state == "absent"
        report = target.write_atomic(NAME, data)
        assert report.size == len(data) and not report.replaced
        assert {"copy", "fsync", "rename", "fsync_rename"} <= set(report.durations_ms)
        assert target.read(NAME, bypass_cache=True) == data
        assert target.last_read_mode == "O_DIRECT"  # an independent reader, from the medium
        assert target.read(NAME, bypass_cache=False) == data and target.last_read_mode == "mtools"
        assert [e.name for e in archives(target)] == [NAME]
        no_temp(target)
        info = target.fs_info()
        assert (info.fs_type, info.fat_bits, info.label, info.uuid) == ("vfat", bits, "PANOSTICK", "1234-ABCD")
        desc = target.describe()
        assert desc["fs_uuid"] == "1234-ABCD" and desc["kind"] == "image" and desc["path"] == str(img)
    with open_target(img, readback="mtools") as target:  # the other read-back: drop caches, then mcopy
        assert target.read(NAME, bypass_cache=True) == data and target.last_read_mode == "mtools+drop-cache"
    # an independent reader (mtools, from scratch) sees the same bytes under the right name
    assert mtools("mcopy", "-i", str(img), f"::{NAME}", "-").stdout == data
    fsck(img)


def test_replace_is_atomic_and_scrubs_the_old_copy(image: Path) -> None:
    old, new = archive_bytes(), archive_bytes(9000)
    mtools("mcopy", "-i", str(image), "-", "::CERTIFICATES-OMNI_LAB-DEVICE-1.ZIP", stdin=old)
    mtools("mattrib", "-i", str(image), "+r", "::CERTIFICATES-OMNI_LAB-DEVICE-1.ZIP")
    with open_target(image) as target:
        state = name_state(target, NAME)
        assert (state.state, state.readonly, state.stored_name) == ("file", True, "CERTIFICATES-OMNI_LAB-DEVICE-1.ZIP")
        report = target.write_atomic(NAME, new)
        assert report.replaced and report.scrubbed_bytes >= len(old)
        assert target.read(NAME) == new
        assert [e.name for e in target.list_root()] == [NAME]  # one file, our spelling
        no_temp(target)
    assert not raw_contains(image, old[:64]), "the replaced archive's bytes are still on the stick"
    fsck(image)


def test_refuses_to_replace_a_directory(image: Path) -> None:
    mtools("mmd", "-i", str(image), f"::{NAME}")
    with open_target(image) as target:
        assert name_state(target, NAME).state == "dir"
        found = preflight(target, NAME, 5000)
        assert not found.ok and "dir" in found.problems[0]
        with pytest.raises(StickConflict) as err:
            require(found)
        assert err.value.exit_code == ExitCode.CONFLICT
        with pytest.raises(StickConflict) as err:
            target.write_atomic(NAME, b"x")
        assert err.value.reason == "stick-name-is-dir"
        with pytest.raises(StickConflict):
            target.write_atomic(NAME, b"x", replace=False)
        no_temp(target)
    fsck(image)


def test_refuses_an_existing_file_when_not_replacing(image: Path) -> None:
    with open_target(image) as target:
        target.write_atomic(NAME, b"one")
        with pytest.raises(StickConflict) as err:
            target.write_atomic(NAME, b"two", replace=False)
        assert err.value.reason == "stick-name-exists"
        assert target.read(NAME) == b"one"
    fsck(image)


def test_full_stick_is_refused_cleanly(tmp_path: Path) -> None:
    img = make_image(tmp_path / "tiny.img", 12, size="200K")
    with open_target(img) as target:
        free = target.fs_info().free_bytes
        target.write("filler.bin", os.urandom(free - 2 * 1024))  # leaves a cluster or two
        assert target.fs_info().free_bytes < 5 * 1024
        found = preflight(target, NAME, 5 * 1024)
        assert not found.ok and "space" in found.problems[0]
        with pytest.raises(StickRefused) as err:
            check_space(target, 5 * 1024)
        assert (err.value.reason, err.value.exit_code) == ("stick-full", ExitCode.IO)
        with pytest.raises(StickRefused) as err:
            target.write_atomic(NAME, archive_bytes())
        assert (err.value.reason, err.value.exit_code) == ("stick-full", ExitCode.IO)
        assert target.lookup(NAME) is None
        no_temp(target)
    fsck(img)


def test_mtools_disk_full_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our space check skipped: mcopy itself meets a full disk; the fs is restored and the error is clean."""
    img = make_image(tmp_path / "tiny.img", 12, size="200K")
    with open_target(img) as target:
        target.write("filler.bin", os.urandom(target.fs_info().free_bytes - 4 * 1024))
        monkeypatch.setattr(type(target), "check_room", lambda self, name, size, freeing=(): None)
        with pytest.raises(StickIOError) as err:
            target.write_atomic(NAME, archive_bytes(20 * 1024))
        assert err.value.step == "copy" and err.value.exit_code == ExitCode.IO
        assert "ENOSPC" in str(err.value) or "Disk full" in str(err.value)
        assert target.lookup(NAME) is None
        no_temp(target)
    fsck(img)


def test_read_only_image_file(image: Path) -> None:
    with open_target(image) as target:
        target.write_atomic(NAME, b"kept")
    image.chmod(0o444)
    try:
        with open_target(image) as target:
            assert target.writable is False
            assert target.read(NAME) == b"kept"
            with pytest.raises(StickRefused) as err:
                target.write_atomic(NAME, b"new")
            assert (err.value.reason, err.value.exit_code) == ("stick-read-only", ExitCode.STICK_REFUSED)
            for call in (
                lambda: target.wipe(NAME),
                lambda: target.write("panorama/x.log", b"x"),
                lambda: target.remove(NAME),
                lambda: target.format(),
            ):
                with pytest.raises(StickRefused):
                    call()
    finally:
        image.chmod(0o644)
    fsck(image)


@pytest.mark.parametrize("kind, found", [("ext4", "ext4"), ("random", "unrecognised"), ("zeros", "only zeros")])
def test_non_fat_image_is_refused(tmp_path: Path, kind: str, found: str) -> None:
    path = tmp_path / "not-fat.img"
    if kind == "ext4":
        ext4_image(path)
    else:
        path.write_bytes(bytes(4 << 20) if kind == "zeros" else b"\x17" + os.urandom(4 << 20))
    with pytest.raises(StickRefused) as err:
        open_target(path)
    assert err.value.reason == "stick-not-fat" and err.value.exit_code == ExitCode.STICK_REFUSED
    assert found in err.value.message and found in err.value.details["found"]


PART_START, PART_SECTORS = 2048, 143360  # 70 MiB: a real FAT32 (>= 65525 clusters)


def test_partitioned_image_is_found_and_written(tmp_path: Path) -> None:
    img = make_mbr_image(tmp_path / "p.img", [(0x0C, PART_START, PART_SECTORS)], size_mb=72)
    mkfs_at(img, PART_START, PART_SECTORS)
    mbr = img.read_bytes()[:512]
    data = archive_bytes()
    offset = PART_START * 512
    with open_target(img) as target:
        desc = target.describe()
        assert (desc["offset"], desc["partition"], desc["fs_uuid"], desc["label"]) == (offset, 1, "1111-2222", "PART")
        target.write_atomic(NAME, data)
        assert target.read(NAME) == data
        target.format()  # mkfs.fat --offset: the partition only
        assert target.list_root() == [] and target.describe()["fs_uuid"] == "1111-2222"
        target.write_atomic(NAME, data)
    with open_target(f"{img}@@{offset}") as target:  # the explicit mtools-style offset
        assert target.read(NAME) == data and "partition" not in target.describe()
    assert img.read_bytes()[:512] == mbr
    fsck(img, offset=offset, length=PART_SECTORS * 512)


def test_undersized_fat32_is_refused(tmp_path: Path) -> None:
    """mkfs.fat makes FAT32 with too few clusters on request; mtools would treat it as FAT16."""
    img = make_image(tmp_path / "small32.img", 32, size="20M")
    with pytest.raises(StickRefused) as err:
        open_target(img)
    assert err.value.reason == "stick-unsupported-layout" and "65525" in err.value.message


def test_ambiguous_or_foreign_partitions_are_refused(tmp_path: Path) -> None:
    two = make_mbr_image(tmp_path / "two.img", [(0x0C, 2048, 20480), (0x06, 22528, 20480)])
    with pytest.raises(StickRefused) as err:
        open_target(two)
    assert err.value.reason == "stick-unsupported-layout"
    mkfs_at(two, 22528, 20480, bits=16)
    with open_target(two, partition=2) as target:
        assert target.describe()["partition"] == 2
    gpt = make_mbr_image(tmp_path / "gpt.img", [(0xEE, 1, 40000)])
    with pytest.raises(StickRefused) as err:
        open_target(gpt)
    assert "GPT" in err.value.message
    empty = make_mbr_image(tmp_path / "empty.img", [(0x0C, 2048, 20480)])
    with pytest.raises(StickRefused) as err:
        open_target(empty)
    assert "partition 1 holds only zeros" in err.value.message


def test_wipe_leaves_no_archive_bytes(image: Path) -> None:
    data = archive_bytes(70 * 1024)  # many clusters
    with open_target(image) as target:
        target.write_atomic(NAME, data)
        assert raw_contains(image, data[:4096]) and raw_contains(image, data[-4096:])
        zeroed = target.wipe(NAME)
        assert zeroed >= len(data)
        assert target.lookup(NAME) is None
        with pytest.raises(StickIOError):
            target.wipe(NAME)
        assert target.wipe(NAME, missing_ok=True) == 0
    raw = image.read_bytes()
    for start in range(0, len(data) - 64, 512):
        assert data[start : start + 64] not in raw, f"archive bytes at +{start} survived the wipe"
    fsck(image)


def test_panorama_logs_round_trip(image: Path) -> None:
    logs = {name: f"{name} line\n".encode() * 50 for name in ("occ.log", "ota_agent.log", "syslog.log", "kern.log")}
    with open_target(image) as target:
        for name, body in logs.items():
            target.write(f"panorama/{name}", body)
        target.write("/panorama/occ.log", logs["occ.log"] + b"more\n")  # rewrite in place
        listing = {e.name: e for e in target.list_dir("panorama")}
        assert set(listing) == set(logs) and listing["occ.log"].size == len(logs["occ.log"]) + 5
        assert target.read("PANORAMA/KERN.LOG") == logs["kern.log"]
        assert target.read("panorama/occ.log", bypass_cache=False).endswith(b"more\n")
        for name in logs:
            target.wipe(f"panorama/{name}")
        target.remove("panorama")
        assert target.list_root() == []
        target.write_atomic("x.zip", b"1")
        with pytest.raises(StickConflict):
            target.write("x.zip/y", b"")  # a file is in the way of a directory
    fsck(image)


def test_stale_temp_from_a_crash_is_wiped(image: Path) -> None:
    stale = temp_name(NAME, 4242)
    secret = archive_bytes()
    mtools("mcopy", "-i", str(image), "-", f"::{stale}", stdin=secret)
    with open_target(image) as target:
        assert [e.name for e in leftovers(target)] == [stale]
        report = target.write_atomic(NAME, b"fresh")
        assert report.scrubbed_bytes >= len(secret)
        no_temp(target)
    assert not raw_contains(image, secret[:64])
    fsck(image)


def test_format_keeps_label_and_volume_id(tmp_path: Path) -> None:
    for bits in (16, 32):
        img = make_image(tmp_path / f"f{bits}.img", bits, label="KEEPME", volid="CAFEF00D")
        with open_target(img) as target:
            target.write_atomic(NAME, archive_bytes())
            before = target.geo
            target.format()
            assert target.list_root() == []
            info = target.fs_info()
            assert (info.label, info.uuid, info.fat_bits) == ("KEEPME", "CAFE-F00D", bits)
            assert (target.geo.cluster_size, target.geo.total_sectors) == (before.cluster_size, before.total_sectors)
            target.format("RELABELED")
            assert (target.fs_info().label, target.fs_info().uuid) == ("RELABELED", "CAFE-F00D")
            target.write_atomic(NAME, b"after format")
            assert target.read(NAME) == b"after format"
        fsck(img)


def test_second_writer_on_the_same_image_is_refused(image: Path) -> None:
    with open_target(image):
        with pytest.raises(StickRefused) as err:
            open_target(image)
        assert err.value.reason == "stick-busy"


def test_bytes_reach_mtools_through_a_sealed_memfd() -> None:
    fd = memory_file(b"secret")
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:panostage-archive")
        with pytest.raises(PermissionError):
            os.write(fd, b"more")  # sealed: nobody can change what mtools reads
        assert os.read(fd, 100) == b"secret"
    finally:
        os.close(fd)


def test_drop_cache_evicts_the_image_from_the_page_cache(image: Path) -> None:
    if subprocess.run(["which", "fincore"], capture_output=True).returncode != 0:
        pytest.skip("fincore (util-linux) not installed")
    with open_target(image) as target:
        target.write_atomic(NAME, archive_bytes())
        target.list_root()

        def resident() -> int:
            out = run("fincore", "--bytes", "--noheadings", "--output", "RES", str(image)).stdout
            return int(out.split()[0])

        assert resident() > 0
        drop_cache(target.fd, block=False)
        assert resident() == 0


def test_names_fat_cannot_hold_are_refused(image: Path) -> None:
    from agent.stick import StickNameError

    with open_target(image) as target:
        for bad in ("certificates-omni_" + "x" * 250 + ".zip", "a*b.zip", "a?.zip", "../x.zip", "dir/x.zip"):
            with pytest.raises(StickNameError) as err:
                target.write_atomic(bad, b"x")
            assert err.value.exit_code == ExitCode.VALIDATION
        longest = "certificates-omni_" + "d" * (255 - len("certificates-omni_.zip")) + ".zip"
        assert len(longest) == 255 and len(temp_name(longest, os.getpid())) <= 255  # the temp name shrinks
        target.write_atomic(longest, b"fits")
        assert target.read(longest) == b"fits"
        no_temp(target)
    fsck(image)


def test_targets_follow_the_protocol(image: Path, tmp_path: Path) -> None:
    from agent.stick import StickTarget

    with open_target(image) as fat, open_target(tmp_path, allow_non_fat=True) as directory:
        assert isinstance(fat, StickTarget) and isinstance(directory, StickTarget)


def test_without_memfd_the_bytes_go_to_an_unnamed_tmpfs_file_or_nowhere(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memfd(*args, **kwargs):
        raise OSError(38, "Function not implemented")

    from agent.stick.mounts import mount_of

    if mount_of(Path("/dev/shm")).fstype != "tmpfs" or mount_of(tmp_path).fstype in ("tmpfs", "ramfs"):
        pytest.skip("needs /dev/shm on tmpfs and the test's tmp_path on a disk")
    monkeypatch.setattr(os, "memfd_create", no_memfd)
    with open_target(image, runtime_dir=Path("/dev/shm")) as target:  # tmpfs: an O_TMPFILE, never named
        target.write_atomic(NAME, b"via O_TMPFILE")
        assert target.read(NAME) == b"via O_TMPFILE"
    with open_target(image, runtime_dir=tmp_path) as target:  # a persistent disk: refused
        with pytest.raises(StickIOError) as err:
            target.write_atomic(NAME, b"never on disk")
        assert err.value.step == "memfd"
        assert target.read(NAME) == b"via O_TMPFILE"
    assert list(tmp_path.iterdir()) == [image]
    fsck(image)
