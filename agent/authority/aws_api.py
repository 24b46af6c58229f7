"""The AWS side of the authority: a request matched to its operation's route, its SigV4 signature
checked (scoped to the route's service), faults applied, its parameters gathered and the operation
run by :class:`~agent.authority.service.AuthorityService`."""

from __future__ import annotations

from agent.authority.fault_gate import after_call, before_call
from agent.authority.operation_base import RequestContext, Response
from agent.authority.request import Authority, Request
from agent.authority.routes import request_params


def answer_aws(authority: Authority, request: Request) -> Response:
    """The operation's result for ``request`` (200), or an :class:`~agent.authority.apierror.ApiError`."""
    route, labels = authority.match(request.method, request.path)
    caller = authority.verify(request, (route.service,), authority.service.clock.now())
    action = before_call(authority.faults, route.service, route.operation)
    params = request_params(route, labels, request.query, request.body)
    ctx = RequestContext(caller.region, route.service, route.operation, caller.access_key_id)
    result = authority.service.handle(ctx, params, defect=action.archive)
    after_call(action, route.operation)
    return result
