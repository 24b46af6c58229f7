"""The hand-off log: chain, tamper detection, concurrency, no key material, journald fields."""

from __future__ import annotations

import json
import multiprocessing
import socket
from datetime import UTC, datetime

import pytest

from agent.errors import ExitCode, PanostageError
from agent.handoff_log import HandoffLog, Journal, KeyMaterialRefused, line_hash

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def log(tmp_path):
    log = HandoffLog(tmp_path)
    for index in range(6):
        log.append("handoff", time=NOW, device={"name": f"dev{index}", "id": f"device-{index}"}, outcome="ready")
    return log


def lines_of(log: HandoffLog) -> list[bytes]:
    return log.path.read_bytes().splitlines(keepends=True)


def problems(log: HandoffLog, new_lines: list[bytes]) -> list[tuple[str, int]]:
    log.path.write_bytes(b"".join(new_lines))
    return [(p["problem"], p["line"]) for p in log.verify().problems]


def test_intact_chain_verifies(log):
    report = log.verify()
    assert report.ok and report.records == 6
    records = list(log.records())
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["prev"] == "0" * 64


def test_each_kind_of_tampering_is_named(log):
    lines = lines_of(log)
    edited = lines[2].replace(b'"dev2"', b'"devX"')
    assert problems(log, [*lines[:2], edited, *lines[3:]]) == [("edited", 3)]
    assert problems(log, [*lines[:2], *lines[3:]]) == [("deleted", 3)]
    assert problems(log, [*lines[:2], lines[3], lines[2], *lines[4:]]) == [("reordered", 4)]
    assert problems(log, [*lines[:3], lines[2], *lines[3:]]) == [("inserted", 4)]
    assert problems(log, lines[:5]) == [("deleted", 5)]
    assert problems(log, [*lines[:5], lines[5].replace(b'"dev5"', b'"devY"')]) == [("edited", 6)]
    assert problems(log, [*lines[:1], b"{not json\n", *lines[1:]]) == [("unreadable", 2)]
    assert problems(log, lines) == []


def test_a_rewritten_seq_is_still_caught_by_the_links(log):
    lines = lines_of(log)
    record = json.loads(lines[3])
    record["outcome"] = "failed"
    forged = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    assert problems(log, [*lines[:3], forged, *lines[4:]]) == [("edited", 4)]


def test_appending_to_a_damaged_tail_is_refused(log):
    log.path.write_bytes(log.path.read_bytes() + b"garbage\n")
    with pytest.raises(Exception, match="damaged"):
        log.append("handoff", time=NOW, outcome="ready")


def test_key_material_is_never_written(tmp_path):
    log = HandoffLog(tmp_path)
    pem = "-----BEGIN " + "PRIVATE KEY-----\nMIG...\n-----END " + "PRIVATE KEY-----\n"
    with pytest.raises(KeyMaterialRefused) as info:
        log.append("handoff", time=NOW, device={"name": "cam-1"}, stick={"label": "PANO", "note": pem})
    assert info.value.exit_code == ExitCode.VALIDATION
    assert "stick.note" in info.value.message and info.value.details["fields"] == ["stick.note"]
    assert "MIG" not in info.value.message  # the key itself is not repeated
    assert not log.path.exists() or b"PRIVATE" not in log.path.read_bytes()


def test_check_appendable_on_a_new_and_on_a_sound_log(tmp_path, log):
    fresh = HandoffLog(tmp_path / "new" / "state")
    fresh.check_appendable()  # creates the directory and an empty log: nothing to refuse
    assert fresh.path.read_bytes() == b"" and fresh.verify().ok
    before = log.path.read_bytes(), log.head_path.read_bytes()
    log.check_appendable()
    assert (log.path.read_bytes(), log.head_path.read_bytes()) == before


@pytest.mark.parametrize(
    "damage",
    ["last-line-edited", "last-line-garbage", "head-missing", "head-garbage", "last-line-cut-off", "log-emptied"],
)
def test_check_appendable_refuses_a_damaged_log(log, damage):
    lines = lines_of(log)
    if damage == "last-line-edited":
        log.path.write_bytes(b"".join([*lines[:-1], lines[-1].replace(b'"dev5"', b'"devZ"')]))
    elif damage == "last-line-garbage":
        log.path.write_bytes(log.path.read_bytes() + b"garbage\n")
    elif damage == "head-missing":
        log.head_path.unlink()
    elif damage == "head-garbage":
        log.head_path.write_text("not a head\n")
    elif damage == "last-line-cut-off":
        log.path.write_bytes(b"".join(lines[:-1]))
    else:
        log.path.write_bytes(b"")
    with pytest.raises(PanostageError) as info:
        log.check_appendable()
    assert info.value.exit_code == ExitCode.VERIFY_CORRUPT and info.value.reason == "log-damaged"
    assert "panostage log verify" in info.value.hint
    assert str(log.path.parent) in info.value.message


@pytest.mark.parametrize("records", [1, 6])
def test_a_head_one_record_behind_is_a_crash_between_record_and_head_and_is_brought_forward(tmp_path, records):
    """Power lost after a record was flushed but before its head was renamed: the chain is whole, the head
    lags by one.  That is neither an edit nor a cut (a forger could rewrite the head as easily), so verify
    accepts it and the next hand-off's check brings the head forward instead of refusing every hand-off."""
    log = HandoffLog(tmp_path)
    for index in range(records):
        head_before = log.head_path.read_bytes() if log.head_path.exists() else None
        log.append("handoff", time=NOW, device={"name": f"dev{index}"}, outcome="ready")
    if head_before is None:
        log.head_path.unlink()
    else:
        log.head_path.write_bytes(head_before)
    assert log.verify().ok
    log.check_appendable()
    seq, digest = log.head_path.read_text().split()
    assert (int(seq), digest) == (records, line_hash(lines_of(log)[-1]))
    assert log.verify().ok
    log.append("handoff", time=NOW, device={"name": "next"}, outcome="ready")
    assert log.verify().ok and log.verify().records == records + 1


def test_a_head_two_records_behind_is_still_refused(log):
    log.head_path.write_text(f"4 {line_hash(lines_of(log)[3])}\n")
    assert [p["problem"] for p in log.verify().problems] == ["edited"]
    with pytest.raises(PanostageError) as info:
        log.check_appendable()
    assert info.value.reason == "log-damaged"


def _append_many(state_dir: str, worker: int) -> None:
    log = HandoffLog(state_dir)
    for index in range(25):
        log.append("handoff", time=NOW, device={"name": f"w{worker}-{index}"}, outcome="ready")


def test_concurrent_appenders_keep_one_chain(tmp_path):
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(str(tmp_path), n)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    report = HandoffLog(tmp_path).verify()
    assert report.ok, report.problems
    assert report.records == 100


def test_journal_gets_structured_fields(tmp_path):
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        log = HandoffLog(tmp_path / "state", journal=Journal(socket_path=path))
        log.append(
            "handoff",
            time=NOW,
            device={"name": "cam-1", "id": "device-1"},
            outcome="failed",
            error={"reason": "stick-removed", "message": "line one\nline two"},
        )
        datagram = server.recv(65536)
    assert b"SYSLOG_IDENTIFIER=panostage\n" in datagram
    assert b"PANOSTAGE_DEVICE_NAME=cam-1\n" in datagram
    assert b"PANOSTAGE_OUTCOME=failed\n" in datagram
    assert b"PRIORITY=3\n" in datagram
    # a value with a newline uses journald's binary-safe framing
    message = b"line one\nline two"
    assert b"PANOSTAGE_ERROR_MESSAGE\n" + len(message).to_bytes(8, "little") + message in datagram


def test_journal_copy_of_a_record_with_times_and_paths(tmp_path):
    """Values the log writes as text (datetimes, paths) reach the journal as the same text, and the
    append returns normally: the record is already on disk when the copy is sent."""
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        log = HandoffLog(tmp_path / "state", journal=Journal(socket_path=path))
        log.append("handoff", time=NOW, deadline=NOW, stick={"path": tmp_path / "stick"}, outcome="ready")
        datagram = server.recv(65536)
    written = list(log.records())[-1]
    assert f"PANOSTAGE_DEADLINE={written['deadline']}\n".encode() in datagram
    assert f"PANOSTAGE_STICK_PATH={tmp_path / 'stick'}\n".encode() in datagram


def test_a_record_longer_than_the_first_tail_window_still_chains(tmp_path):
    log = HandoffLog(tmp_path)
    log.append("handoff", time=NOW, outcome="failed", error={"message": "y" * 20_000})
    log.check_appendable()
    log.append("handoff", time=NOW, outcome="ready")
    assert log.verify().ok and [r["seq"] for r in log.records()] == [1, 2]
