"""What a process holds, from /proc: for the leak checks of the daemon (tests and scripts/bench)."""

from __future__ import annotations

import contextlib
import os


def tcp_sockets(pid: int) -> dict[str, tuple[int, str]]:
    """socket inode -> (local port, state) of the process's TCP sockets (/proc/<pid>/net/tcp, tcp6)."""
    found = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                found[fields[9]] = (int(fields[1].rsplit(":", 1)[1], 16), fields[3])
    return found


def resources(pid: int) -> dict[str, int]:
    """What a leak would grow: descriptors, threads, the state database's connections.

    The HTTP keep-alive connections between the daemon's clients and the local authority are counted
    apart: botocore's pool holds at most ``max_pool_connections`` (10) of them per client, each a client
    socket (and, with an authority in the same process, a server socket, a handler thread and that
    thread's connection to the authority's store) - how many depends on the most calls ever made at
    once, which a test cannot pin.  Bounded by the pools, they are checked against them.  SQLite keeps the descriptor of a closed connection open while
    another connection of the process holds a lock on that file (POSIX locks are per process) and
    reuses it for the next connection: ``database`` counts those too (as many as connections were ever
    open at once), so ``fds`` leaves them out; ``wal`` counts the connections open now.
    """
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    tcp = tcp_sockets(pid)
    mine = [tcp[link[8:-1]] for link in links if link.startswith("socket:[") and link[8:-1] in tcp]
    listening = {port for port, state in mine if state == "0A"}
    http = [(port, state) for port, state in mine if state != "0A"]
    served = sum(port in listening for port, _ in http)
    store = sum(link.endswith(("authority.sqlite3", "authority.sqlite3-wal")) for link in links)  # a handler's
    database = sum(link.endswith("panostage.sqlite3") for link in links)
    return {
        "fds": len(links) - len(http) - store - database,
        "threads": len(os.listdir(f"/proc/{pid}/task")) - served,
        "database": database,
        "wal": sum(link.endswith("panostage.sqlite3-wal") for link in links),
        "http_connections": len(http) - served,
    }
