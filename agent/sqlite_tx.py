"""One SQLite write transaction on an autocommit connection, all or nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` on ``conn``; ``ROLLBACK`` on any exception, which is re-raised.

    ``conn`` must be in autocommit mode (``isolation_level=None``).  ``IMMEDIATE`` takes the write
    lock at the start, so a read-modify-write in the block sees no other writer; waiting for that
    lock is up to the connection's busy timeout.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
