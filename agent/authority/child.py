"""The embedded authority's child process: ``python -m agent.authority.child``.

Its parent (agent/aws/local_authority.py) binds the loopback socket, starts this process with that
socket inherited, and writes one JSON line on its stdin: the socket's descriptor, the state directory,
the region, the authority settings and the credentials it made up (never on the command line or in the
environment, where ``ps`` and /proc would show them).  This process serves until its stdin ends, which
happens when the parent closes it or dies, however it dies.  SIGINT and SIGTERM are the parent's to act
on (a Ctrl-C at a terminal, systemd's stop): the parent finishes its hand-offs first and may need the
authority for them, so they are ignored here.  One JSON line on stdout says the socket is being served, or why the authority could not start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any, TypedDict, cast

from agent.config import AuthoritySettings


class StartLine(TypedDict):
    """What the parent writes on this process's stdin (agent/aws/local_authority.py)."""

    fd: int  # the listening socket, inherited
    state_dir: str
    region: str
    settings: dict[str, Any]  # AuthoritySettings as dataclasses.asdict has them
    credentials: dict[str, str]  # access key ID -> secret


def settings_from(fields: dict[str, Any]) -> AuthoritySettings:
    """AuthoritySettings from its JSON form (lists back to tuples)."""
    known = {f.name for f in dataclasses.fields(AuthoritySettings)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known}
    return AuthoritySettings(**values)


def say(message: dict[str, Any]) -> None:
    """One JSON line to the parent."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="panostage authority[child]: %(levelname)s %(message)s")
    line = json.loads(sys.stdin.readline() or "null")
    if not isinstance(line, dict):
        print("panostage authority[child]: no start line from the parent", file=sys.stderr)
        return 2
    spec = cast(StartLine, line)
    from agent.authority.embedded import open_server
    from agent.error_mapping import to_error

    listening = socket.socket(fileno=spec["fd"])
    try:
        server = open_server(
            settings_from(spec["settings"]),
            Path(spec["state_dir"]),
            spec["credentials"],
            region=spec["region"],
            listening=listening,
        )
    except Exception as exc:  # noqa: BLE001 - the parent raises it again, mapped as the in-process authority's was
        error = to_error(exc)
        say({"error": error.message, "hint": error.hint, "reason": error.reason, "exit_code": int(error.exit_code)})
        return int(error.exit_code)
    server.start()
    try:
        say({"ready": True})
        while sys.stdin.buffer.read(65536):  # until the parent closes the pipe or dies
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
