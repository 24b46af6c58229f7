"""What every group of operation handlers shares: who asked (:class:`RequestContext`), the
authority's state (settings, store, CA, clock), ARNs, the live-device look-up, and client
tokens that make a create request idempotent."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.authority import lifecycle as lc
from agent.authority.apierror import conflict, not_found
from agent.authority.ca import CertificateAuthority
from agent.authority.store import Row, Store, dumps
from agent.config import AuthoritySettings

#: a request's members as parsed from JSON, and a response before the wire layer encodes it
Params = dict[str, Any]
Response = dict[str, Any]


@dataclass(frozen=True)
class RequestContext:
    """Who asked: the region of the signature's scope (used in ARNs), service and operation."""

    region: str
    service: str
    operation: str
    access_key_id: str = ""


#: an operation's handler: the request (already validated) and the archive defect to inject, if any
Handler = Callable[[RequestContext, Params, str | None], Response]


class OperationGroup:
    """Operations over one store, CA and clock: ``SERVICE``'s ``OPERATIONS``, each answered by the
    method of its name in snake case (ProvisionDevice: ``provision_device``)."""

    SERVICE = ""
    OPERATIONS: tuple[str, ...] = ()

    def __init__(
        self, settings: AuthoritySettings, store: Store, ca: CertificateAuthority, clock: lc.ShiftableClock
    ) -> None:
        self.settings = settings
        self.store = store
        self.ca = ca
        self.clock = clock
        self.account_id = store.account_id

    def handlers(self) -> dict[tuple[str, str], Handler]:
        """(service, operation) → handler."""
        return {(self.SERVICE, name): getattr(self, _snake_case(name)) for name in self.OPERATIONS}

    @property
    def step(self) -> float:
        return float(self.settings.job_step_seconds)

    def arn(self, service: str, region: str, resource: str) -> str:
        return f"arn:aws:{service}:{region}:{self.account_id}:{resource}"

    def live_device(self, device_id: str) -> tuple[Row, list[Row], lc.DeviceState]:
        """A device that is not gone: its row, its jobs and its state now; else ResourceNotFound."""
        row = self.store.device(device_id)
        if row is not None:
            jobs = self.store.jobs_of(device_id)
            state = lc.device_state(row, jobs, self.clock.timestamp(), self.step)
            if not state.gone:
                return row, jobs, state
        raise not_found("device", device_id, f"device {device_id} not found")


def _snake_case(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


@dataclass(frozen=True)
class IdempotentRequest:
    """A create request with a client token: the same token with the same request names the first
    resource again; with a different request it is a conflict."""

    token_name: str
    token: str | None
    request_json: str  # the request without the token, as the store keeps it
    digest: str

    @classmethod
    def of(cls, params: Params, token_name: str) -> IdempotentRequest:
        request_json = dumps({k: v for k, v in params.items() if k != token_name})
        return cls(token_name, params.get(token_name), request_json, hashlib.sha256(request_json.encode()).hexdigest())

    def check_stored(self, stored: Row, id_column: str, new_id: str, resource_type: str, noun: str) -> None:
        """Refuse ``stored`` (what the store holds for this token) if it is another request's resource."""
        stored_id = stored[id_column]
        if stored_id != new_id and stored["request_hash"] != self.digest:
            raise conflict(
                resource_type,
                stored_id,
                f"{self.token_name} {self.token!r} was already used for a different request ({noun} {stored_id})",
            )
