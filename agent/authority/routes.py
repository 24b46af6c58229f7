"""The AWS routes: one per supported operation, taken from the ``http`` traits of the service
models (ours for Panorama, botocore's for Snow Device Management), so the server and an
unmodified boto3 client agree by construction; and an operation's parameters gathered from a
request's URI labels, query string and JSON body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from agent.authority import sigv4
from agent.authority.apierror import invalid_request, unknown_operation
from agent.authority.operation_base import Params
from agent.authority.wire import load_json_object
from agent.aws.operations import BY_SERVICE
from agent.errors import Violation

SUPPORTED = BY_SERVICE  # service -> the operations the authority answers


@dataclass(frozen=True)
class Route:
    service: str
    operation: str
    method: str
    pattern: re.Pattern[str]
    uri: dict[str, str]  # URI label -> member name
    query: dict[str, tuple[str, str]]  # query key -> (member name, shape type)
    has_body: bool


def build_routes() -> list[Route]:
    """A route per supported operation, from the service models' http traits."""
    from agent.aws.model import new_botocore_session

    session = new_botocore_session()
    routes = []
    for service, operations in SUPPORTED.items():
        model = session.get_service_model(service)
        for name in operations:
            op = model.operation_model(name)
            path = op.http["requestUri"].split("?")[0]
            regex = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>[^/]+)", re.escape(path))
            uri: dict[str, str] = {}
            query: dict[str, tuple[str, str]] = {}
            body = False
            members = op.input_shape.members if op.input_shape is not None else {}
            for member, shape in members.items():
                location = shape.serialization.get("location")
                where = shape.serialization.get("name", member)
                if location == "uri":
                    uri[where] = member
                elif location == "querystring":
                    query[where] = (member, shape.type_name)
                elif location is None:
                    body = True
            routes.append(Route(service, name, op.http["method"], re.compile(f"^{regex}$"), uri, query, body))
    return routes


def match_route(routes: list[Route], method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route for ``method path`` and its URI labels (still percent-encoded); else a 404 that
    names the methods the path does take."""
    allowed = []
    for route in routes:
        found = route.pattern.match(path)
        if found:
            if route.method == method:
                return route, found.groupdict()
            allowed.append(route.method)
    raise unknown_operation(method, path, allowed)


def request_params(route: Route, labels: dict[str, str], query: str, body: bytes) -> Params:
    """The operation's members: the JSON body's, then the query's (typed by their shapes; a 400 names
    every one that is not), then the URI labels'."""
    params: Params = load_json_object(body) if body.strip() else {}
    problems = []
    for key, value in sigv4.query_pairs(query):
        if key not in route.query:
            continue
        member, kind = route.query[key]
        if kind in ("integer", "long"):
            try:
                params[member] = int(value)
            except ValueError:
                problems.append(Violation(member, value, "must be an integer"))
        elif kind == "boolean":
            if value not in ("true", "false"):
                problems.append(Violation(member, value, "must be true or false"))
            params[member] = value == "true"
        elif kind == "list":
            params.setdefault(member, []).append(value)
        else:
            params[member] = value
    if problems:
        raise invalid_request(problems)
    for label, member in route.uri.items():
        params[member] = unquote(labels[label])
    return params
