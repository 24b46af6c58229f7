"""DirectoryTarget: a mounted stick, reached by system calls relative to a held directory descriptor."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.errors import ExitCode
from agent.stick import (
    DirectoryTarget,
    StickConflict,
    StickIOError,
    StickRefused,
    leftovers,
    name_state,
    open_target,
    preflight,
)
from agent.stick.model import temp_name
from tests.fat_kit import IS_ROOT, fsck, make_image, mounted, needs_root, run, wait_for

NAME = "certificates-omni_lab-device-1.zip"


@pytest.fixture
def stick(tmp_path: Path) -> DirectoryTarget:
    root = tmp_path / "stick"
    root.mkdir()
    target = open_target(root, allow_non_fat=True)
    yield target
    target.close()


def test_round_trip_reads_back_with_o_direct(stick: DirectoryTarget) -> None:
    data = os.urandom(5 * 1024)
    report = stick.write_atomic(NAME, data)
    assert list(report.durations_ms) == ["inspect", "stale_temps", "create", "write", "fsync", "rename", "fsync_dir"]
    assert stick.read(NAME) == data
    assert stick.last_read_mode == "O_DIRECT"  # ext4 under /tmp supports it
    assert stick.read(NAME, bypass_cache=False) == data and stick.last_read_mode == "cached"
    assert (stick.path / NAME).stat().st_mode & 0o777 == 0o600
    assert leftovers(stick) == []
    info = stick.fs_info()
    assert info.free_bytes and info.size_bytes and info.fat_bits is None
    assert stick.describe()["path"] == str(stick.path)


def test_replace_existing_file_and_scrub_the_old_inode(stick: DirectoryTarget) -> None:
    (stick.path / NAME).write_bytes(b"old archive")
    (stick.path / NAME).chmod(0o444)
    old = os.open(stick.path / NAME, os.O_RDONLY)  # keep the old inode alive to look at it afterwards
    try:
        report = stick.write_atomic(NAME, b"new archive")
        assert report.replaced and report.scrubbed_bytes == len(b"old archive")
        assert os.pread(old, 100, 0) == bytes(len(b"old archive"))  # overwritten with zeros once replaced
    finally:
        os.close(old)
    assert stick.read(NAME) == b"new archive"


def test_refusals_for_directory_symlink_and_special_file(stick: DirectoryTarget, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"must not change")
    cases = {"dir": lambda p: p.mkdir(), "symlink": lambda p: p.symlink_to(outside), "other": lambda p: os.mkfifo(p)}
    for kind, make in cases.items():
        make(stick.path / NAME)
        assert name_state(stick, NAME).state == kind
        assert not preflight(stick, NAME, 10).ok
        with pytest.raises(StickConflict) as err:
            stick.write_atomic(NAME, b"x")
        assert err.value.reason == f"stick-name-is-{kind}" and err.value.exit_code == ExitCode.CONFLICT
        assert leftovers(stick) == []
        if kind == "other":
            with pytest.raises(StickConflict):
                stick.read(NAME)  # a FIFO: refused, not waited on
        if kind == "symlink":
            with pytest.raises(StickConflict):
                stick.read(NAME)
            with pytest.raises(StickConflict):
                stick.wipe(NAME)
        entry = next(e for e in stick.list_root() if e.name == NAME)
        assert entry.kind == kind
        (stick.path / NAME).rmdir() if kind == "dir" else (stick.path / NAME).unlink()
    assert outside.read_bytes() == b"must not change"


def test_symlinked_parent_is_never_followed(stick: DirectoryTarget, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (stick.path / "panorama").symlink_to(elsewhere)
    with pytest.raises(StickConflict):
        stick.write("panorama/occ.log", b"x")
    assert list(elsewhere.iterdir()) == []


def test_not_fat_is_refused_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(StickRefused) as err:
        open_target(tmp_path)
    assert err.value.reason == "stick-not-fat" and err.value.exit_code == ExitCode.STICK_REFUSED
    open_target(tmp_path, allow_non_fat=True).close()


def test_read_only_directory_by_permissions(stick: DirectoryTarget) -> None:
    stick.path.chmod(0o555)
    try:
        with pytest.raises(StickRefused) as err:
            stick.write_atomic(NAME, b"x")
        assert err.value.reason == "stick-read-only"
    finally:
        stick.path.chmod(0o755)
    assert list(stick.path.iterdir()) == []


@needs_root
def test_read_only_mount(tmp_path: Path) -> None:
    with (
        mounted("tmpfs", tmp_path / "ro", "-t", "tmpfs", "-o", "ro,size=1m") as where,
        open_target(where, allow_non_fat=True) as target,
    ):
        with pytest.raises(StickRefused) as err:
            target.write_atomic(NAME, b"x")
        assert "read-only" in err.value.message


@needs_root
def test_full_filesystem_fails_cleanly(tmp_path: Path) -> None:
    with (
        mounted("tmpfs", tmp_path / "small", "-t", "tmpfs", "-o", "size=64k") as where,
        open_target(where, allow_non_fat=True) as target,
    ):
        with pytest.raises(StickIOError) as err:
            target.write_atomic(NAME, os.urandom(256 * 1024))
        assert (err.value.step, err.value.errno, err.value.exit_code) == ("write", errno.ENOSPC, ExitCode.IO)
        assert os.listdir(where) == []


def test_failure_at_rename_removes_the_temp(stick: DirectoryTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    (stick.path / NAME).write_bytes(b"previous")

    def broken_replace(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StickIOError) as err:
        stick.write_atomic(NAME, b"new")
    assert err.value.step == "rename" and err.value.errno == errno.EIO
    assert sorted(os.listdir(stick.path)) == [NAME] and (stick.path / NAME).read_bytes() == b"previous"


def test_failure_after_rename_wipes_the_new_file(stick: DirectoryTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    calls = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if fd == stick._dfd:  # the directory flush after the rename
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StickIOError) as err:
        stick.write_atomic(NAME, b"secret")
    assert err.value.step == "fsync_dir"
    assert os.listdir(stick.path) == []  # neither temp nor archive: the caller treats the write as failed


def test_stale_temp_is_wiped(stick: DirectoryTarget) -> None:
    stale = stick.path / temp_name(NAME, 4242)
    stale.write_bytes(b"old secret")
    report = stick.write_atomic(NAME, b"fresh")
    assert report.scrubbed_bytes == len(b"old secret")
    assert os.listdir(stick.path) == [NAME]


def test_logs_round_trip_and_wipe(stick: DirectoryTarget) -> None:
    stick.write("panorama/occ.log", b"occ\n" * 100)
    stick.write("/panorama/kern.log", b"kern\n")
    assert [(e.name, e.size) for e in stick.list_dir("panorama")] == [("kern.log", 5), ("occ.log", 400)]
    assert stick.read("panorama/occ.log") == b"occ\n" * 100
    inode = os.open(stick.path / "panorama" / "occ.log", os.O_RDONLY)
    try:
        assert stick.wipe("panorama/occ.log") == 400
        assert os.pread(inode, 400, 0) == bytes(400)
    finally:
        os.close(inode)
    stick.remove("panorama/kern.log")
    stick.remove("panorama")
    assert stick.list_root() == []
    with pytest.raises(StickIOError):
        stick.remove("panorama")
    stick.remove("panorama", missing_ok=True)
    assert stick.wipe("nothing", missing_ok=True) == 0


def test_format_is_refused_on_a_mounted_directory(stick: DirectoryTarget) -> None:
    with pytest.raises(StickRefused):
        stick.format()


@needs_root
def test_held_descriptor_keeps_writes_off_the_workstation_disk(tmp_path: Path) -> None:
    """Unmounted under us, the path names the workstation's directory; the write still goes to the stick."""
    where = tmp_path / "media"
    with mounted("tmpfs", where, "-t", "tmpfs", "-o", "size=1m"):
        target = open_target(where, allow_non_fat=True)
        run("umount", "-l", str(where))
        wait_for(lambda: not os.path.ismount(where), what="the lazy unmount")
        try:
            target.write_atomic(NAME, b"private key")
            assert target.read(NAME) == b"private key"
        finally:
            target.close()
    assert os.listdir(where) == [], "the archive landed on the workstation's disk"


def _fusefat_ok() -> bool:
    return IS_ROOT and shutil.which("fusefat") is not None and os.path.exists("/dev/fuse")


@pytest.mark.skipif(not _fusefat_ok(), reason="needs root, fusefat and /dev/fuse")
def test_fat_mounted_with_fusefat_is_accepted(tmp_path: Path) -> None:
    img = make_image(tmp_path / "fuse.img", 32)
    where = tmp_path / "mnt"
    where.mkdir()
    # in the foreground (-f), so the test can wait for it to finish writing the image after the unmount
    proc = subprocess.Popen(
        ["fusefat", "-f", "-o", "rw+", str(img), str(where)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: os.path.ismount(where) or proc.poll() is not None, what="the fusefat mount")
    if not os.path.ismount(where):
        pytest.skip(f"fusefat cannot mount here: {proc.communicate(timeout=30)[1].strip()}")
    try:
        with open_target(where) as target:  # FAT recognised from the mount table (fuse.fusefat)
            assert target.fat and target.describe()["fstype"] == "fuse.fusefat"
            data = os.urandom(5000)
            target.write_atomic(NAME, data)
            assert target.read(NAME) == data
        (where / "sub").mkdir()
        with pytest.raises(StickRefused) as err:
            open_target(where / "sub")
        assert err.value.reason == "stick-not-root"
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)
        proc.communicate(timeout=60)  # fusefat writes its last sectors (FSInfo, the clean bit) as it ends
    fsck(img)


def test_a_live_writers_temp_file_is_left_alone(stick: DirectoryTarget) -> None:
    live = stick.path / temp_name(NAME, 1)  # pid 1 is always alive
    live.write_bytes(b"someone else's write in progress")
    stick.write_atomic(NAME, b"ours")
    assert live.exists()
