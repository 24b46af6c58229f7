"""The state database's schema and the words its status columns hold.

The schema is versioned with ``PRAGMA user_version`` (:data:`SCHEMA_VERSION`);
:class:`agent.state.StateDB` creates it in a database whose version is below that.
"""

from __future__ import annotations

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
