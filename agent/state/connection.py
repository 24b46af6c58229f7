"""Connections to the state database: one per thread, errors that name the file, one writer lock per file.

Writers in one process queue on a lock rather than in SQLite's busy handler, which polls with
sleeps of up to 100 ms: with eight sticks at once that polling, not the work, was the wait.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.error_mapping import name_database

#: One writer lock per database file in this process (see the module docstring).
_WRITERS: dict[Path, threading.RLock] = {}
_WRITERS_GUARD = threading.Lock()


class NamedConnection(sqlite3.Connection):
    """A connection whose errors name its database file (:func:`agent.error_mapping.name_database`)."""

    def __init__(self, database: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        self.database_path = str(database)
        with self._named():
            super().__init__(database, *args, **kwargs)

    def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        with self._named():
            return super().execute(*args, **kwargs)

    def executescript(self, script: str) -> sqlite3.Cursor:
        with self._named():
            return super().executescript(script)

    @contextmanager
    def _named(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            name_database(exc, self.database_path)
            raise


def writer_lock(path: Path) -> threading.RLock:
    """The lock this process's writers of the database at ``path`` queue on."""
    with _WRITERS_GUARD:
        return _WRITERS.setdefault(path.resolve(), threading.RLock())


def connect(path: Path) -> sqlite3.Connection:
    """A new connection for this thread: autocommit, WAL, ``synchronous=FULL``, rows as :class:`sqlite3.Row`."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=True, factory=NamedConnection)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA cache_size=-256")  # 256 KiB per thread's connection: the database is small
    return conn
