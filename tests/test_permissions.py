"""Not allowed to open is not read-only: the real CLI run as ``nobody`` (setpriv) against real FAT
images, loop devices and mounts; and ``watch`` checks the user's rights at start.

Root is needed (setpriv, losetup, mount); the files live in a directory ``nobody`` can reach (pytest's
own tmp_path is root's, mode 0700).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import paths
from agent.errors import ExitCode
from agent.stick import checks
from tests.fat_kit import ext4_image, loop_device, make_image, mounted
from tests.helpers import REPO

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _nobody_runs_the_cli() -> str | None:
    """Why the CLI cannot be run as nobody here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (setpriv, loop devices, mounts)"
    if shutil.which("setpriv") is None:
        return "setpriv missing (util-linux)"
    probe = subprocess.run(
        [*NOBODY, sys.executable, "-m", "agent", "--version"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        return f"user nobody cannot run {sys.executable} -m agent from {REPO}: {probe.stderr.strip()[-300:]}"
    return None


WHY_NOT = _nobody_runs_the_cli()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory nobody can reach, with a state and a runtime directory of nobody's own."""
    where = Path(tempfile.mkdtemp(prefix="panostage-perm-", dir="/tmp"))
    where.chmod(0o755)
    for name in ("state", "run"):
        (where / name).mkdir()
        os.chown(where / name, 65534, 65534)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def nobody_env(shared: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "PANOSTAGE_SYSTEM_CONFIG": str(shared / "no-system-config.toml"),
        "PANOSTAGE_PATHS_STATE_DIR": str(shared / "state"),
        "PANOSTAGE_PATHS_RUNTIME_DIR": str(shared / "run"),
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v}


def as_nobody(shared: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NOBODY, sys.executable, "-m", "agent", *args],
        cwd=REPO,
        env=nobody_env(shared, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def stage_json(shared: Path, target: str, *extra: str) -> tuple[int, dict]:
    result = as_nobody(shared, "stage", "--json", "--name", "cam-perm", "--eth0", "dhcp", *extra, "--to", target)
    lines = [line for line in result.stderr.splitlines() if line.startswith("{")]
    assert lines, result.stderr
    return result.returncode, json.loads(lines[-1])["error"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ item 1: stage --to, as nobody


def test_image_of_another_user_is_permission_denied_not_read_only(shared: Path) -> None:
    image = make_image(shared / "stick.img", 32)
    image.chmod(0o644)  # root's: nobody may read it, not write it
    before = digest(image)
    code, error = stage_json(shared, str(image))
    assert code == ExitCode.STICK_REFUSED, error
    assert error["reason"] == "stick-permission-denied"
    message = error["message"]
    assert "permission denied" in message and "nobody" in message and str(image) in message
    assert "owner root" in message and "mode 0644" in message
    assert "read-only" not in message and "write-protect" not in error.get("hint", "")
    assert error["details"]["user"].startswith("nobody") and error["details"]["mode"] == "0644"
    assert digest(image) == before


def test_an_image_nobody_may_write_is_still_read_only(shared: Path) -> None:
    image = make_image(shared / "ro.img", 32)
    image.chmod(0o444)
    code, error = stage_json(shared, str(image))
    assert (code, error["reason"]) == (ExitCode.STICK_REFUSED, "stick-read-only")
    assert "read-only" in error["message"] and "0444" in error["message"]


def test_block_device_of_the_disk_group_is_permission_denied(shared: Path) -> None:
    image = make_image(shared / "dev.img", 32)
    with loop_device(image) as dev:
        os.chown(dev, 0, _gid("disk"))
        os.chmod(dev, 0o660)  # udev's default for a block device: root:disk 0660
        code, error = stage_json(shared, dev)
    assert (code, error["reason"]) == (ExitCode.STICK_REFUSED, "stick-permission-denied")
    assert "nobody" in error["message"] and "group disk" in error["message"] and "0660" in error["message"]
    assert "mounted" not in error["message"] and "read-only" not in error["message"]
    hint = error["hint"]
    assert paths.STICK_GROUP in hint and "85-panostage.rules" in hint and "stick check" in hint


def test_mounted_read_write_but_not_for_this_user(shared: Path) -> None:
    image = ext4_image(shared / "e.img")
    with loop_device(image) as dev, mounted(dev, shared / "mnt") as where:
        (where).chmod(0o755)  # root's: read-write mount, but nobody may not write its root
        code, error = stage_json(shared, dev, "--allow-non-fat")
    assert (code, error["reason"]) == (ExitCode.STICK_REFUSED, "stick-permission-denied"), error
    message = error["message"]
    assert "mounted read-write" in message and str(where) in message and "nobody" in message
    assert "mounted read-only" not in message
    assert dev in error["hint"] and "uid=" in error["hint"]


def test_read_only_mount_is_still_read_only_for_nobody(shared: Path) -> None:
    image = ext4_image(shared / "ro.img")
    with loop_device(image) as dev, mounted(dev, shared / "mnt", "-o", "ro"):
        code, error = stage_json(shared, dev, "--allow-non-fat")
    assert (code, error["reason"]) == (ExitCode.STICK_REFUSED, "stick-read-only")


def test_directory_target_of_another_user(shared: Path) -> None:
    stick = shared / "dirstick"
    stick.mkdir(mode=0o755)
    code, error = stage_json(shared, str(stick), "--allow-non-fat")
    assert (code, error["reason"]) == (ExitCode.STICK_REFUSED, "stick-permission-denied")
    assert "may not write" in error["message"] and "owner root" in error["message"]
    stick.chmod(0o700)  # not even readable
    code, error = stage_json(shared, str(stick), "--allow-non-fat")
    assert (code, error["reason"]) == (ExitCode.STICK_REFUSED, "stick-permission-denied")
    assert "may not read" in error["message"]
    code, error = stage_json(shared, str(stick / "inner"), "--allow-non-fat")  # behind a directory it may not enter
    assert (code, error["reason"]) == (ExitCode.STICK_REFUSED, "stick-permission-denied")
    assert f"may not enter {stick}" in error["message"]


def test_hint_for_a_stick_of_the_group_names_how_to_join(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device in the sticks' group the user is not in: join it (the group's name from the udev rule)."""
    node = shared / "node"
    node.write_bytes(b"")
    os.chown(node, 0, _gid("disk"))
    monkeypatch.setattr(paths, "STICK_GROUP", "disk")  # stands in for panostage, which may not exist here
    monkeypatch.setattr(paths, "group_member", lambda name: False)
    hint = checks.permission_denied(node, want="read and write", block=True).hint or ""
    assert "join it with `sudo usermod -aG disk" in hint and "log in again" in hint


# ------------------------------------------------------------------ item 2: watch checks at start


def test_watch_without_a_state_directory_of_its_own(shared: Path) -> None:
    result = as_nobody(shared, "watch", PANOSTAGE_PATHS_STATE_DIR="")  # HOME=/nonexistent: the default is there
    assert result.returncode == ExitCode.IO, result.stderr
    assert "the state directory /nonexistent/.local/state/panostage" in result.stderr
    assert "not writable" in result.stderr and "nobody" in result.stderr and "HOME=/nonexistent" in result.stderr
    assert "paths.state_dir" in result.stderr and "service's user" in result.stderr
    assert "Permission denied (/nonexistent)" not in result.stderr


def test_watch_on_a_state_directory_of_another_user(shared: Path) -> None:
    theirs = shared / "theirs"
    theirs.mkdir(mode=0o700)
    result = as_nobody(shared, "watch", "--json", PANOSTAGE_PATHS_STATE_DIR=str(theirs))
    assert result.returncode == ExitCode.IO, result.stderr
    error = json.loads(result.stderr.splitlines()[-1])["error"]
    assert error["reason"] == "state-dir-access"
    assert str(theirs) in error["message"] and "owner root" in error["message"] and "0700" in error["message"]


def test_watch_warns_at_start_when_the_user_cannot_open_sticks(shared: Path) -> None:
    """nobody is not in the sticks' group: a warning naming it, and the daemon goes on starting."""
    proc = subprocess.Popen(
        [*NOBODY, sys.executable, "-m", "agent", "watch"],
        cwd=REPO,
        env=nobody_env(shared),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("WARNING" in line for line in seen):
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                line = proc.stderr.readline()
                if not line:
                    break  # it ended
                seen.append(line)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stderr.close()
    text = "".join(seen)
    warning = [line for line in seen if "WARNING" in line]
    assert warning, text
    group = paths.STICK_GROUP
    assert f"not in the {group} group" in warning[0] or f"no group {group}" in warning[0]
    assert "sticks will be refused" in warning[0] and "nobody" in warning[0]
    assert "state directory" not in text


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


# ------------------------------------------------------------------ verify, as nobody: a permission, never a verdict


def test_verify_of_an_archive_nobody_may_read_is_permission_denied_not_corrupt(shared: Path) -> None:
    from tests.archive_factory import build

    archive = shared / "certificates-omni_cam-perm.zip"
    archive.write_bytes(build())
    archive.chmod(0o600)  # root's, unreadable to nobody
    stick = shared / "dirstick"
    stick.mkdir()
    (stick / archive.name).write_bytes(archive.read_bytes())
    (stick / archive.name).chmod(0o600)
    os.chown(stick, 65534, 65534)  # nobody's directory, root's archive inside
    for target in (archive, stick):
        result = as_nobody(shared, "verify", "--json", str(target))
        lines = [line for line in result.stderr.splitlines() if line.startswith("{")]
        assert result.returncode == ExitCode.STICK_REFUSED, (target, result.stdout, result.stderr)
        error = json.loads(lines[-1])["error"]
        assert error["reason"] == "stick-permission-denied" and "may not read" in error["message"]
        assert "owner root" in error["message"] or target == stick, error
