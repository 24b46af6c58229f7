"""A real systemd-udevd for tests (root), shared by every test session that needs one.

``udevd`` (session fixture) makes sure a udevd answers ``udevadm control --ping``: one already
running (the system's, or another test session's) is used as it is; otherwise the kit starts
``systemd-udevd`` itself and stops it at the end - unless another session is still using it
(then the last session to leave stops it).  Nothing here sleeps to synchronise: ``udevadm
settle --timeout`` and polled conditions with deadlines.

Sharing protocol (files under /run/panostage-tests): every user holds ``udevd.users`` with a
shared flock for its lifetime; start and stop happen under an exclusive flock on ``udevd.mutex``;
``udevd.pid`` names a udevd a kit started (pid + start time, so a reused pid is never signalled).
Only that process is ever stopped, by its pid.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until

UDEVD_CANDIDATES = ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd")
KIT_DIR = Path("/run/panostage-tests")


def udevadm(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["udevadm", *args], capture_output=True, text=True, timeout=timeout, check=False)


def udevd_answers() -> bool:
    """A udevd is running and answers on its control socket."""
    return udevadm("control", "--ping", "--timeout=2", timeout=10).returncode == 0


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime in clock ticks since boot


@dataclass
class Udev:
    """Handle on the running udevd, with waits that have deadlines."""

    started_by_us: bool
    pid: int | None = None
    log: Path | None = None

    def settle(self, timeout: float = 30) -> None:
        """Wait until udevd's event queue is empty (fails the test after ``timeout`` seconds)."""
        proc = udevadm("settle", f"--timeout={int(timeout)}", timeout=timeout + 10)
        assert proc.returncode == 0, f"udevadm settle did not finish within {timeout}s: {proc.stderr.strip()}"

    def trigger(self, device: str, action: str = "change", *, settle: bool = True, timeout: float = 30) -> None:
        """Ask the kernel to re-announce ``device`` (a /dev node or /sys path) and, by default, wait for udev."""
        args = ["trigger", f"--action={action}"] + (["--settle"] if settle else []) + [device]
        proc = udevadm(*args, timeout=timeout)
        assert proc.returncode == 0, f"udevadm trigger {device} failed: {proc.stderr.strip()}"

    @staticmethod
    def properties(device: str) -> dict[str, str]:
        """What udev's database holds for ``device`` now (empty if nothing)."""
        proc = udevadm("info", "--query=property", device, timeout=10)
        if proc.returncode != 0:
            return {}
        return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)

    def wait_properties(
        self,
        device: str,
        condition: Callable[[dict[str, str]], Any],
        *,
        timeout: float = 30,
        what: str = "udev properties",
    ) -> dict[str, str]:
        """Poll the database until ``condition(properties)`` holds; return the properties."""
        found: dict[str, dict[str, str]] = {}

        def check() -> bool:
            found["props"] = self.properties(device)
            return bool(condition(found["props"]))

        try:
            wait_until(check, timeout=timeout, interval=0.05, what=f"{what} of {device}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {found.get('props')}") from None
        return found["props"]


def _lock(path: Path, mode: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, mode)
    return fd


def _start_udevd(log: Path) -> tuple[int, str]:
    binary = next((p for p in UDEVD_CANDIDATES if os.access(p, os.X_OK)), None) or shutil.which("systemd-udevd")
    if binary is None:
        pytest.skip("systemd-udevd is not installed (apt-get install udev)")
    # Only called when no udevd answers: inotify watches recorded by an earlier udevd are stale, and a
    # new one restoring them mis-maps watch descriptors (a closed writer then makes no change event).
    for stale in ("/run/udev/watch", "/run/udev/watch.old"):
        shutil.rmtree(stale, ignore_errors=True)
    with open(log, "ab") as out:
        # foreground, own session: we know its pid without searching for it by name
        proc = subprocess.Popen([binary], stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        wait_until(
            lambda: proc.poll() is not None or udevd_answers(),
            timeout=30,
            interval=0.05,
            what="systemd-udevd to answer udevadm control --ping",
        )
    except AssertionError:
        proc.kill()
        proc.wait(timeout=10)
        raise
    if proc.poll() is not None:
        pytest.skip(f"systemd-udevd exited at start ({proc.returncode}): {log.read_text(errors='replace')[-500:]}")
    start_time = _proc_start_time(proc.pid)
    assert start_time is not None
    return proc.pid, start_time


def _stop_udevd(pid: int, start_time: str, timeout: float = 20) -> None:
    if _proc_start_time(pid) != start_time:
        return  # gone already (or the pid now belongs to someone else: leave it alone)
    os.kill(pid, signal.SIGTERM)
    killed, deadline = False, time.monotonic() + timeout
    while _proc_start_time(pid) == start_time:
        try:  # reap it if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            if killed:
                raise AssertionError(f"systemd-udevd {pid} still there {timeout:g}s after SIGKILL")
            os.kill(pid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + timeout
        time.sleep(0.02)  # polling the process table, with a deadline


@pytest.fixture(scope="session")
def udevd() -> Iterator[Udev]:
    """A running systemd-udevd (root only; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (systemd-udevd, loop devices)")
    if shutil.which("udevadm") is None:
        pytest.skip("udevadm is not installed (apt-get install udev)")
    KIT_DIR.mkdir(mode=0o700, exist_ok=True)
    mutex = _lock(KIT_DIR / "udevd.mutex", fcntl.LOCK_EX)
    users = pidfile = None
    try:
        users = _lock(KIT_DIR / "udevd.users", fcntl.LOCK_SH)
        pidfile = KIT_DIR / "udevd.pid"
        if udevd_answers():
            handle = Udev(started_by_us=False)
        else:
            log = KIT_DIR / "udevd.log"
            pid, start_time = _start_udevd(log)
            pidfile.write_text(json.dumps({"pid": pid, "start_time": start_time}))
            handle = Udev(started_by_us=True, pid=pid, log=log)
    finally:
        os.close(mutex)
    try:
        yield handle
    finally:
        mutex = _lock(KIT_DIR / "udevd.mutex", fcntl.LOCK_EX)
        try:
            os.close(users)  # leave; whoever leaves last stops the udevd a kit started
            last = _lock_nb(KIT_DIR / "udevd.users")
            if last is not None:
                try:
                    record = json.loads(pidfile.read_text()) if pidfile.exists() else None
                    if record:
                        _stop_udevd(record["pid"], record["start_time"])
                        pidfile.unlink(missing_ok=True)
                finally:
                    os.close(last)
        finally:
            os.close(mutex)


def _lock_nb(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
