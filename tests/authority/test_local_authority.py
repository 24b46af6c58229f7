"""The default backend's authority in its child process (agent/aws/local_authority.py): real processes,
real botocore over loopback, the child's real SQLite store.  It ends with its parent however the parent
ends, comes back on the same endpoint when it dies, is left down (refusing, not hanging) when it keeps
dying, raises in the parent what stopped it from starting, and its credentials are never on its
command line or in its environment."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from botocore.exceptions import EndpointConnectionError

from agent.authority.store import DB_FILE, StateError, Store
from agent.aws.backend import Backend, open_backend
from agent.aws.local_authority import RESTARTS
from agent.config import load
from agent.errors import ExitCode, PanostageError

REPO = Path(__file__).resolve().parents[2]


def env_for(home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PANOSTAGE_SYSTEM_CONFIG": str(home / "none.toml"),
        "PANOSTAGE_PATHS_STATE_DIR": str(home / "state"),
        "PANOSTAGE_PATHS_RUNTIME_DIR": str(home / "run"),
    }


def backend_in(home: Path) -> Backend:
    return open_backend(load(env=env_for(home)).settings, authority_process=True)


def ended(pid: int, timeout: float = 20.0) -> bool:
    """Has ``pid`` ended (gone, or a zombie nobody reaped yet) within ``timeout`` seconds?"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def next_child(backend: Backend, old: int, timeout: float = 20.0) -> int:
    """The pid of the child that replaced ``old``, once it answers."""
    deadline = time.monotonic() + timeout
    while backend.authority.pid == old:
        assert time.monotonic() < deadline, "no new child"
        time.sleep(0.05)
    backend.panorama().list_devices()  # waits in the backlog until the new child accepts
    return backend.authority.pid


def test_the_child_serves_without_its_credentials_on_show_and_ends_with_close(tmp_path):
    backend = backend_in(tmp_path)
    device = backend.panorama().provision_device(Name="child-1")
    child = psutil.Process(backend.authority.pid)
    assert child.ppid() == os.getpid()
    secret = backend.authority.secret_access_key
    shown = " ".join(child.cmdline()) + " ".join(f"{k}={v}" for k, v in child.environ().items())
    assert secret not in shown and backend.authority.access_key_id not in shown
    backend.close()
    assert ended(child.pid, 5.0)
    rows = Store(tmp_path / "state" / "authority", now=time.time()).devices("1")
    assert [r["device_id"] for r in rows if r["name"] == "child-1"] == [device["DeviceId"]]


def test_a_child_killed_comes_back_on_the_same_endpoint_with_its_state(tmp_path):
    backend = backend_in(tmp_path)
    try:
        pan, endpoint = backend.panorama(), backend.endpoint_url
        device = pan.provision_device(Name="before-kill")["DeviceId"]
        first = backend.authority.pid
        os.kill(first, signal.SIGKILL)
        second = next_child(backend, first)
        assert second != first and backend.endpoint_url == endpoint
        assert pan.describe_device(DeviceId=device)["Name"] == "before-kill"
    finally:
        backend.close()


def down(backend: Backend, timeout: float = 20.0) -> PanostageError:
    """What the parent raises once it has given the child up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            backend.authority.wait_ready(0)
        except PanostageError as exc:
            return exc
        time.sleep(0.05)
    raise AssertionError("the authority was not given up")


def test_a_child_that_keeps_dying_is_left_down_and_refuses(tmp_path):
    backend = backend_in(tmp_path)
    try:
        backend.panorama().list_devices()
        pid = backend.authority.pid
        for _ in range(RESTARTS):
            os.kill(pid, signal.SIGKILL)
            pid = next_child(backend, pid)
        os.kill(pid, signal.SIGKILL)  # one more within the minute: left down
        assert "left down" in down(backend).message and down(backend).exit_code == ExitCode.UNREACHABLE
        with pytest.raises(EndpointConnectionError):
            backend.panorama(max_attempts=1).list_devices()
    finally:
        backend.close()


def test_a_child_that_cannot_start_raises_its_reason_in_the_parent(tmp_path):
    store_dir = tmp_path / "state" / "authority"
    Store(store_dir, now=0.0).close()
    with sqlite3.connect(store_dir / DB_FILE) as conn:
        conn.execute("PRAGMA user_version = 99")
    backend = backend_in(tmp_path)
    try:
        with pytest.raises(PanostageError, match="schema version 99") as raised:
            backend.panorama()
        assert (raised.value.exit_code, raised.value.reason) == (StateError.exit_code, StateError.reason)
    finally:
        backend.close()
    result = subprocess.run(
        [sys.executable, "-m", "agent", "watch"],
        cwd=REPO,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )  # the daemon: it says so at its start
    assert result.returncode == StateError.exit_code and "schema version 99" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("schema version 99") == 1  # said once


def test_the_child_ends_when_its_parent_is_killed(tmp_path):
    probe = (
        "import os, sys, time\n"
        "from agent.aws.backend import open_backend\n"
        "from agent.config import load\n"
        "backend = open_backend(load().settings, authority_process=True)\n"
        "backend.panorama().list_devices()\n"
        "print(backend.authority.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", probe], cwd=REPO, env=env_for(tmp_path), stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())
        assert psutil.Process(child).ppid() == parent.pid
        parent.kill()
        parent.wait(10)
        assert ended(child), "the authority outlived its parent"
    finally:
        parent.kill()
        parent.wait()
