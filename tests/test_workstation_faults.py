"""Faults on the workstation's own disk, made for real: the hand-off log, the local CA and the state
database on a full tmpfs (ENOSPC), a read-only remount (EROFS) and libfiu-injected EIO.

Every case: a clean error with exit IO (14) naming the file, nothing half-written left behind
(no temporary file, the log exactly as before and still verifying), and the next attempt works
once the fault is gone.  Mounting needs root (skipped otherwise); libfiu cases need fiu-utils.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.authority.ca import CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority
from agent.error_mapping import to_error
from agent.errors import ExitCode, PanostageError
from agent.handoff_log import HandoffLog, LogAppendFailed
from agent.state import StateDB
from tests.helpers import REPO, clean_env

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PAGE = os.sysconf("SC_PAGE_SIZE")
IS_ROOT = os.geteuid() == 0
HAVE_FIU = shutil.which("fiu-run") is not None and os.path.exists("/usr/lib/fiu/fiu_posix_preload.so")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (mounts a tmpfs)")
needs_fiu = pytest.mark.skipif(not HAVE_FIU, reason="libfiu (fiu-utils) not installed")
CHILD = Path(__file__).with_name("workstation_fiu_child.py")


# ---------------------------------------------------------------------------- real faults


@contextmanager
def tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where``, unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True, capture_output=True)


def fill(mount: Path) -> list[Path]:
    """Use up every free page of ``mount`` with one-page files (delete some to free exactly that much)."""
    pages, index = [], 0
    while True:
        path = mount / f"filler-{index:05d}"
        index += 1
        try:
            with open(path, "wb") as handle:
                handle.write(b"\0" * PAGE)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            path.unlink(missing_ok=True)
            return pages
        pages.append(path)


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def snapshot(log: HandoffLog) -> tuple[bytes, bytes]:
    return log.path.read_bytes(), log.head_path.read_bytes()


def seeded_log(state: Path, records: int = 3) -> HandoffLog:
    log = HandoffLog(state)
    for index in range(records):
        log.append("handoff", time=NOW, device={"name": f"dev{index}"}, outcome="ready")
    return log


def assert_unchanged(log: HandoffLog, before: tuple[bytes, bytes]) -> None:
    assert snapshot(log) == before
    report = log.verify()
    assert report.ok, report.problems
    assert temp_files(log.path.parent) == []


def assert_append_failed(error: PanostageError | dict, log: HandoffLog, err: int) -> None:
    data = error if isinstance(error, dict) else error.to_dict()
    assert data["exit_code"] == ExitCode.IO and data["reason"] == "log-append-failed", data
    assert str(log.path) in data["message"] and os.strerror(err) in data["message"], data["message"]
    assert data["hint"]


# ---------------------------------------------------------------------------- hand-off log: ENOSPC, EROFS


@needs_root
def test_append_running_out_of_space_mid_line_leaves_the_log_as_it_was(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt") as mnt:
        log = seeded_log(mnt / "state")
        before = snapshot(log)
        fillers = fill(mnt)
        slack = -len(before[0]) % PAGE  # what still fits in the log's last page
        note = "x" * (slack + PAGE)  # the record starts in that slack and runs out of space
        assert 0 < slack < len(note)
        with pytest.raises(LogAppendFailed) as info:
            log.append("handoff", time=NOW, note=note)
        assert_append_failed(info.value, log, errno.ENOSPC)
        assert info.value.details["step"] == "write the record"
        assert_unchanged(log, before)
        with pytest.raises(LogAppendFailed) as info:  # and the check before a hand-off says so too
            log.check_appendable()
        assert "free" in info.value.hint
        for path in fillers[:5]:  # room again (the check asks for 16 KiB)
            path.unlink()
        log.check_appendable()
        log.append("handoff", time=NOW, note=note)
        assert log.verify().ok and log.verify().records == 4


@needs_root
def test_no_room_for_the_head_undoes_the_record(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt") as mnt:
        log = seeded_log(mnt / "state")
        before = snapshot(log)
        fill(mnt)  # the (short) record fits in the log's last page; the head's temporary file has no page
        with pytest.raises(LogAppendFailed) as info:
            log.append("handoff", time=NOW, outcome="ready")
        assert_append_failed(info.value, log, errno.ENOSPC)
        assert info.value.details["step"] == "write the head"
        assert_unchanged(log, before)


@needs_root
def test_read_only_state_directory(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt") as mnt:
        log = seeded_log(mnt / "state")
        before = snapshot(log)
        remount(mnt, "ro")
        with pytest.raises(LogAppendFailed) as info:
            log.append("handoff", time=NOW, outcome="ready")
        assert_append_failed(info.value, log, errno.EROFS)
        assert "read-only" in info.value.hint
        with pytest.raises(LogAppendFailed) as info:
            log.check_appendable()
        assert_append_failed(info.value, log, errno.EROFS)
        assert_unchanged(log, before)
        remount(mnt, "rw")
        log.append("handoff", time=NOW, outcome="ready")
        assert log.verify().ok


# ---------------------------------------------------------------------------- hand-off log: libfiu


def run_child(action: str, directory: Path, point: str, at: int, err: str) -> dict:
    argv = [
        "fiu-run",
        "-x",
        "-f",
        "",
        sys.executable,
        str(CHILD),
        action,
        str(directory),
        "--point",
        point,
        "--at",
        str(at),
        "--errno",
        err,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["calls"] >= at, f"{point} was called {result['calls']} times, never the {at}-th"
    return result


APPEND_FAULTS = [  # (point, at, errno, step): the calls of one append, in order
    ("posix/io/rw/write", 1, "EIO", "write the record"),
    ("posix/io/rw/write", 1, "ENOSPC", "write the record"),
    ("posix/io/sync/fsync", 1, "EIO", "fsync the log"),
    ("posix/io/rw/write", 2, "EIO", "write the head"),
    ("posix/io/sync/fsync", 2, "EIO", "write the head"),
    ("posix/io/dir/rename", 1, "EIO", "write the head"),
    ("posix/io/sync/fsync", 3, "EIO", "fsync the state directory"),  # after the rename: the head is put back
]


@needs_fiu
@pytest.mark.parametrize("point, at, err, step", APPEND_FAULTS)
def test_append_fault_leaves_the_log_as_it_was(tmp_path: Path, point: str, at: int, err: str, step: str) -> None:
    log = seeded_log(tmp_path / "state")
    before = snapshot(log)
    result = run_child("append", log.state_dir, point, at, err)
    assert not result["ok"]
    assert_append_failed(result["error"], log, getattr(errno, err))
    assert result["error"]["details"]["step"] == step
    assert_unchanged(log, before)
    log.append("handoff", time=NOW, outcome="ready")
    assert log.verify().ok and log.verify().records == 4


@needs_fiu
def test_append_fault_on_the_first_record_leaves_no_head(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = run_child("append", state, "posix/io/sync/fsync", 3, "EIO")  # the very first head is taken back
    assert result["error"]["exit_code"] == ExitCode.IO
    log = HandoffLog(state)
    assert log.path.read_bytes() == b"" and not log.head_path.exists() and temp_files(state) == []
    assert log.verify().ok
    log.check_appendable()


@needs_fiu
def test_short_writes_still_append_whole_lines(tmp_path: Path) -> None:
    """A write that takes only part of the line (as on a nearly full disk) is continued, not ignored."""
    log = seeded_log(tmp_path / "state")
    result = run_child("append", log.state_dir, "posix/io/rw/write/reduce", 1, "EIO")
    assert result["ok"], result
    report = log.verify()
    assert report.ok and report.records == 4, report.problems


# ---------------------------------------------------------------------------- the local CA


def assert_no_ca_left(directory: Path) -> None:
    names = {p.name for p in directory.iterdir()}
    assert not {n for n in names if n.endswith(".tmp")}, names
    assert CA_KEY_FILE not in names or CA_CERT_FILE in names, "a key without its certificate was left"


def assert_pair_loads(directory: Path) -> None:
    created = CertificateAuthority.load_or_create(directory)
    again = CertificateAuthority.load_or_create(directory)  # loaded, not created: the pair matches
    assert again.fingerprint == created.fingerprint
    assert temp_files(directory) == []


@needs_root
@pytest.mark.parametrize("free_pages", [0, 1], ids=["key-does-not-fit", "certificate-does-not-fit"])
def test_ca_on_a_full_filesystem(tmp_path: Path, free_pages: int) -> None:
    with tmpfs(tmp_path / "mnt") as mnt:
        directory = mnt / "authority"
        directory.mkdir()
        fillers = fill(mnt)
        for path in fillers[:free_pages]:  # one page: the key fits, its certificate does not
            path.unlink()
        with pytest.raises(PanostageError) as info:
            CertificateAuthority.load_or_create(directory)
        assert info.value.exit_code == ExitCode.IO and info.value.reason == "ca-io"
        assert str(directory) in info.value.message and os.strerror(errno.ENOSPC) in info.value.message
        assert_no_ca_left(directory)
        assert not (directory / CA_KEY_FILE).exists()
        for path in fillers:
            path.unlink(missing_ok=True)
        assert_pair_loads(directory)


CA_FAULTS = [  # the calls of one creation, in order: key (write, fsync, rename), certificate, directory
    ("posix/io/rw/write", 1, "ENOSPC"),
    ("posix/io/sync/fsync", 1, "EIO"),
    ("posix/io/dir/rename", 1, "EIO"),
    ("posix/io/rw/write", 2, "EIO"),
    ("posix/io/sync/fsync", 2, "EIO"),
    ("posix/io/dir/rename", 2, "EIO"),
    ("posix/io/sync/fsync", 3, "EIO"),
]


@needs_fiu
@pytest.mark.parametrize("point, at, err", CA_FAULTS)
def test_ca_creation_fault_leaves_no_temporary_file_and_no_half_pair(
    tmp_path: Path, point: str, at: int, err: str
) -> None:
    directory = tmp_path / "authority"
    result = run_child("ca", directory, point, at, err)
    assert not result["ok"]
    assert result["error"]["exit_code"] == ExitCode.IO and result["error"]["reason"] == "ca-io", result
    assert os.strerror(getattr(errno, err)) in result["error"]["message"]
    assert_no_ca_left(directory)
    assert_pair_loads(directory)


@pytest.mark.parametrize("kept", [CA_KEY_FILE, CA_CERT_FILE])
def test_half_a_pair_is_replaced_by_a_new_pair(tmp_path: Path, kept: str) -> None:
    directory = tmp_path / "authority"
    old = CertificateAuthority.load_or_create(directory)
    (directory / ({CA_KEY_FILE, CA_CERT_FILE} - {kept}).pop()).unlink()
    new = CertificateAuthority.load_or_create(directory)
    assert new.fingerprint != old.fingerprint
    assert CertificateAuthority.load_or_create(directory).fingerprint == new.fingerprint


@needs_fiu
def test_a_certificate_left_alone_never_meets_a_new_key(tmp_path: Path) -> None:
    """Key missing, certificate kept: a failure after the new key landed must not pair it with the old certificate."""
    directory = tmp_path / "authority"
    CertificateAuthority.load_or_create(directory)
    (directory / CA_KEY_FILE).unlink()
    result = run_child("ca", directory, "posix/io/dir/rename", 2, "EIO")  # the new certificate's rename fails
    assert result["error"]["reason"] == "ca-io", result
    assert_no_ca_left(directory)
    assert_pair_loads(directory)


def test_a_pair_that_does_not_match_is_named_not_a_crash(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    CertificateAuthority.load_or_create(first)
    CertificateAuthority.load_or_create(second)
    shutil.copy(second / CA_CERT_FILE, first / CA_CERT_FILE)
    with pytest.raises(PanostageError) as info:
        CertificateAuthority.load_or_create(first)
    assert info.value.exit_code == ExitCode.VERIFY_CORRUPT and info.value.reason == "ca-damaged"
    assert "does not belong" in info.value.message and str(first) in info.value.message
    (first / CA_KEY_FILE).write_text("garbage\n")
    with pytest.raises(PanostageError, match="cannot be parsed") as info:
        CertificateAuthority.load_or_create(first)
    assert info.value.reason == "ca-damaged"


# ---------------------------------------------------------------------------- the state database


def cli(home: Path, *args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "agent", "--json", *args],
        env=clean_env(home),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli_error(result: subprocess.CompletedProcess) -> dict:
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stderr.strip().splitlines()[-1])["error"]


def test_database_that_is_not_a_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "panostage.sqlite3").write_bytes(b"this is not SQLite " * 512)
    result = cli(tmp_path, "--state-dir", str(state), "plan", "list")
    assert result.returncode == ExitCode.IO, result.stderr
    error = cli_error(result)
    assert error["reason"] == "state-db" and str(state / "panostage.sqlite3") in error["message"]
    assert "file is not a database" in error["message"] and "backup" in error["hint"]


@needs_root
def test_database_on_a_read_only_filesystem(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        StateDB(mnt / "state").close()
        remount(mnt, "ro")
        result = cli(tmp_path, "--state-dir", str(mnt / "state"), "plan", "list")
        assert result.returncode == ExitCode.IO, result.stderr
        error = cli_error(result)
        assert error["reason"] == "state-db" and "read-only" in error["message"].lower()
        assert "read-write" in error["hint"]


@needs_root
def test_database_on_a_full_filesystem(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt") as mnt:
        (mnt / "state").mkdir()
        fill(mnt)
        result = cli(tmp_path, "--state-dir", str(mnt / "state"), "plan", "add", "--name", "cam-1")
        assert result.returncode == ExitCode.IO, result.stderr
        error = cli_error(result)
        assert error["reason"] == "state-db" and "full" in error["message"] and "free space" in error["hint"]


@needs_fiu
def test_database_disk_io_error(tmp_path: Path) -> None:
    """SQLite's fsync/fdatasync fail with EIO (libfiu, the whole CLI process): "disk I/O error"."""
    fail_syncs = ["fiu-run", "-x", "-c", f"enable name=posix/io/sync/*,failinfo={errno.EIO}"]
    result = cli(tmp_path, "--state-dir", str(tmp_path / "state"), "plan", "add", "--name", "cam-1", prefix=fail_syncs)
    assert result.returncode == ExitCode.IO, result.stderr
    error = cli_error(result)
    assert error["reason"] == "state-db" and "disk I/O error" in error["message"] and "dmesg" in error["hint"]


def test_locked_database_is_a_conflict(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state")
    holder = sqlite3.connect(db.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        waiter = sqlite3.connect(db.path, timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError) as info:
            waiter.execute("BEGIN IMMEDIATE")
        waiter.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        db.close()
    error = to_error(info.value)
    assert error.exit_code == ExitCode.CONFLICT and "wait" in error.hint


# ---------------------------------------------------------------- the stick's outcome comes first


@pytest.fixture
def stager_world(tmp_path: Path):
    """The embedded authority and a FAT image; the hand-off log on a tmpfs the test can make read-only."""
    from agent.aws.backend import open_backend
    from agent.config import load
    from tests.fat_kit import make_image

    settings = load(
        env={
            "HOME": str(tmp_path),
            "PANOSTAGE_SYSTEM_CONFIG": str(tmp_path / "none"),
            "PANOSTAGE_PATHS_STATE_DIR": str(tmp_path / "state"),
        }
    ).settings
    backend = open_backend(settings)
    image = make_image(tmp_path / "stick.img", 32)
    with tmpfs(tmp_path / "log", "1m") as logdir:
        yield backend, image, seeded_log(logdir), logdir
    backend.close()


def _stager(backend, log: HandoffLog, checkpoint):
    from agent.clock import SystemClock
    from agent.staging.stage import StageOptions, Stager

    return Stager(
        backend,
        clock=SystemClock(),
        log=log,
        options=StageOptions(),
        station="bench",
        operator="tester",
        checkpoint=checkpoint,
    )


def _live(backend, name: str) -> list[dict]:
    from agent.aws.provisioning import devices_named

    return [d for d in devices_named(backend.panorama(), name) if d["ProvisioningStatus"] != "DELETING"]


@needs_root
def test_a_log_that_fails_after_the_archive_is_proven_leaves_the_hand_off_ready(stager_world) -> None:
    """The archive is verified on the stick when the log goes read-only: the hand-off stays ready (never undone),
    the failure is reported with it, and the log is as it was (verifiable, no temporary file)."""
    from agent.stick import open_target

    backend, image, log, logdir = stager_world
    before = snapshot(log)

    def checkpoint(state: str, **_data) -> None:
        if state == "verified":
            remount(logdir, "ro")

    try:
        with open_target(image) as target:
            result = _stager(backend, log, checkpoint).stage({"Name": "cam-ro"}, target)
            assert target.read(result.archive["file"])  # on the stick, and readable
    finally:
        remount(logdir, "rw")
    assert result.log_error and "Read-only file system" in result.log_error
    assert [d["DeviceId"] for d in _live(backend, "cam-ro")] == [result.device["id"]]
    assert snapshot(log) == before and log.verify().ok
    assert temp_files(logdir) == []


@needs_root
def test_a_failed_hand_off_names_its_own_error_first_and_the_log_second(stager_world) -> None:
    """The hand-off is abandoned before the write (as the daemon does for a pulled stick) while the log is
    read-only: the device is deleted all the same (no false "could not clean up"), the abandonment is the error,
    the log's failure comes with it as a second note."""
    from agent.daemon.worker import Abandoned
    from agent.stick import open_target

    backend, image, log, logdir = stager_world
    events: list[str] = []

    def checkpoint(state: str, **_data) -> None:
        if state == "writing":
            remount(logdir, "ro")
            raise Abandoned("abandoned before writing: the stick was removed")

    stager = _stager(backend, log, checkpoint)
    stager.on_event = lambda kind, **data: events.append(kind)
    try:
        with open_target(image) as target, pytest.raises(Abandoned) as info:
            stager.stage({"Name": "cam-gone"}, target)
    finally:
        remount(logdir, "rw")
    assert info.value.message.startswith("abandoned before writing")
    [also] = [a for a in info.value.details["also"] if "Read-only file system" in a]
    assert also.startswith("the hand-off log could not record this")
    assert _live(backend, "cam-gone") == [] and "cleanup-failed" not in events
    assert log.verify().ok and temp_files(logdir) == []
