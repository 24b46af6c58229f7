"""The authority's store: a look-up by name goes through an index, in a new store and in an older one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.authority.store import Store


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_a_name_look_up_uses_the_name_index(tmp_path: Path) -> None:
    store = Store(tmp_path, now=0.0)
    for where in ("1", "deleted_at IS NULL"):  # every device of that name, or the live ones
        seen: list[str] = []
        store.conn().set_trace_callback(seen.append)
        assert store.devices_named("cam-", where) == []
        store.conn().set_trace_callback(None)
        sql = next(statement for statement in seen if "FROM devices" in statement)
        plan = " ".join(str(row[-1]) for row in store.conn().execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "USING INDEX devices_" in plan and "SCAN devices" not in plan, plan
    store.close()


def test_a_store_made_before_the_index_gains_it_when_opened(tmp_path: Path) -> None:
    Store(tmp_path, now=0.0).close()
    with sqlite3.connect(tmp_path / "authority.sqlite3") as conn:
        conn.execute("DROP INDEX devices_name")
    assert "devices_name" not in indexes(tmp_path / "authority.sqlite3")
    Store(tmp_path, now=0.0).close()
    assert "devices_name" in indexes(tmp_path / "authority.sqlite3")
