"""One SQLite database (WAL) for the plan, enrolled sticks, hand-offs and the sticks in view.

Every state change is committed (``synchronous=FULL``) before the irreversible step it
announces, so a crash anywhere leaves a record that recovery can act on.  Safe to use
from several threads (a connection per thread) and several processes (``BEGIN
IMMEDIATE`` for read-modify-write, a busy timeout for the rest).  Writers in one process
queue on a lock rather than in SQLite's busy handler, which polls with sleeps of up to
100 ms: with eight sticks at once that polling, not the work, was the wait.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.clock import iso
from agent.errors import ExitCode, PanostageError

DB_NAME = "panostage.sqlite3"
SCHEMA_VERSION = 1

#: Plan entry statuses.  pending → claimed → staged → provisioned → done;
#: a failed hand-off returns the entry to pending, or to attention after too many tries.
PLAN_STATUSES = ("pending", "claimed", "staged", "provisioned", "done", "attention")
#: Hand-off states, in order; the last five are terminal.
HANDOFF_STATES = (
    "claimed",
    "provisioning",
    "provisioned",
    "writing",
    "written",
    "verified",
    "ready",
    "failed",
    "abandoned",
    "recovered",
    "returned",
)
TERMINAL_HANDOFF = {"ready", "failed", "abandoned", "recovered", "returned"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS plan (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    request TEXT NOT NULL,
    actions TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'pending',
    position INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    handoff_id TEXT,
    device_id TEXT,
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS plan_queue ON plan (status, position);
CREATE TABLE IF NOT EXISTS enrolled (
    identity TEXT PRIMARY KEY,
    label TEXT,
    note TEXT,
    enrolled_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS handoffs (
    id TEXT PRIMARY KEY,
    plan_id INTEGER REFERENCES plan(id) ON DELETE SET NULL,
    stick_identity TEXT,
    stick TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    device_name TEXT,
    device_id TEXT,
    device_arn TEXT,
    provision_started_at TEXT,
    deadline TEXT,
    sha256 TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS handoffs_open ON handoffs (state);
CREATE TABLE IF NOT EXISTS sticks (
    syspath TEXT PRIMARY KEY,
    devnode TEXT,
    identity TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    handoff_id TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS daemon (
    key TEXT PRIMARY KEY,
    value TEXT
);
"""


class StateError(PanostageError):
    exit_code = ExitCode.CONFLICT
    reason = "state"


#: One writer lock per database file in this process (see the module docstring).
_WRITERS: dict[Path, threading.RLock] = {}
_WRITERS_GUARD = threading.Lock()


class _Connection(sqlite3.Connection):
    """A connection whose errors name its database file (``exc.database``, for agent.errors.to_error)."""

    def __init__(self, database: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
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
            exc.database = self.database_path  # type: ignore[attr-defined]
            raise


def _writer_lock(path: Path) -> threading.RLock:
    with _WRITERS_GUARD:
        return _WRITERS.setdefault(path.resolve(), threading.RLock())


def _now() -> str:
    return iso(datetime.now(UTC))


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    data = dict(row)
    for key in ("request", "actions", "stick"):
        if isinstance(data.get(key), str):
            data[key] = json.loads(data[key])
    return data


@dataclass
class StateDB:
    """The agent's database in ``state_dir``."""

    state_dir: Path

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.path = self.state_dir / DB_NAME
        self._local = threading.local()
        self._writer = _writer_lock(self.path)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # private whatever the umask: SQLite gives the -wal and -shm files the database's mode
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            exc.database = str(self.path)  # type: ignore[attr-defined]  # for agent.errors.to_error
            raise
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} was written by a newer panostage (schema {version})",
                hint="upgrade panostage, or point --state-dir elsewhere",
            )
        if version < SCHEMA_VERSION:  # executescript commits by itself: the script is its own transaction
            with self._writer:
                self.db.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")

    # ---------------------------------------------------------------- plumbing

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=10, isolation_level=None, check_same_thread=True, factory=_Connection
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA cache_size=-256")  # 256 KiB per thread's connection: the database is small
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception)."""
        db = self.db
        with self._writer:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---------------------------------------------------------------- plan

    def add_entries(self, entries: Sequence[tuple[str, dict[str, Any], dict[str, Any]]]) -> list[int]:
        """Append ``(name, request, actions)`` entries, all or none; names must be new."""
        now = _now()
        with self.transaction() as db:
            names = [name for name, _, _ in entries]
            clash = (
                [
                    r["name"]
                    for r in db.execute(f"SELECT name FROM plan WHERE name IN ({','.join('?' * len(names))})", names)
                ]
                if names
                else []
            )
            if clash:
                raise StateError(
                    f"already in the plan: {', '.join(sorted(clash))}",
                    hint="remove them first (`panostage plan remove`), or use other names",
                    details={"names": sorted(clash)},
                )
            position = db.execute("SELECT COALESCE(MAX(position), 0) FROM plan").fetchone()[0]
            ids = []
            for offset, (name, request, actions) in enumerate(entries, start=1):
                cur = db.execute(
                    "INSERT INTO plan (name, request, actions, position, created_at, updated_at) VALUES (?,?,?,?,?,?)",
                    (name, json.dumps(request), json.dumps(actions or {}), position + offset, now, now),
                )
                ids.append(cur.lastrowid)
        return ids

    def plan(self, status: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM plan" + (" WHERE status = ?" if status else "") + " ORDER BY position"
        return [_row(r) for r in self.db.execute(query, (status,) if status else ())]

    def brief(self, status: str) -> list[dict[str, Any]]:
        """Entries of ``status`` with only what following them up needs (no JSON decoded): id, name, device_id,
        updated_at - a pass over a thousand staged entries reads them every time."""
        return [
            dict(r)
            for r in self.db.execute(
                "SELECT id, name, device_id, updated_at FROM plan WHERE status = ? ORDER BY position", (status,)
            )
        ]

    def entry(self, ref: str | int) -> dict[str, Any]:
        """A plan entry by ID or device name."""
        row = self.db.execute(
            "SELECT * FROM plan WHERE id = ? OR name = ?", (int(ref) if str(ref).isdigit() else -1, str(ref))
        ).fetchone()
        if row is None:
            raise PanostageError(
                f"no plan entry {ref!r}",
                exit_code=ExitCode.NOT_FOUND,
                reason="not-found",
                hint="`panostage plan list` shows the plan",
            )
        return _row(row)

    def plan_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(PLAN_STATUSES, 0)
        for row in self.db.execute("SELECT status, COUNT(*) AS n FROM plan GROUP BY status"):
            counts[row["status"]] = row["n"]
        return counts

    def claim_next(self, handoff_id: str) -> dict[str, Any] | None:
        """Atomically take the first pending entry for ``handoff_id`` (None when the plan is empty)."""
        with self.transaction() as db:
            row = db.execute(
                "UPDATE plan SET status = 'claimed', handoff_id = ?, attempts = attempts + 1, updated_at = ? "
                "WHERE id = (SELECT id FROM plan WHERE status = 'pending' ORDER BY position LIMIT 1) RETURNING *",
                (handoff_id, _now()),
            ).fetchone()
        return _row(row)

    def set_entry(self, entry_id: int, **fields: Any) -> None:
        if "status" in fields and fields["status"] not in PLAN_STATUSES:
            raise ValueError(f"unknown plan status {fields['status']}")
        fields["updated_at"] = _now()
        columns = ", ".join(f"{key} = ?" for key in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE plan SET {columns} WHERE id = ?", (*fields.values(), entry_id))

    def requeue(self, entry_id: int, error: str, *, max_attempts: int) -> str:
        """Put an entry back in the queue after a failed hand-off (or aside, after too many)."""
        with self.transaction() as db:
            row = db.execute("SELECT attempts FROM plan WHERE id = ?", (entry_id,)).fetchone()
            if row is None:
                return "gone"
            status = "attention" if row["attempts"] >= max_attempts else "pending"
            db.execute(
                "UPDATE plan SET status = ?, last_error = ?, handoff_id = NULL, updated_at = ? WHERE id = ?",
                (status, error[:500], _now(), entry_id),
            )
        return status

    def remove_entry(self, ref: str | int) -> dict[str, Any]:
        with self.transaction() as db:  # checked in the change's transaction: no claim slips in between
            entry = self._unclaimed_entry(ref)
            db.execute("DELETE FROM plan WHERE id = ?", (entry["id"],))
        return entry

    def retry_entry(self, ref: str | int) -> dict[str, Any]:
        with self.transaction() as db:
            entry = self._unclaimed_entry(ref)
            row = db.execute(
                "UPDATE plan SET status = 'pending', attempts = 0, last_error = NULL, handoff_id = NULL, "
                "updated_at = ? WHERE id = ? RETURNING *",
                (_now(), entry["id"]),
            ).fetchone()
        return _row(row)

    def _unclaimed_entry(self, ref: str | int) -> dict[str, Any]:
        entry = self.entry(ref)
        if entry["status"] == "claimed":
            raise StateError(f"{entry['name']} is being staged right now", hint="wait for the hand-off to end")
        return entry

    # ---------------------------------------------------------------- enrolled sticks

    def enroll(self, identity: str, *, label: str | None = None, note: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO enrolled (identity, label, note, enrolled_at) VALUES (?,?,?,?) "
                "ON CONFLICT(identity) DO UPDATE SET label = excluded.label, note = excluded.note, "
                "enrolled_at = excluded.enrolled_at, revoked_at = NULL",
                (identity, label, note, _now()),
            )

    def revoke(self, identity: str) -> None:
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE enrolled SET revoked_at = ? WHERE identity = ? AND revoked_at IS NULL", (_now(), identity)
            )
            if cur.rowcount == 0:
                raise PanostageError(
                    f"{identity} is not enrolled",
                    exit_code=ExitCode.NOT_FOUND,
                    reason="not-found",
                    hint="`panostage stick list` shows the enrolled sticks",
                )

    def is_enrolled(self, identity: str | None) -> bool:
        if not identity:
            return False
        row = self.db.execute(
            "SELECT 1 FROM enrolled WHERE identity = ? AND revoked_at IS NULL", (identity,)
        ).fetchone()
        return row is not None

    def enrolled(self, *, include_revoked: bool = False) -> list[dict[str, Any]]:
        query = (
            "SELECT * FROM enrolled"
            + ("" if include_revoked else " WHERE revoked_at IS NULL")
            + " ORDER BY enrolled_at"
        )
        return [dict(r) for r in self.db.execute(query)]

    # ---------------------------------------------------------------- hand-offs

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def new_handoff(
        self,
        *,
        stick_identity: str | None,
        stick: dict[str, Any],
        handoff_id: str | None = None,
        plan_id: int | None = None,
        device_name: str | None = None,
    ) -> str:
        handoff_id = handoff_id or self.new_id()
        now = _now()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO handoffs (id, plan_id, stick_identity, stick, state, device_name, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (handoff_id, plan_id, stick_identity, json.dumps(stick), "claimed", device_name, now, now),
            )
        return handoff_id

    def update_handoff(self, handoff_id: str, state: str | None = None, **fields: Any) -> None:
        if state is not None:
            if state not in HANDOFF_STATES:
                raise ValueError(f"unknown hand-off state {state}")
            fields["state"] = state
        fields["updated_at"] = _now()
        for key, value in list(fields.items()):
            if isinstance(value, datetime):
                fields[key] = iso(value)
            elif isinstance(value, dict):
                fields[key] = json.dumps(value)
        columns = ", ".join(f"{key} = ?" for key in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE handoffs SET {columns} WHERE id = ?", (*fields.values(), handoff_id))

    def handoff(self, handoff_id: str) -> dict[str, Any] | None:
        return _row(self.db.execute("SELECT * FROM handoffs WHERE id = ?", (handoff_id,)).fetchone())

    def unfinished_handoffs(self) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(TERMINAL_HANDOFF))
        return [
            _row(r)
            for r in self.db.execute(
                f"SELECT * FROM handoffs WHERE state NOT IN ({marks}) ORDER BY created_at", tuple(TERMINAL_HANDOFF)
            )
        ]

    def handoffs(self, *, limit: int = 50) -> list[dict[str, Any]]:
        return [_row(r) for r in self.db.execute("SELECT * FROM handoffs ORDER BY created_at DESC LIMIT ?", (limit,))]

    # ---------------------------------------------------------------- sticks in view

    def see_stick(
        self,
        syspath: str,
        *,
        state: str,
        devnode: str | None = None,
        identity: str | None = None,
        reason: str | None = None,
        handoff_id: str | None = None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sticks (syspath, devnode, identity, state, reason, handoff_id, updated_at) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(syspath) DO UPDATE SET "
                "devnode = COALESCE(excluded.devnode, devnode), identity = COALESCE(excluded.identity, identity), "
                "state = excluded.state, reason = excluded.reason, "
                "handoff_id = COALESCE(excluded.handoff_id, handoff_id), updated_at = excluded.updated_at",
                (syspath, devnode, identity, state, reason, handoff_id, _now()),
            )

    def forget_stick(self, syspath: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM sticks WHERE syspath = ?", (syspath,))

    def sticks(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM sticks ORDER BY syspath")]

    def clear_sticks(self) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM sticks")

    # ---------------------------------------------------------------- daemon facts

    def set_fact(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO daemon (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def facts(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM daemon")}
