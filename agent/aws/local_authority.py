"""The default backend's authority, in a child process of its own (agent/authority/child.py).

Sharing the daemon's process, the authority shared its GIL: eight sticks at once cost eight times one.
Here the parent binds the loopback socket and keeps it; the child inherits it and serves.  So the
endpoint never changes: a request made while the child starts, or starts again, waits in the listen
backlog instead of failing, and the clients never need to know.  The credentials are made up here for
this process's life and reach the child on its stdin, which it reads until it ends: the child ends with
its parent, however the parent ends.  A child that dies after it was ready is started again (up to
:data:`RESTARTS` times a minute); one that cannot start says why, and the parent raises that, as the
in-process authority did.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from agent.authority.credentials import new_credentials
from agent.config import AuthoritySettings
from agent.errors import ExitCode, PanostageError

log = logging.getLogger("panostage.authority")

RESTARTS = 5  # a minute: more, and the authority is left down (the clients then get "connection refused")
READY_SECONDS = 60.0
STOP_SECONDS = 5.0
#: where ``agent`` is imported from here: the child imports the same code, whatever sys.path the child gets
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


class LocalAuthority:
    """The authority child process, on a socket this process bound and keeps."""

    def __init__(self, settings: AuthoritySettings, state_dir: Path, *, region: str) -> None:
        self.access_key_id, self.secret_access_key = new_credentials()
        self.settings = dataclasses.replace(settings, regions=tuple(dict.fromkeys((region, *settings.regions))))
        self.state_dir, self.region = Path(os.path.abspath(state_dir)), region
        self.listening = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.endpoint_url = f"http://127.0.0.1:{self.listening.getsockname()[1]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[float] = []  # monotonic times of the child's starts
        self._stopping = False
        self._ready = threading.Event()
        self._failure: PanostageError | None = None
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()  # stop() and a restart never cross

    def start(self) -> LocalAuthority:
        """Start the child (it becomes ready while this process goes on) and the thread that watches it."""
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="authority-child", daemon=True)
        self._watcher.start()
        return self

    def wait_ready(self, timeout: float = READY_SECONDS) -> None:
        """Return once the child serves; raise what stopped it from starting."""
        if not self._ready.wait(timeout):
            raise _down(f"the local authority did not start within {timeout:.0f} s")
        if self._failure is not None:
            raise self._failure

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        """End the child (its stdin closes; killed after STOP_SECONDS) and stop serving (idempotent)."""
        with self._lock:
            self._stopping = True
            proc = self.proc
        if proc is not None:
            _close(proc.stdin)
            try:
                proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(STOP_SECONDS)
        self.listening.close()

    def _spawn(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_SOURCE_ROOT, os.environ.get("PYTHONPATH"))))}
        fd = self.listening.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.authority.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(fd,),
            env=env,
            cwd="/",
        )
        self.starts.append(time.monotonic())
        spec = {
            "fd": fd,
            "state_dir": str(self.state_dir),
            "region": self.region,
            "settings": dataclasses.asdict(self.settings),
            "credentials": {self.access_key_id: self.secret_access_key},
        }
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(spec).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:  # it died at once: _watch reads why
            pass

    def _watch(self) -> None:
        """For the child's life: note when it is ready, start it again when it dies (not when we stop it)."""
        while True:
            proc = self.proc
            assert proc is not None and proc.stdout is not None
            said = _first_line(proc.stdout)
            if said.get("ready"):
                self._ready.set()
            proc.stdout.read()  # nothing more until it ends
            code = proc.wait()
            _close(proc.stdout)
            if self._stopping:
                return
            if not said.get("ready"):
                self._give_up(_failure(said, code))
                return
            recent = [t for t in self.starts if time.monotonic() - t < 60]
            if len(recent) > RESTARTS:
                failure = _down(
                    f"the local authority died {len(recent)} times within a minute (last exit status {code}); left down"
                )
                log.error("%s", failure.message)  # said now: the clients only meet a refused connection
                self._give_up(failure)
                return
            log.warning("the local authority (pid %d) ended with status %s: starting it again", proc.pid, code)
            _close(proc.stdin)
            with self._lock:
                if self._stopping:  # stop() may have set it meanwhile, from another thread
                    return  # type: ignore[unreachable]  # mypy keeps the first read's answer across threads
                self._spawn()

    def _give_up(self, failure: PanostageError) -> None:
        """Leave the authority down: waiting callers get ``failure``, new connections are refused."""
        self._failure = failure
        self._ready.set()
        self.listening.close()  # what waits in the backlog is reset, not left to time out


def _first_line(stream: IO[bytes]) -> dict[str, Any]:
    line = stream.readline()
    try:
        said = json.loads(line) if line else {}
    except ValueError:
        said = {}
    return said if isinstance(said, dict) else {}


def _failure(said: dict[str, Any], code: int) -> PanostageError:
    """The child's own error when it said one, else its exit status."""
    if said.get("error"):
        return PanostageError(
            str(said["error"]),
            hint=said.get("hint"),
            reason=said.get("reason"),
            exit_code=ExitCode(said.get("exit_code", ExitCode.ERROR)),
        )
    return _down(f"the local authority could not start (exit status {code})")


def _down(message: str) -> PanostageError:
    return PanostageError(
        message,
        exit_code=ExitCode.UNREACHABLE,
        reason="unreachable",
        hint="its messages are above (or in the journal); run again with --debug, or restart panostage",
    )


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        try:
            stream.close()
        except OSError:
            pass
