"""Fixtures for the install tier: the panostage account, udev rules in the runtime rules directory.

Everything a fixture adds to the machine (an account, a rules file in /run/udev/rules.d) is removed
again on the way out, failure or not, and udevd is told to reload.  An account or rules file that
was there before is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.udev_kit import udevadm, udevd  # noqa: F401 - session fixture

RULES_SRC = REPO / "udev-rules" / "85-panostage.rules"
RUNTIME_RULES = Path("/run/udev/rules.d")
ACCOUNT = "panostage"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (udevd, loop devices, accounts)")


@dataclass(frozen=True)
class Account:
    uid: int
    gid: int
    created: bool


@pytest.fixture(scope="session")
def panostage_account() -> Iterator[Account]:
    """The ``panostage`` system user and group (created if missing, removed afterwards if we created them)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create the panostage account")
    created_user = created_group = False
    try:
        pwd.getpwnam(ACCOUNT)
    except KeyError:
        try:
            grp.getgrnam(ACCOUNT)
            group_args = ["--gid", ACCOUNT]
        except KeyError:
            group_args = ["--user-group"]
            created_group = True
        subprocess.run(
            [
                "useradd",
                "--system",
                *group_args,
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "panostage test account",
                ACCOUNT,
            ],
            check=True,
            capture_output=True,
        )
        created_user = True
    try:
        entry = pwd.getpwnam(ACCOUNT)
        yield Account(entry.pw_uid, grp.getgrnam(ACCOUNT).gr_gid, created_user)
    finally:
        if created_user:
            subprocess.run(["userdel", ACCOUNT], check=False, capture_output=True)
        if created_group:  # userdel removes a --user-group group itself; make sure
            with contextlib.suppress(KeyError):
                grp.getgrnam(ACCOUNT)
                subprocess.run(["groupdel", ACCOUNT], check=False, capture_output=True)


class RuntimeRules:
    """Rules files in /run/udev/rules.d for the duration of a test; reload after each change."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(4)
        self.added: list[Path] = []
        self.shadowed: dict[Path, bytes] = {}
        self.made_dir = False

    def install(self, name: str, text: str) -> Path:
        if not RUNTIME_RULES.exists():
            RUNTIME_RULES.mkdir(parents=True)
            self.made_dir = True
        path = RUNTIME_RULES / name
        if path.exists() and path not in self.added:
            self.shadowed[path] = path.read_bytes()  # someone's own runtime rule: put it back afterwards
        path.write_text(text)
        if path not in self.added:
            self.added.append(path)
        self.reload()
        return path

    def fake_usb(self, match: str) -> Path:
        """A test-only rule sorted before 85 that marks the device(s) matching ``match`` as USB mass
        storage, as the usb_id builtin does for a real stick (ID_USB_DRIVER=usb-storage)."""
        return self.install(
            f"84-panostage-test-{self.token}.rules",
            f"# test only (tests/install): pretend this device is a USB stick\n"
            f'ACTION!="remove", SUBSYSTEM=="block", {match}, ENV{{ID_USB_DRIVER}}="usb-storage"\n',
        )

    @staticmethod
    def reload() -> None:
        proc = udevadm("control", "--reload")
        assert proc.returncode == 0, f"udevadm control --reload: {proc.stderr}"

    def cleanup(self) -> None:
        for path in reversed(self.added):
            if path in self.shadowed:
                path.write_bytes(self.shadowed[path])
            else:
                path.unlink(missing_ok=True)
        self.added.clear()
        if self.made_dir:
            with contextlib.suppress(OSError):
                RUNTIME_RULES.rmdir()  # only if nobody else put a file there meanwhile
        self.reload()


@pytest.fixture
def runtime_rules(udevd) -> Iterator[RuntimeRules]:  # noqa: F811
    """The real rules file installed into /run/udev/rules.d (unmodified), removed afterwards."""
    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed")
    rules = RuntimeRules()
    try:
        rules.install(RULES_SRC.name, RULES_SRC.read_text())
        yield rules
    finally:
        rules.cleanup()


# ---------------------------------------------------------------- scripts/install into a DESTDIR

INSTALL = REPO / "scripts" / "install"
PREFIX = "/opt/panostage"


@dataclass
class Installed:
    """A tree scripts/install made under ``root`` (DESTDIR), and how long it took."""

    root: Path
    output: str
    seconds: float

    def path(self, final: str) -> Path:
        return self.root / final.lstrip("/")

    @property
    def python(self) -> Path:
        return self.path(PREFIX) / "bin" / "python"

    def panostage(self, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """The installed command, run from the staging root (its shebang names the final path)."""
        return subprocess.run(
            [str(self.python), str(self.path(PREFIX) / "bin" / "panostage"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )


def run_install(root: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = {**os.environ, "DESTDIR": str(root), "PYTHON": "/usr/bin/python3", **(env or {})}
    proc = subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, env=full, timeout=600, check=False
    )
    if check:
        assert proc.returncode == 0, (
            f"scripts/install {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    """scripts/install into a fresh DESTDIR, once per session (pip takes the machine's wheel sources)."""
    import time

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    python = "/usr/bin/python3"  # the system's: never the caller's $PYTHON (a pyenv one lives under /root)
    probe = subprocess.run(
        [python, "-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"{python} is not a Python 3.11+ that can make a venv with pip (apt-get install python3-venv)")
    root = tmp_path_factory.mktemp("destdir")
    started = time.monotonic()
    proc = run_install(root, env={"PYTHON": python})
    return Installed(root, proc.stdout, time.monotonic() - started)


def tree(root: Path, *, hashes: bool = True) -> dict[str, tuple]:
    """Every path under ``root``: (kind, mode, uid, gid, sha256 or link target)."""
    import hashlib

    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = "/" + str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", None, st.st_uid, st.st_gid, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, None)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if hashes else None
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest)
    return out
