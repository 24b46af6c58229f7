"""The authority's local (non-AWS) API, under ``/_local/``: ``GET /_local/health`` (unsigned),
``POST /_local/claim`` (authenticated by the device certificate), and the admin API, SigV4-signed
with any service name in the scope: ``/_local/faults`` (GET, PUT, DELETE) and ``/_local/clock``
(GET, PUT).  Admin calls are checked against the unshifted clock, so a shifted authority stays
controllable.  :class:`~agent.authority.admin.AdminClient` is its client."""

from __future__ import annotations

import os
from typing import Any

from agent import __version__
from agent.authority import sigv4
from agent.authority.apierror import invalid_request, unknown_operation, validation_error
from agent.authority.fault_gate import after_call, before_call
from agent.authority.faults import FaultInjector, FaultSpecError, rule_from_mapping
from agent.authority.lifecycle import ShiftableClock
from agent.authority.operation_base import Response
from agent.authority.request import Authority, Request
from agent.authority.wire import load_json_object
from agent.errors import Violation

#: the admin API: (path, method) pairs, all SigV4-signed with any service name in the scope
ADMIN = frozenset(
    {
        ("/_local/faults", "GET"),
        ("/_local/faults", "PUT"),
        ("/_local/faults", "DELETE"),
        ("/_local/clock", "GET"),
        ("/_local/clock", "PUT"),
    }
)
#: the (path, method) pairs that need no signature
OPEN = frozenset({("/_local/health", "GET"), ("/_local/claim", "POST")})


def answer_local(authority: Authority, request: Request) -> Response:
    """The answer to a ``/_local/`` request (200), or an :class:`~agent.authority.apierror.ApiError`."""
    path, method = request.path, request.method
    key = (path, method)
    if key not in ADMIN and key not in OPEN:
        raise unknown_operation(method, path, [m for p, m in ADMIN | OPEN if p == path])
    service = authority.service
    if path == "/_local/health":
        return {
            "status": "ok",
            "pid": os.getpid(),
            "version": __version__,
            "ca_fingerprint": service.ca.fingerprint,
            "time": service.clock.now(),
            "clock_offset_seconds": service.clock.offset_seconds,
        }
    if path == "/_local/claim":
        action = before_call(authority.faults, "local", "Claim")
        result = service.claim(load_json_object(request.body))
        after_call(action, "Claim")
        return result
    authority.verify(request, None, service.clock.base.now())
    data = load_json_object(request.body or b"{}") if method == "PUT" else {}
    if path == "/_local/clock":
        if method == "PUT":
            set_clock(service.clock, data)
        return {"now": service.clock.now(), "offset_seconds": service.clock.offset_seconds}
    if method == "PUT":
        set_faults(authority.faults, data)
    elif method == "DELETE":
        authority.faults.clear(dict(sigv4.query_pairs(request.query)).get("operation") or None)
    return authority.faults.snapshot()


def set_clock(clock: ShiftableClock, data: dict[str, Any]) -> None:
    """``PUT /_local/clock``: set ``offset_seconds``, else advance by ``advance_seconds``."""
    for key, apply in (("offset_seconds", clock.set_offset), ("advance_seconds", clock.advance)):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise invalid_request([Violation(key, value, "must be a number of seconds")])
            try:
                apply(value)  # refuses, before storing, a value that is not finite or leaves the bounds
            except (ValueError, OverflowError) as exc:
                raise invalid_request([Violation(key, value, str(exc))]) from None
            return
    raise invalid_request([Violation("offset_seconds", None, "required (or advance_seconds)")])


def set_faults(faults: FaultInjector, data: dict[str, Any]) -> None:
    """``PUT /_local/faults``: check every rule first, then (``replace``: clear,) reseed and set them."""
    rules = data.get("rules", {})
    if not isinstance(rules, dict) or not all(isinstance(v, dict) for v in rules.values()):
        raise invalid_request([Violation("rules", rules, "must map operation names to {key: value}")])
    try:
        parsed = {op: rule_from_mapping(op, values) for op, values in rules.items()}
    except FaultSpecError as exc:
        raise validation_error(exc.message, [Violation("rules", None, exc.message)]) from None
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise invalid_request([Violation("seed", seed, "must be an integer")])
    if data.get("replace"):
        faults.clear()
    if seed is not None:
        faults.reseed(seed)
    for op, rule in parsed.items():
        faults.set(op, rule)
