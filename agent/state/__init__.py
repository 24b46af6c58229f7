"""One SQLite database (WAL) for the plan, enrolled sticks, hand-offs and the sticks in view.

Every state change is committed (``synchronous=FULL``) before the irreversible step it
announces, so a crash anywhere leaves a record that recovery can act on.  Safe to use
from several threads (a connection per thread) and several processes (``BEGIN
IMMEDIATE`` for read-modify-write, a busy timeout for the rest); writers in one process
queue on a lock (:mod:`agent.state.connection`).  The schema: :mod:`agent.state.schema`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from agent.clock import iso
from agent.error_mapping import name_database
from agent.errors import ExitCode, PanostageError
from agent.sqlite_tx import immediate_transaction
from agent.state.connection import connect, writer_lock
from agent.state.schema import (
    DB_NAME,
    HANDOFF_STATES,
    PLAN_STATUSES,
    SCHEMA,
    SCHEMA_VERSION,
    TERMINAL_HANDOFF,
)

__all__ = [
    "DB_NAME",
    "HANDOFF_STATES",
    "PLAN_STATUSES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "TERMINAL_HANDOFF",
    "StateDB",
    "StateError",
]


class StateError(PanostageError):
    exit_code = ExitCode.CONFLICT
    reason = "state"


def _now() -> str:
    return iso(datetime.now(UTC))


def _update_entry(db: sqlite3.Connection, entry_id: int, fields: dict[str, Any]) -> sqlite3.Row:
    """Set ``fields`` (and the time of the change) on the plan entry ``entry_id``, in ``db``'s transaction."""
    if "status" in fields and fields["status"] not in PLAN_STATUSES:
        raise ValueError(f"unknown plan status {fields['status']}")
    fields = {**fields, "updated_at": _now()}
    columns = ", ".join(f"{key} = ?" for key in fields)
    return cast(
        sqlite3.Row,
        db.execute(f"UPDATE plan SET {columns} WHERE id = ? RETURNING *", (*fields.values(), entry_id)).fetchone(),
    )


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return None if row is None else _decoded(row)


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    """The row as a dict, its JSON columns decoded."""
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
        self._writer = writer_lock(self.path)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # private whatever the umask: SQLite gives the -wal and -shm files the database's mode
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            name_database(exc, str(self.path))
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
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception)."""
        db = self.db
        with self._writer, immediate_transaction(db):
            yield db

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
                ids.append(cast(int, cur.lastrowid))  # set by every INSERT into a rowid table
        return ids

    def plan(self, status: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM plan" + (" WHERE status = ?" if status else "") + " ORDER BY position"
        return [_decoded(r) for r in self.db.execute(query, (status,) if status else ())]

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
        return _decoded(row)

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
        with self.transaction() as db:
            _update_entry(db, entry_id, fields)

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
        """Put an unclaimed entry back in the queue, its attempts reset."""
        return self.change_entry(
            ref, lambda _entry: {"status": "pending", "attempts": 0, "last_error": None, "handoff_id": None}
        )

    def change_entry(self, ref: str | int, decide: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Change an entry as ``decide`` says, judged on the entry as it is inside the change's transaction.

        A claimed entry is refused first; ``decide`` gets the entry and returns the columns to set, or raises
        to refuse.  No claim or other change slips in between judgement and change.  Returns the entry changed.
        """
        with self.transaction() as db:
            entry = self._unclaimed_entry(ref)
            row = _update_entry(db, entry["id"], decide(entry))
        return _decoded(row)  # the entry is there: read in this transaction

    def _unclaimed_entry(self, ref: str | int) -> dict[str, Any]:
        entry = self.entry(ref)
        if entry["status"] == "claimed":
            raise StateError(
                f"{entry['name']} is being staged right now",
                hint="wait for the hand-off to end",
                details={"id": entry["id"], "status": entry["status"]},
            )
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
            _decoded(r)
            for r in self.db.execute(
                f"SELECT * FROM handoffs WHERE state NOT IN ({marks}) ORDER BY created_at", tuple(TERMINAL_HANDOFF)
            )
        ]

    def handoffs(self, *, limit: int = 50) -> list[dict[str, Any]]:
        return [
            _decoded(r) for r in self.db.execute("SELECT * FROM handoffs ORDER BY created_at DESC LIMIT ?", (limit,))
        ]

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
