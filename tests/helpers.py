"""Shared test helpers: run the real CLI, wait on conditions with deadlines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: Environment variables that would leak the developer's setup into a test.
_DROP = (
    "AWS_",
    "PANOSTAGE_",
    "XDG_",
    "NOTIFY_SOCKET",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
)


#: A PEM private-key header, made at run time: no tracked file holds key armour.
PEM_KEY_HEADER = "-----BEGIN " + "PRIVATE KEY-----"


def clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: nothing of the caller's AWS or panostage settings, and a state directory of
    its own under ``home`` (as root the default is the system's /var/lib/panostage: never for a test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP)}
    env.update(
        {
            "HOME": str(home),
            "PANOSTAGE_PATHS_STATE_DIR": str(home / "state"),
            "XDG_CONFIG_HOME": str(home / "xdg-config"),
            "PANOSTAGE_SYSTEM_CONFIG": str(home / "no-system-config.toml"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "AWS_CONFIG_FILE": str(home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    env.update(extra or {})
    return env


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    home: Path,
    timeout: float = 120,
    input: bytes | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``panostage ARGS`` as a real process (``python -m agent``)."""
    full_env = clean_env(home, env)
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env=full_env,
        cwd=REPO,
        capture_output=True,
        timeout=timeout,
        input=input if not text or input is None else input.decode(),
        text=text,
    )


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Notifications:
    """A NOTIFY_SOCKET the daemon talks to, as systemd would listen on it (``mode``: for a
    daemon running as another user)."""

    def __init__(self, path: Path, *, mode: int | None = None) -> None:
        import socket
        import threading

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        if mode is not None:
            os.chmod(path, mode)
        self.messages: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self.messages.extend(data.decode().splitlines())

    def seen(self, prefix: str) -> list[str]:
        return [m for m in list(self.messages) if m.startswith(prefix)]

    def close(self) -> None:
        self.sock.close()
