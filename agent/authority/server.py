"""The authority's HTTP plumbing: the threading server (its listening socket, open connections and
serving thread) and the request handler, which reads a request, hands it to the AWS side
(:mod:`.aws_api`, routes from :mod:`.routes`) or the local one under ``/_local/``
(:mod:`.local_api`), and writes the answer.

Request bodies go by Content-Length only, at most :data:`~agent.authority.wire.MAX_BODY` bytes
(413); their JSON is read by :mod:`.wire`.  Every error answer, http.server's own included, is JSON
with ``x-amzn-ErrorType``; a client that resets or stalls is one log line, anything else a 500.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import socket
import sys
import threading
import time
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from agent import __version__
from agent.authority import sigv4
from agent.authority.apierror import ApiError, cannot_parse, internal, too_large, validation_error
from agent.authority.aws_api import answer_aws
from agent.authority.fault_gate import DropConnection
from agent.authority.faults import FaultInjector
from agent.authority.local_api import answer_local
from agent.authority.request import Request
from agent.authority.routes import SUPPORTED, Route, build_routes, match_route
from agent.authority.service import AuthorityService
from agent.authority.wire import MAX_BODY, MAX_DEPTH, encode, load_json_object, nested_too_deeply

__all__ = [
    "MAX_BODY",
    "MAX_DEPTH",
    "SUPPORTED",
    "AuthorityHTTPServer",
    "AuthorityHandler",
    "Route",
    "build_routes",
    "encode",
    "load_json_object",
    "nested_too_deeply",
]

log = logging.getLogger("agent.authority")


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
        regions: tuple[str, ...],
        *,
        listening: socket.socket | None = None,
    ) -> None:
        """Bind ``address``, or serve on ``listening``, a socket bound and listening already (the embedded
        authority's child process inherits its parent's: agent/aws/local_authority.py)."""
        self.service = service
        self.credentials = credentials
        self.faults = faults
        self.regions = regions  # the regions a credential scope may name
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
        address = listening.getsockname()  # (host, port[, flowinfo, scope_id])
        self.server_address = address
        self.server_name, self.server_port = address[:2]

    @property
    def endpoint_url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, (bytes, bytearray)) else host
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def track(self, sock: socket.socket, open_: bool) -> None:
        with self._conn_lock:
            (self._connections.add if open_ else self._connections.discard)(sock)

    def handle_error(self, request: object, client_address: Any) -> None:
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
                        # socketserver's accept-and-handle-one step, undocumented: typeshed leaves it out
                        self._handle_request_noblock()  # type: ignore[attr-defined]

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
        return match_route(self.routes, method, path)

    def verify(self, request: Request, services: tuple[str, ...] | None, now: datetime) -> sigv4.Caller:
        """The caller whose signature ``request`` carries (see :func:`agent.authority.sigv4.verify`)."""
        return sigv4.verify(
            method=request.method,
            raw_path=request.path,
            query=request.query,
            headers=request.headers,
            body=request.body,
            credentials=self.credentials,
            now=now,
            services=services,
            regions=self.regions,
        )


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
            request = Request(self.command, split.path, split.query, self.headers, self._read_body())
            if request.path.startswith("/_local/"):
                result = answer_local(self.server, request)
            else:
                result = answer_aws(self.server, request)
            status = 200
            self._send(status, encode(result))
        except DropConnection:
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
