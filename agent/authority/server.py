"""The authority's HTTP side: routing from the service models, request parsing, SigV4,
fault injection, and REST-JSON encoding of results and errors.

Routes come from the operations' ``http`` traits in the service definitions (ours for
Panorama, botocore's for Snow Device Management), so the server and an unmodified boto3
client agree by construction.  Local (non-AWS) routes live under ``/_local/``:
``GET /_local/health`` (unsigned), ``POST /_local/claim`` (authenticated by the device
certificate), and the SigV4-signed admin API ``/_local/faults`` and ``/_local/clock``.

Request bodies are JSON objects of at most :data:`MAX_BODY` bytes (413), nested at most
:data:`MAX_DEPTH` deep and without NaN/Infinity (400 SerializationException); every error
answer, http.server's own included, is JSON with ``x-amzn-ErrorType``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import selectors
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from agent import __version__
from agent.authority import sigv4
from agent.authority.apierror import (
    ApiError,
    cannot_parse,
    injected,
    internal,
    invalid_request,
    serialization_error,
    too_large,
    unknown_operation,
    validation_error,
)
from agent.authority.faults import NO_FAULT, FaultAction, FaultInjector, FaultSpecError, rule_from_mapping
from agent.authority.service import PANORAMA, SNOW, AuthorityService, RequestContext
from agent.errors import Violation

log = logging.getLogger("agent.authority")
MAX_BODY = 1024 * 1024
MAX_DEPTH = 64  # arrays and objects in a request body, nested
_JSON_SPECIAL = re.compile(r'[\[\]{}"\\]')
SUPPORTED = {
    PANORAMA: (
        "ProvisionDevice",
        "DescribeDevice",
        "ListDevices",
        "DeleteDevice",
        "CreateJobForDevices",
        "DescribeDeviceJob",
        "ListDevicesJobs",
        "CreatePackageImportJob",
        "DescribePackageImportJob",
    ),
    SNOW: (
        "CreateTask",
        "DescribeTask",
        "DescribeExecution",
        "ListTasks",
        "ListExecutions",
        "CancelTask",
        "ListDevices",
    ),
}


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
            uri, query, body = {}, {}, False
            for member, shape in op.input_shape.members.items():
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


def _wire(value: Any) -> Any:
    """JSON encoding of what the handlers return: epoch seconds and base64."""
    if isinstance(value, datetime):
        return round(value.timestamp(), 3)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode(value: Any) -> bytes:
    return json.dumps(value, default=_wire, separators=(",", ":")).encode()


def nested_too_deeply(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in the JSON ``text`` nest deeper than ``limit`` (one linear pass that
    skips strings; it runs before the parser, which recurses once per level)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string, escaped = 0, False, -1
    for match in _JSON_SPECIAL.finditer(text):
        at, char = match.start(), match.group()
        if in_string:
            if at == escaped:
                continue
            if char == "\\":
                escaped = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


class _NotJsonNumber(ValueError):
    """NaN, Infinity, or a number out of a double's range: not JSON numbers."""


def _refuse_constant(name: str) -> float:
    raise _NotJsonNumber(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJsonNumber(f"the number {text[:40]} is out of range")
    return value


def load_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it: CANNOT_PARSE, or a
    SerializationException for nesting deeper than :data:`MAX_DEPTH` and for NaN/Infinity."""
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise cannot_parse(
            f"request body is not valid JSON: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    if nested_too_deeply(text):
        raise serialization_error(
            f"request body is nested too deeply: more than {MAX_DEPTH} levels of arrays and objects"
        )
    try:
        parsed = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except _NotJsonNumber as exc:
        raise serialization_error(f"request body is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise cannot_parse(f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise cannot_parse("request body must be a JSON object")
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
        raise cannot_parse(f"request body holds an unpaired UTF-16 surrogate ({bad}), which is not text") from None
    return parsed


class AuthorityHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows the authority and its open connections."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        service: AuthorityService,
        credentials: dict[str, str],
        faults: FaultInjector,
        regions: tuple[str, ...] | None = None,
        *,
        listening: socket.socket | None = None,
    ) -> None:
        """Bind ``address``, or serve on ``listening``, a socket bound and listening already (the embedded
        authority's child process inherits its parent's: agent/aws/local_authority.py)."""
        self.service = service
        self.credentials = credentials
        self.faults = faults
        self.regions = regions  # the regions a credential scope may name (None: any)
        self.routes = build_routes()
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        if listening is None:
            super().__init__(address, AuthorityHandler)
            return
        super().__init__(address, AuthorityHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listening
        self.server_address = listening.getsockname()
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def endpoint_url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def track(self, sock: socket.socket, open_: bool) -> None:
        with self._conn_lock:
            (self._connections.add if open_ else self._connections.discard)(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a request's dispatch: a client's reset is one log line."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.warning("authority: connection from %s lost: %s", client_address[0], exc)
        else:
            log.exception("authority: connection from %s failed", client_address[0])

    def start(self) -> AuthorityHTTPServer:
        """Serve in a daemon thread."""
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="authority-http", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        """Accept until stopped, sleeping in select() with no timeout: an idle authority never wakes."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _events in selector.select():
                    if key.fileobj is self and not self._stopping:
                        self._handle_request_noblock()

    def stop(self) -> None:
        """Stop accepting, close the listening socket and every open connection."""
        if self._thread is not None:
            self._stopping = True
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=10)
            self._thread = None
            os.close(self._wake_r)
            os.close(self._wake_w)
        self.server_close()
        with self._conn_lock:
            connections, self._connections = list(self._connections), set()
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.service.store.close()

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed = []
        for route in self.routes:
            found = route.pattern.match(path)
            if found:
                if route.method == method:
                    return route, found.groupdict()
                allowed.append(route.method)
        raise unknown_operation(method, path, allowed)


class _Drop(Exception):
    """Close the connection without answering (fault ``drop_connection``)."""


class AuthorityHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"panostage-authority/{__version__}"
    timeout = 120  # idle keep-alive connections are closed after this
    server: AuthorityHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        self.server.service.store.close()  # this thread's database connection ends with it
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    # -------------------------------------------------------------- dispatch

    def _dispatch(self) -> None:
        started = time.monotonic()
        status = 500
        try:
            split = urlsplit(self.path)
            body = self._read_body()
            if split.path.startswith("/_local/"):
                status, result = self._local(split.path, split.query, body)
            else:
                status, result = self._aws(split.path, split.query, body)
            self._send(status, encode(result))
        except _Drop:
            self.close_connection = True
            status = 0
        except (ConnectionError, TimeoutError) as exc:  # the client reset, left or stalled: nobody to answer
            self.close_connection = True
            status = 0
            log.warning(
                "authority: %s %s: connection from %s lost: %s",
                self.command,
                self.path.split("?")[0],
                self.client_address[0],
                exc,
            )
        except ApiError as error:
            status = error.status
            self._send_error(error)
        except Exception:  # the boundary: answer 500, keep serving
            log.exception("authority: %s %s failed", self.command, self.path.split("?")[0])
            self._send_error(internal("internal error in the authority; see its log"))
        log.debug(
            "%s %s -> %s in %.1f ms", self.command, self.path.split("?")[0], status, (time.monotonic() - started) * 1000
        )

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise validation_error("chunked request bodies are not supported; send Content-Length", reason="OTHER")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise cannot_parse("Content-Length is not a number") from None
        if length > MAX_BODY:
            self.close_connection = True
            raise too_large(f"Request must be smaller than {MAX_BODY} bytes (this one has {length})")
        return self.rfile.read(length) if length > 0 else b""

    def _aws(self, path: str, query: str, body: bytes) -> tuple[int, Any]:
        route, labels = self.server.match(self.command, path)
        caller = self._verify(path, query, body, (route.service,), self.server.service.clock.now())
        action = self._fault(route.service, route.operation)
        params = self._params(route, labels, query, body)
        ctx = RequestContext(caller.region, route.service, route.operation, caller.access_key_id)
        result = self.server.service.handle(ctx, params, defect=action.archive)
        self._after(action, route.operation)
        return 200, result

    def _verify(
        self, path: str, query: str, body: bytes, services: tuple[str, ...] | None, now: datetime
    ) -> sigv4.Caller:
        return sigv4.verify(
            method=self.command,
            raw_path=path,
            query=query,
            headers=self.headers,
            body=body,
            credentials=self.server.credentials,
            now=now,
            services=services,
            regions=self.server.regions,
        )

    def _fault(self, service: str, operation: str) -> FaultAction:
        action = self.server.faults.decide(service, operation)
        if action is NO_FAULT:
            return action
        if action.latency_s:
            time.sleep(action.latency_s)
        if action.fails and not action.after_commit:
            self._after(action, operation)
        return action

    def _after(self, action: FaultAction, operation: str) -> None:
        if action.drop_connection:
            raise _Drop()
        if action.error is not None:
            raise injected(action.error, operation)

    def _params(self, route: Route, labels: dict[str, str], query: str, body: bytes) -> dict[str, Any]:
        params: dict[str, Any] = load_json_object(body) if body.strip() else {}
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

    # -------------------------------------------------------------- /_local/

    #: the admin API: (path, method) pairs, all SigV4-signed with any service name in the scope
    ADMIN: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("/_local/faults", "GET"),
            ("/_local/faults", "PUT"),
            ("/_local/faults", "DELETE"),
            ("/_local/clock", "GET"),
            ("/_local/clock", "PUT"),
        }
    )
    OPEN: ClassVar[frozenset[tuple[str, str]]] = frozenset({("/_local/health", "GET"), ("/_local/claim", "POST")})

    def _local(self, path: str, query: str, body: bytes) -> tuple[int, Any]:
        key = (path, self.command)
        if key not in self.ADMIN and key not in self.OPEN:
            raise unknown_operation(self.command, path, [m for p, m in self.ADMIN | self.OPEN if p == path])
        service = self.server.service
        if path == "/_local/health":
            return 200, {
                "status": "ok",
                "pid": os.getpid(),
                "version": __version__,
                "ca_fingerprint": service.ca.fingerprint,
                "time": service.clock.now(),
                "clock_offset_seconds": service.clock.offset_seconds,
            }
        if path == "/_local/claim":
            action = self._fault("local", "Claim")
            result = service.claim(load_json_object(body))
            self._after(action, "Claim")
            return 200, result
        # Admin calls are checked against the unshifted clock, so a shifted authority stays controllable.
        self._verify(path, query, body, None, service.clock.base.now())
        data = load_json_object(body or b"{}") if self.command == "PUT" else {}
        if path == "/_local/clock":
            if self.command == "PUT":
                self._set_clock(data)
            return 200, {"now": service.clock.now(), "offset_seconds": service.clock.offset_seconds}
        if self.command == "PUT":
            self._set_faults(data)
        elif self.command == "DELETE":
            self.server.faults.clear(dict(sigv4.query_pairs(query)).get("operation") or None)
        return 200, self.server.faults.snapshot()

    def _set_clock(self, data: dict[str, Any]) -> None:
        clock = self.server.service.clock
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

    def _set_faults(self, data: dict[str, Any]) -> None:
        faults = self.server.faults
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

    # -------------------------------------------------------------- responses

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        lines = [f"{self.protocol_version} {status} {self.responses.get(status, ('',))[0]}"]
        lines += [
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"x-amzn-RequestId: {uuid.uuid4()}",
            f"Date: {self.date_time_string(self.server.service.clock.now().timestamp())}",  # the service's clock
            f"Server: {self.server_version}",
        ]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # One write: headers and body together (no Nagle/delayed-ACK stall between them).
        self.wfile.write(head + (b"" if self.command == "HEAD" else body))
        self.wfile.flush()

    def _send_error(self, error: ApiError) -> None:
        headers = {"x-amzn-ErrorType": error.error_type, **error.headers}
        try:
            self._send(error.status, encode(error.body()), headers)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (400 bad request line, 414, 431, 501 unsupported method, ...) in the
        same JSON shape as every other error, typed after the status (``RequestURITooLongException``)."""
        phrase = self.responses.get(code, ("Error",))[0]
        error_type = "".join(word[:1].upper() + word[1:] for word in re.split(r"[^A-Za-z0-9]+", phrase)) + "Exception"
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        self._send_error(ApiError(code, error_type, f"{message or phrase}" + (f": {explain}" if explain else "")))
