"""The authority's dispatcher: a parsed request in, checked against every documented constraint
and handed to its operation; a response dict out (datetimes and bytes left for the wire layer to
encode), or an :class:`ApiError` raised.

The operations: Panorama's devices (:mod:`.panorama_devices`) and jobs (:mod:`.panorama_jobs`),
Snow Device Management (:mod:`.snow_device_management`), and the appliance's claim, not an AWS
API (:mod:`.claim_check`).
"""

from __future__ import annotations

from pathlib import Path

from agent.authority import lifecycle as lc
from agent.authority.apierror import ApiError, invalid_request
from agent.authority.ca import CertificateAuthority
from agent.authority.claim_check import ApplianceClaims, claim_message
from agent.authority.operation_base import Handler, OperationGroup, Params, RequestContext, Response
from agent.authority.panorama_devices import PanoramaDeviceOperations
from agent.authority.panorama_jobs import PanoramaJobOperations
from agent.authority.snow_device_management import SnowDeviceManagementOperations
from agent.authority.store import Store
from agent.aws.operations import PANORAMA, SNOW
from agent.aws.validation import check
from agent.clock import Clock
from agent.config import AuthoritySettings

__all__ = ["PANORAMA", "SNOW", "AuthorityService", "RequestContext", "claim_message"]

GROUPS: tuple[type[OperationGroup], ...] = (
    PanoramaDeviceOperations,
    PanoramaJobOperations,
    SnowDeviceManagementOperations,
)


class AuthorityService(OperationGroup):
    """All operations over one store, CA and clock."""

    def __init__(
        self, settings: AuthoritySettings, store: Store, ca: CertificateAuthority, clock: lc.ShiftableClock
    ) -> None:
        super().__init__(settings, store, ca, clock)
        self.operations = self.handlers()
        self.claims = ApplianceClaims(settings, store, ca, clock)

    @classmethod
    def open(cls, settings: AuthoritySettings, state_dir: Path, clock: Clock | None = None) -> AuthorityService:
        """The service over the state in ``state_dir`` (CA and database created on first use)."""
        shiftable = clock if isinstance(clock, lc.ShiftableClock) else lc.ShiftableClock(clock)
        ca = CertificateAuthority.load_or_create(state_dir, shiftable.now())
        return cls(settings, Store(state_dir, now=shiftable.timestamp()), ca, shiftable)

    def handlers(self) -> dict[tuple[str, str], Handler]:
        """Every group's operations, by (service, operation)."""
        return {
            name: handler
            for group in GROUPS
            for name, handler in group(self.settings, self.store, self.ca, self.clock).handlers().items()
        }

    def handle(self, ctx: RequestContext, params: Params, defect: str | None = None) -> Response:
        """Validate ``params`` against every documented constraint, then run the operation."""
        handler = self.operations.get((ctx.service, ctx.operation))
        if handler is None:
            raise ApiError(404, "UnknownOperationException", f"{ctx.service} has no operation {ctx.operation}")
        violations = check(ctx.operation, params, service=ctx.service)
        if violations:
            raise invalid_request(violations)
        return handler(ctx, params, defect)

    def claim(self, body: Params) -> Response:
        """Register a device with the certificate from its archive (``POST /_local/claim``)."""
        return self.claims.claim(body)
