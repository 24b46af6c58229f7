"""What the HTTP layer hands the API layers (:mod:`.aws_api`, :mod:`.local_api`): a request as it
was received, and the :class:`Authority` answering it, which the HTTP server is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from agent.authority.faults import FaultInjector
from agent.authority.routes import Route
from agent.authority.service import AuthorityService
from agent.authority.sigv4 import Caller, Headers


@dataclass(frozen=True)
class Request:
    """One request as received: method, raw path and query (still percent-encoded), headers, body."""

    method: str
    path: str
    query: str
    headers: Headers
    body: bytes


class Authority(Protocol):
    """The authority a request is addressed to: its operations, its faults, who may sign for it and
    where its routes lead."""

    @property
    def service(self) -> AuthorityService: ...

    @property
    def faults(self) -> FaultInjector: ...

    def verify(self, request: Request, services: tuple[str, ...] | None, now: datetime) -> Caller:
        """The caller whose SigV4 signature ``request`` carries, scoped to one of ``services`` (None:
        any) and checked against ``now``; else the 403 saying why not."""
        ...

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method path`` and its URI labels; else a 404."""
        ...
