"""The authority's state in SQLite: WAL, a busy timeout, one connection per thread (closed when the
thread's HTTP connection ends), and a schema versioned with ``PRAGMA user_version``.

Only facts are stored (who asked for what, and when); every state the API reports is
derived from these timestamps and the clock on each read (see :mod:`lifecycle`).  The
device private key and the archive are never stored: for the claim the authority keeps the
certificate's serial, fingerprint, expiry and public key.
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from agent.errors import PanostageError
from agent.sqlite_tx import immediate_transaction

DB_FILE = "authority.sqlite3"
SCHEMA_VERSION = 1
SNOW_SEED_DEVICES = 3

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    tags TEXT NOT NULL,
    network TEXT,
    region TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    created REAL NOT NULL,
    cert_serial TEXT NOT NULL,
    cert_fingerprint TEXT NOT NULL,
    cert_not_after REAL NOT NULL,
    public_key TEXT NOT NULL,
    claim_status TEXT,
    claimed_at REAL,
    claim_reason TEXT,
    serial_number TEXT,
    deleted_at REAL
);
CREATE INDEX devices_live_name ON devices (name) WHERE deleted_at IS NULL;
CREATE INDEX devices_name ON devices (name);
CREATE TABLE device_jobs (
    job_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    job_type TEXT NOT NULL,
    image_version TEXT,
    allow_major INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX device_jobs_device ON device_jobs (device_id);
CREATE TABLE import_jobs (
    job_id TEXT PRIMARY KEY,
    client_token TEXT NOT NULL UNIQUE,
    request_hash TEXT NOT NULL,
    request TEXT NOT NULL,
    region TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE managed_devices (
    device_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    tags TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    client_token TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    command TEXT NOT NULL,
    description TEXT,
    tags TEXT NOT NULL,
    targets TEXT NOT NULL,
    region TEXT NOT NULL,
    created REAL NOT NULL,
    canceled_at REAL
);
CREATE TABLE executions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    UNIQUE (task_id, device_id)
);
CREATE INDEX executions_device ON executions (device_id, seq);
"""

Row = sqlite3.Row


class StateError(PanostageError):
    reason = "authority-state"


def random_id(prefix: str, length: int = 26) -> str:
    """``prefix`` + ``length`` random lowercase letters and digits (base32: a-z, 2-7)."""
    return prefix + base64.b32encode(secrets.token_bytes(length * 5 // 8 + 1)).decode().lower()[:length]


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


def _first(cursor: sqlite3.Cursor) -> Row | None:
    """The cursor's next row, if any (every connection's row factory is :class:`sqlite3.Row`)."""
    return cast(Row | None, cursor.fetchone())


def _found(cursor: sqlite3.Cursor) -> Row:
    """The row of a query that always finds one (a count, or what this transaction just wrote)."""
    return cast(Row, cursor.fetchone())


class Store:
    """The authority's database in ``directory``.  Thread-safe: a connection per thread."""

    def __init__(self, directory: Path, *, now: float) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = directory / DB_FILE
        self._local = threading.local()
        self._migrate(now)
        self.account_id = self.meta("account_id")
        self.close()  # from here on only request threads hold connections, each while its HTTP connection lasts

    # -------------------------------------------------------------- connections

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; writes go through :meth:`write`)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA cache_size = -256")  # 256 KiB per connection: one per handler thread
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE .. COMMIT; ROLLBACK on any exception)."""
        with immediate_transaction(self.conn()) as conn:
            yield conn

    def close(self) -> None:
        """Close this thread's connection (the next :meth:`conn` opens a new one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    def _migrate(self, now: float) -> None:
        with self.write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path} has schema version {version}; this panostage knows up to {SCHEMA_VERSION}",
                    hint="use the newer panostage, or a fresh --state-dir",
                )
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta VALUES ('account_id', ?)",
                    ("".join(secrets.choice("0123456789") for _ in range(12)),),
                )
                for index in range(SNOW_SEED_DEVICES):
                    conn.execute(
                        "INSERT INTO managed_devices VALUES (?, ?, ?, ?)",
                        (random_id("smd-", 24), "JID" + secrets.token_hex(16), dumps({"seed": str(index + 1)}), now),
                    )
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # added later, and invisible to a panostage that does not use it: no new schema version
            conn.execute("CREATE INDEX IF NOT EXISTS devices_name ON devices (name)")

    def meta(self, key: str) -> str:
        row = _first(self.conn().execute("SELECT value FROM meta WHERE key = ?", (key,)))
        if row is None:
            raise StateError(f"{self.path}: meta key {key} missing")
        return str(row[0])

    # -------------------------------------------------------------- devices

    def insert_device(self, row: dict[str, Any], check: Callable[[sqlite3.Connection], None]) -> None:
        """Insert a device after ``check`` (name and quota rules) passes in the same transaction."""
        with self.write() as conn:
            check(conn)
            _insert(conn, "devices", row)

    @staticmethod
    def live_name_taken(conn: sqlite3.Connection, name: str) -> str | None:
        """The ID of the live (not deleting) device called ``name``, if any."""
        row = _first(conn.execute("SELECT device_id FROM devices WHERE name = ? AND deleted_at IS NULL", (name,)))
        return None if row is None else str(row[0])

    @staticmethod
    def live_device_count(conn: sqlite3.Connection) -> int:
        return int(_found(conn.execute("SELECT COUNT(*) FROM devices WHERE deleted_at IS NULL"))[0])

    def device(self, device_id: str) -> Row | None:
        return _first(self.conn().execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)))

    def device_of_job(self, job: Row) -> Row:
        """The device a stored job is for (a device row outlives its deletion, so it is always there)."""
        device = self.device(job["device_id"])
        if device is None:
            raise StateError(f"{self.path}: device {job['device_id']} of job {job['job_id']} is missing")
        return device

    def devices(self, where: str = "1") -> list[Row]:
        """Device rows matching ``where`` (one of the service's fixed SQL conditions, never caller input)."""
        return self.conn().execute(f"SELECT * FROM devices WHERE {where}").fetchall()

    def devices_named(self, prefix: str, where: str = "1") -> list[Row]:
        """Device rows matching ``where`` whose name starts with ``prefix`` (found through the name index:
        a look-up by name costs the same with ten devices in the store or ten thousand)."""
        return (
            self.conn()
            .execute(
                f"SELECT * FROM devices WHERE {where} AND name >= ? AND name < ?",
                (prefix, prefix + "\U0010ffff"),  # past every name that starts with prefix
            )
            .fetchall()
        )

    def devices_page(self, where: str, after: list[Any] | None, *, descending: bool, limit: int) -> list[Row]:
        """At most ``limit`` rows matching ``where`` in (created, device_id) order, after the key ``after``."""
        op, order = ("<", "DESC") if descending else (">", "ASC")
        params: list[Any] = []
        if after is not None:
            where += f" AND (created {op} ? OR (created = ? AND device_id {op} ?))"
            params = [after[0], after[0], after[1]]
        return (
            self.conn()
            .execute(
                f"SELECT * FROM devices WHERE {where} ORDER BY created {order}, device_id {order} LIMIT ?",
                (*params, limit),
            )
            .fetchall()
        )

    def mark_deleted(self, device_id: str, at: float) -> None:
        with self.write() as conn:
            conn.execute(
                "UPDATE devices SET deleted_at = ? WHERE device_id = ? AND deleted_at IS NULL", (at, device_id)
            )

    def record_claim(
        self, device_id: str, status: str, at: float, reason: str | None, serial_number: str | None
    ) -> bool:
        """Record the outcome of the first claim; False if the device was claimed or deleted meanwhile."""
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE devices SET claim_status = ?, claimed_at = ?, claim_reason = ?, serial_number = ? "
                "WHERE device_id = ? AND claim_status IS NULL AND deleted_at IS NULL",
                (status, at, reason, serial_number, device_id),
            )
            return cur.rowcount == 1

    # -------------------------------------------------------------- device jobs

    def jobs_of(self, device_id: str, conn: sqlite3.Connection | None = None) -> list[Row]:
        """The device's jobs, oldest first."""
        return (
            (conn or self.conn())
            .execute("SELECT * FROM device_jobs WHERE device_id = ? ORDER BY rowid", (device_id,))
            .fetchall()
        )

    def all_jobs(self) -> list[Row]:
        return self.conn().execute("SELECT * FROM device_jobs ORDER BY rowid").fetchall()

    def job(self, job_id: str) -> Row | None:
        return _first(self.conn().execute("SELECT * FROM device_jobs WHERE job_id = ?", (job_id,)))

    def insert_job(self, device_id: str, make: Callable[[Row | None, list[Row]], dict[str, Any]]) -> dict[str, Any]:
        """Insert the job ``make(device, its jobs)`` returns (it raises to refuse), atomically."""
        with self.write() as conn:
            device = _first(conn.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)))
            row = make(device, self.jobs_of(device_id, conn))
            _insert(conn, "device_jobs", row)
            return row

    # -------------------------------------------------------------- package import jobs

    def insert_import_job(self, row: dict[str, Any]) -> Row:
        """Insert, or return the job already holding ``row['client_token']``."""
        with self.write() as conn:
            found = _first(conn.execute("SELECT * FROM import_jobs WHERE client_token = ?", (row["client_token"],)))
            if found is not None:
                return found
            _insert(conn, "import_jobs", row)
            return _found(conn.execute("SELECT * FROM import_jobs WHERE job_id = ?", (row["job_id"],)))

    def import_job(self, job_id: str) -> Row | None:
        return _first(self.conn().execute("SELECT * FROM import_jobs WHERE job_id = ?", (job_id,)))

    # -------------------------------------------------------------- snow device management

    def managed_devices(self) -> list[Row]:
        return self.conn().execute("SELECT * FROM managed_devices ORDER BY rowid").fetchall()

    def insert_task(self, row: dict[str, Any], check: Callable[[sqlite3.Connection], None]) -> Row:
        """Insert a task and one execution per target, or return the task holding its client token."""
        with self.write() as conn:
            if row.get("client_token") is not None:
                found = _first(conn.execute("SELECT * FROM tasks WHERE client_token = ?", (row["client_token"],)))
                if found is not None:
                    return found
            check(conn)
            _insert(conn, "tasks", row)
            for index, device_id in enumerate(json.loads(row["targets"])):
                conn.execute(
                    "INSERT INTO executions (task_id, device_id, execution_id) VALUES (?, ?, ?)",
                    (row["task_id"], device_id, str(index + 1)),
                )
            return _found(conn.execute("SELECT * FROM tasks WHERE task_id = ?", (row["task_id"],)))

    def task(self, task_id: str) -> Row | None:
        return _first(self.conn().execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)))

    def tasks(self) -> list[Row]:
        return self.conn().execute("SELECT * FROM tasks ORDER BY rowid").fetchall()

    def cancel_task(self, task_id: str, at: float) -> None:
        with self.write() as conn:
            conn.execute("UPDATE tasks SET canceled_at = ? WHERE task_id = ? AND canceled_at IS NULL", (at, task_id))

    def executions_on(self, device_ids: list[str]) -> list[Row]:
        """Every execution on these devices with its task's times, in queue order."""
        marks = ", ".join("?" * len(device_ids))
        return (
            self.conn()
            .execute(
                "SELECT e.seq, e.task_id, e.device_id, e.execution_id, t.created, t.canceled_at "
                f"FROM executions e JOIN tasks t ON t.task_id = e.task_id WHERE e.device_id IN ({marks}) ORDER BY e.seq",
                device_ids,
            )
            .fetchall()
        )

    def executions_of(self, task_id: str) -> list[Row]:
        return self.conn().execute("SELECT * FROM executions WHERE task_id = ? ORDER BY seq", (task_id,)).fetchall()
