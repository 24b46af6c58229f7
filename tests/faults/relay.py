"""A recording TCP relay between the station and the authority.

The archive lives only in ProvisionDevice's answer, and the station must never keep it; to
prove that, the test must know the archive's bytes even when the hand-off failed before the
archive reached the stick (a write fault, an archive refused on arrival, a lost answer).
The relay forwards bytes unchanged in both directions (SigV4 signs the Host header the client
sent, which the relay does not touch) and keeps what the authority answered, in memory, so
:meth:`Relay.archives` can pull every ``Certificates`` blob out of it.
"""

from __future__ import annotations

import base64
import re
import selectors
import socket
import threading
from collections.abc import Callable

_CERTIFICATES = re.compile(rb'"Certificates"\s*:\s*"([A-Za-z0-9+/=]+)"')


class Relay:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._answers: list[bytearray] = []
        self._requests: list[bytearray] = []
        self._open: set[socket.socket] = set()
        self._draining: set[socket.socket] = set()
        self._stopped = False
        #: called with each client connection before it is relayed (a test may hold or drop it)
        self.on_connect: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._accept, name="relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), name="relay-conn", daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        answer, request = bytearray(), bytearray()
        with self._lock:
            self._answers.append(answer)
            self._requests.append(request)
            self._open |= {client, server}
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, server)
        sel.register(server, selectors.EVENT_READ, client)
        client_gone = False
        try:
            while True:
                for key, _ in sel.select():
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    try:
                        chunk = src.recv(65536)
                    except OSError:
                        chunk = b""
                    if not chunk and src is server:
                        return
                    if not chunk:
                        # the client gave up (a read timeout): let the authority finish what it was
                        # asked - it may still commit - and read its answer to the end
                        client_gone = True
                        sel.unregister(client)
                        with self._lock:
                            self._draining.add(server)
                        try:
                            server.shutdown(socket.SHUT_WR)
                        except OSError:
                            return
                        continue
                    with self._lock:
                        (answer if src is server else request).extend(chunk)
                    if client_gone:
                        continue
                    try:
                        dst.sendall(chunk)
                    except OSError:
                        client_gone = True
        finally:
            sel.close()
            with self._lock:
                self._open -= {client, server}
                self._draining.discard(server)
            for sock in (client, server):
                try:
                    sock.close()
                except OSError:
                    pass

    def drained(self) -> bool:
        """True when no request a client gave up on is still being worked on by the authority."""
        with self._lock:
            return not self._draining

    def reset(self) -> None:
        """Forget what was recorded (the start of a case)."""
        with self._lock:
            for buffer in (*self._answers, *self._requests):
                buffer.clear()

    def requested(self, needle: bytes) -> bool:
        """Has a client sent a request containing ``needle`` (``b"POST /devices "``) since the reset?"""
        with self._lock:
            return any(needle in bytes(r) for r in self._requests)

    def archives(self) -> list[bytes]:
        """Every configuration archive the authority answered since the last :meth:`reset`."""
        with self._lock:
            blobs = [bytes(a) for a in self._answers]
        found: list[bytes] = []
        for blob in blobs:
            for match in _CERTIFICATES.finditer(blob):
                data = base64.b64decode(match.group(1))
                if data not in found:
                    found.append(data)
        return found

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
