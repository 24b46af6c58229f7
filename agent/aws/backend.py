"""Which authority we talk to, and the clients for it.

- ``local`` (default): the local authority on a loopback ephemeral port, with credentials made up
  for this process; state in ``<state_dir>/authority``.  The daemon runs it in a child process
  (agent/aws/local_authority.py: its GIL is then its own, and eight sticks no longer cost eight
  times one); a one-shot command runs it in a thread of its own process, which answers ~0.2 s sooner.
- endpoint: ``backend.endpoint_url`` names any authority that speaks the protocol;
  credentials come from the normal AWS chain (``--profile``, ``AWS_*``).
- ``aws``: the AWS endpoints for ``backend.region`` and the normal credential chain.

The clients are botocore's, made by the botocore session directly: ``boto3.Session.client``
is that same call, and skipping boto3 here spares every process boto3's import of
s3transfer, multiprocessing and concurrent.futures (~100 ms of start-up, ~2.6 MiB resident
in the daemon).  The tests drive the authority with boto3 itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from agent.aws.errors import mend_error_body
from agent.aws.model import PANORAMA, SNOW, new_botocore_session
from agent.config import Settings

if TYPE_CHECKING:
    import botocore.session


USER_AGENT = "panostage"

#: A botocore client.  Its operations (``provision_device``, ``list_devices`` ...) are made at run time from
#: the service model, so no static type names them; their answers are plain dicts of the model's shapes.
Client: TypeAlias = Any


class ServiceBackend(Protocol):
    """The seam through which the stager, the daemon, the follow-up and recovery reach the service.

    :class:`Backend` is the one implementation; it holds one client per service and retry policy, and
    the local authority when it runs one.
    """

    @property
    def kind(self) -> str:
        """``local`` | ``endpoint`` | ``aws`` (certificates live as long as the local authority says)."""

    @property
    def settings(self) -> Settings:
        """The settings it was opened with (``[backend]``: attempts, timeouts)."""

    @property
    def clients_made(self) -> bool:
        """A client exists (the daemon freezes the long-lived objects once there are some)."""

    def panorama(self, *, max_attempts: int | None = None) -> Client:
        """The Panorama client; ``max_attempts=1`` turns botocore's retries off (ProvisionDevice)."""

    def snow(self) -> Client:
        """The Snow Device Management client."""

    def describe(self) -> dict[str, Any]:
        """What it talks to, for output: backend kind, endpoint, region."""

    def close(self) -> None:
        """Close the clients and stop the local authority (idempotent)."""


class RunningAuthority(Protocol):
    """The local authority as the backend holds it: in this process (agent/authority/embedded.py) or in a
    child process (agent/aws/local_authority.py)."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str

    def wait_ready(self) -> None:
        """Return once it serves; raise what stopped it from starting."""

    def stop(self) -> None:
        """Stop it (idempotent)."""


@dataclass
class Backend:
    """The configured service's clients (see the module's docstring); implements :class:`ServiceBackend`."""

    kind: str  # "local" | "endpoint" | "aws"
    region: str
    endpoint_url: str | None
    session: botocore.session.Session
    settings: Settings
    authority: RunningAuthority | None = None  # kind "local"
    _clients: dict[tuple[str, int], Client] = field(default_factory=dict, repr=False)

    def client(self, service: str, *, max_attempts: int | None = None) -> Client:
        """A client; ``max_attempts=1`` turns botocore's retries off (ProvisionDevice)."""
        from botocore.config import Config

        attempts = max_attempts or self.settings.backend.max_attempts
        key = (service, attempts)
        if key not in self._clients:
            config = Config(
                connect_timeout=self.settings.backend.connect_timeout,
                read_timeout=self.settings.backend.read_timeout,
                retries={"mode": "standard", "total_max_attempts": attempts},
                user_agent_extra=USER_AGENT,
            )
            client = self.session.create_client(
                service, region_name=self.region, endpoint_url=self.endpoint_url, config=config
            )
            client.meta.events.register("before-parse", mend_error_body)  # no error body may crash the parser
            if self.authority is not None and not self._clients:
                self.authority.wait_ready()  # a child started while this client was made; raise why if it did not
            self._clients[key] = client
        return self._clients[key]

    @property
    def clients_made(self) -> bool:
        """A client exists (the daemon freezes the long-lived objects once there are some)."""
        return bool(self._clients)

    def panorama(self, *, max_attempts: int | None = None) -> Client:
        return self.client(PANORAMA, max_attempts=max_attempts)

    def snow(self) -> Client:
        return self.client(SNOW)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "endpoint_url": self.endpoint_url, "region": self.region}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self.authority is not None:
            self.authority.stop()
            self.authority = None


def open_backend(settings: Settings, *, authority_process: bool = False) -> Backend:
    """Open the configured backend; for ``local``, start the local authority, in a child process when
    ``authority_process`` (the daemon), else in this one."""
    cfg = settings.backend
    if cfg.endpoint_url or cfg.name == "aws":
        session = new_botocore_session(region=cfg.region, profile=cfg.profile)
        return Backend(
            "endpoint" if cfg.endpoint_url else "aws", cfg.region, cfg.endpoint_url or None, session, settings
        )

    from agent import paths

    state_dir = paths.state_dir(settings) / "authority"
    authority: RunningAuthority
    if authority_process:
        from agent.aws.local_authority import LocalAuthority

        authority = LocalAuthority(settings.authority, state_dir, region=cfg.region).start()
    else:
        from agent.authority.embedded import start_embedded

        authority = start_embedded(settings.authority, state_dir, region=cfg.region)
    session = new_botocore_session(region=cfg.region)
    session.set_credentials(authority.access_key_id, authority.secret_access_key)
    return Backend("local", cfg.region, authority.endpoint_url, session, settings, authority=authority)
