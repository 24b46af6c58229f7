"""Run the authority: in this process (the embedded default backend) or as a server.

:func:`open_server` builds the whole authority (state, CA, service, faults, HTTP server)
bound but not yet serving; :func:`start_embedded` runs one on a loopback ephemeral port
in a daemon thread, with credentials made up for this process (never written anywhere).
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path

from agent.authority.faults import FaultInjector
from agent.authority.lifecycle import ShiftableClock
from agent.clock import Clock
from agent.config import AuthoritySettings


def new_credentials() -> tuple[str, str]:
    """A random access key ID (AKPS + 16) and secret (40 characters)."""
    upper = string.ascii_uppercase + string.digits
    secret_alphabet = string.ascii_letters + string.digits + "+/"
    return (
        "AKPS" + "".join(secrets.choice(upper) for _ in range(16)),
        "".join(secrets.choice(secret_alphabet) for _ in range(40)),
    )


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
):
    """The authority's HTTP server over ``state_dir``, bound to ``host:port`` (0: ephemeral), accepting
    credential scopes of ``settings.regions`` (empty: ``region``, the backend's)."""
    from agent.authority.server import AuthorityHTTPServer
    from agent.authority.service import AuthorityService

    service = AuthorityService.open(settings, state_dir, clock if isinstance(clock, ShiftableClock) else ShiftableClock(clock))
    regions = tuple(settings.regions) or (region,)
    return AuthorityHTTPServer((host, port), service, dict(credentials), faults or FaultInjector(), regions)


@dataclass
class EmbeddedAuthority:
    """A running in-process authority."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str
    state_dir: Path
    server: object = field(repr=False)

    @property
    def clock(self) -> ShiftableClock:
        return self.server.service.clock  # type: ignore[attr-defined]

    @property
    def faults(self) -> FaultInjector:
        return self.server.faults  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop serving and close every connection (idempotent)."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()  # type: ignore[attr-defined]


def start_embedded(
    settings: AuthoritySettings, state_dir: Path, *, region: str, clock: Clock | None = None,
    faults: FaultInjector | None = None,
) -> EmbeddedAuthority:
    """Start an authority in this process on 127.0.0.1 (ephemeral port) with fresh credentials; it takes
    requests signed for ``region`` (this process's) and for ``settings.regions``."""
    import dataclasses

    access_key_id, secret = new_credentials()
    settings = dataclasses.replace(settings, regions=tuple(dict.fromkeys((region, *settings.regions))))
    server = open_server(settings, state_dir, {access_key_id: secret}, clock=clock, faults=faults, region=region).start()
    return EmbeddedAuthority(server.endpoint_url, access_key_id, secret, region, state_dir, server)


CREDENTIALS_FILE = "credentials.json"


def load_or_create_credentials(state_dir: Path) -> tuple[str, str, Path]:
    """The access key and secret kept in ``<state_dir>/credentials.json`` (0600), made once.

    Creation is race-free: the file is written under a temporary name and hard-linked
    into place, which fails if another process got there first (its file is then used).
    """
    import json
    import os

    from agent.paths import discard, fsync_dir, write_all
    from agent.errors import ConfigError

    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / CREDENTIALS_FILE
    if not path.exists():
        access_key_id, secret = new_credentials()
        tmp = state_dir / f".{CREDENTIALS_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, json.dumps({"access_key_id": access_key_id, "secret_access_key": secret},
                                         indent=2).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            discard(tmp)
        fsync_dir(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["access_key_id"], data["secret_access_key"], path
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{path}: not a credentials file (JSON with access_key_id and secret_access_key)",
            hint="delete it to have new credentials generated",
        ) from None
