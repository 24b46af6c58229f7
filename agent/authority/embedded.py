"""Run the authority: in this process (the embedded default backend) or as a server.

:func:`open_server` builds the whole authority (state, CA, service, faults, HTTP server)
bound but not yet serving (or serving a socket it is given); :func:`start_embedded` runs one on a
loopback ephemeral port in a daemon thread of this process, with credentials made up for it (never
written anywhere): a one-shot command's authority, and the tests', with a clock and faults they steer.
The daemon runs it in a child process instead (agent/aws/local_authority.py, agent/authority/child.py).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.authority.credentials import new_credentials
from agent.authority.faults import FaultInjector
from agent.authority.lifecycle import ShiftableClock
from agent.clock import Clock
from agent.config import AuthoritySettings

if TYPE_CHECKING:  # imported when a server is opened: the HTTP side pulls in botocore
    from agent.authority.server import AuthorityHTTPServer


def open_server(
    settings: AuthoritySettings,
    state_dir: Path,
    credentials: dict[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Clock | None = None,
    faults: FaultInjector | None = None,
    region: str,
    listening: socket.socket | None = None,
) -> AuthorityHTTPServer:
    """The authority's HTTP server over ``state_dir``, bound to ``host:port`` (0: ephemeral), accepting
    credential scopes of ``settings.regions`` (empty: ``region``, the backend's)."""
    from agent.authority.server import AuthorityHTTPServer
    from agent.authority.service import AuthorityService

    service = AuthorityService.open(
        settings, state_dir, clock if isinstance(clock, ShiftableClock) else ShiftableClock(clock)
    )
    regions = tuple(settings.regions) or (region,)
    return AuthorityHTTPServer(
        (host, port), service, dict(credentials), faults or FaultInjector(), regions, listening=listening
    )


@dataclass
class EmbeddedAuthority:
    """A running in-process authority."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str
    state_dir: Path
    server: AuthorityHTTPServer | None = field(repr=False)  # None once stopped

    @property
    def clock(self) -> ShiftableClock:
        return self._serving().service.clock

    @property
    def faults(self) -> FaultInjector:
        return self._serving().faults

    def _serving(self) -> AuthorityHTTPServer:
        if self.server is None:
            raise RuntimeError("the embedded authority was stopped")
        return self.server

    def wait_ready(self) -> None:
        """Serving since it was started: nothing to wait for."""

    def stop(self) -> None:
        """Stop serving and close every connection (idempotent)."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()


def start_embedded(
    settings: AuthoritySettings,
    state_dir: Path,
    *,
    region: str,
    clock: Clock | None = None,
    faults: FaultInjector | None = None,
) -> EmbeddedAuthority:
    """Start an authority in this process on 127.0.0.1 (ephemeral port) with fresh credentials; it takes
    requests signed for ``region`` (this process's) and for ``settings.regions``."""
    import dataclasses

    access_key_id, secret = new_credentials()
    settings = dataclasses.replace(settings, regions=tuple(dict.fromkeys((region, *settings.regions))))
    server = open_server(
        settings, state_dir, {access_key_id: secret}, clock=clock, faults=faults, region=region
    ).start()
    return EmbeddedAuthority(server.endpoint_url, access_key_id, secret, region, state_dir, server)
