"""`panostage plan` through the real CLI and a real SQLite database.

Plan files in every format, with every field; bad files reported line by line and
imported not at all; the atomic claim under contention from several processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.errors import ExitCode
from agent.state import StateDB
from tests.helpers import REPO, clean_env, run_cli


class Planner:
    """Runs `panostage` against one state directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.state = home / "state"
        self.env = {"PANOSTAGE_PATHS_STATE_DIR": str(self.state)}

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, env=self.env, home=self.home, input=input.encode() if input is not None else None)

    def ok(self, *args: str, input: str | None = None):
        """Run with --json and return the data on stdout."""
        result = self.run(*args, "--json", input=input)
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
        return json.loads(result.stdout)

    def fails(self, code: ExitCode, *args: str, input: str | None = None) -> dict:
        """Run with --json, expect exit ``code``, return the error object."""
        result = self.run(*args, "--json", input=input)
        assert result.returncode == code, (
            f"exit {result.returncode} (wanted {int(code)})\n{result.stdout}\n{result.stderr}"
        )
        assert result.stdout == ""
        return json.loads(result.stderr.splitlines()[-1])["error"]

    def names(self) -> list[str]:
        return [entry["name"] for entry in self.ok("plan", "list")]

    def write(self, name: str, text: str | bytes) -> str:
        path = self.home / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return str(path)


@pytest.fixture
def pl(tmp_path) -> Planner:
    return Planner(tmp_path)


STATIC_ETH0 = {
    "ConnectionType": "STATIC_IP",
    "StaticIpConnectionInfo": {
        "IpAddress": "10.0.0.10",
        "Mask": "255.255.255.0",
        "DefaultGateway": "10.0.0.1",
        "Dns": ["10.0.0.2", "10.0.0.3"],
    },
}
#: What every format's "full" entry must turn into.
FULL_REQUEST = {
    "Name": "cam-01",
    "Description": "lobby camera",
    "Tags": {"site": "lab", "floor": "2"},
    "NetworkingConfiguration": {
        "Ethernet0": STATIC_ETH0,
        "Ethernet1": {"ConnectionType": "DHCP"},
        "Ntp": {"NtpServers": ["pool.ntp.org", "10.0.0.1:123"]},
    },
}
FULL_ACTIONS = {"ota": {"image_version": "4.3.94", "allow_major": True}, "reboot": True}


# ---------------------------------------------------------------- add, list, remove, retry


def test_add_list_remove_retry(pl):
    added = pl.ok(
        "plan",
        "add",
        "--name",
        "cam-01",
        "--description",
        "lobby camera",
        "--tag",
        "site=lab",
        "--tag",
        "floor=2",
        "--eth0",
        "static",
        "--eth0-ip",
        "10.0.0.10",
        "--eth0-mask",
        "255.255.255.0",
        "--eth0-gateway",
        "10.0.0.1",
        "--eth0-dns",
        "10.0.0.2",
        "--eth0-dns",
        "10.0.0.3",
        "--eth1",
        "dhcp",
        "--ntp",
        "pool.ntp.org",
        "--ntp",
        "10.0.0.1:123",
        "--ota",
        "4.3.94",
        "--allow-major",
        "--reboot",
    )
    assert added["request"] == FULL_REQUEST and added["actions"] == FULL_ACTIONS
    assert (added["status"], added["attempts"], added["position"]) == ("pending", 0, 1)
    assert pl.ok("plan", "add", "--name", "cam-02")["actions"] == {}
    assert pl.ok("plan", "add", "--name", "cam-03", "--reboot")["actions"] == {"reboot": True}

    listed = pl.ok("plan", "list")
    assert [(e["position"], e["name"], e["status"]) for e in listed] == [
        (1, "cam-01", "pending"),
        (2, "cam-02", "pending"),
        (3, "cam-03", "pending"),
    ]
    human = pl.run("plan", "list")
    assert human.returncode == 0
    header, *rows, summary = human.stdout.splitlines()
    assert header.split() == ["POS", "ID", "NAME", "STATUS", "TRIES", "DEVICE", "ID", "ACTIONS", "LAST", "ERROR"]
    assert "ota 4.3.94 (major allowed), reboot" in rows[0] and summary == "(3 pending)"

    # the same name twice, a broken rule, allow-major alone: refused, nothing added
    assert pl.fails(ExitCode.CONFLICT, "plan", "add", "--name", "cam-01")["details"] == {"names": ["cam-01"]}
    error = pl.fails(ExitCode.VALIDATION, "plan", "add", "--name", "cam 4", "--eth0-ip", "10.0.0.300", "--ota", "")
    assert {v["field"] for v in error["details"]["violations"]} == {
        "--name",  # named by the flags typed, as `device provision` names them
        "--eth0-ip",
        "--eth0-mask",
        "--eth0-gateway",
        "--eth0-dns",
        "--ota",
    }
    error = pl.fails(ExitCode.VALIDATION, "plan", "add", "--name", "cam-4", "--allow-major")
    assert error["details"]["violations"][0]["field"] == "--ota"
    assert pl.fails(ExitCode.USAGE, "plan", "add", "--name", "cam-4", "--eth0", "dhcp", "--eth0-ip", "10.0.0.1")
    assert pl.names() == ["cam-01", "cam-02", "cam-03"]

    # remove by name and by id; unknown; the queue closes up
    assert pl.ok("plan", "remove", "cam-02")["name"] == "cam-02"
    assert pl.ok("plan", "remove", str(listed[2]["id"]))["name"] == "cam-03"
    assert pl.fails(ExitCode.NOT_FOUND, "plan", "remove", "cam-02")["reason"] == "not-found"
    assert pl.ok("plan", "add", "--name", "cam-05")["position"] == 2

    # an entry the daemon gave up on goes back in the queue; a claimed or finished one does not
    db = StateDB(pl.state)
    first, fifth = db.entry("cam-01"), db.entry("cam-05")
    db.set_entry(first["id"], status="attention", attempts=3, last_error="stick pulled during write")
    assert [(e["status"], e["attempts"], e["last_error"]) for e in pl.ok("plan", "list", "--status", "attention")] == [
        ("attention", 3, "stick pulled during write")
    ]
    assert "stick pulled during write" in pl.run("plan", "list").stdout
    retried = pl.ok("plan", "retry", "cam-01")
    assert (retried["status"], retried["attempts"], retried["last_error"]) == ("pending", 0, None)
    assert db.claim_next("handoff-1")["id"] == first["id"]
    assert pl.fails(ExitCode.CONFLICT, "plan", "remove", "cam-01")["reason"] == "state"
    assert pl.fails(ExitCode.CONFLICT, "plan", "retry", "cam-01")["reason"] == "state"
    db.set_entry(fifth["id"], status="done", device_id="device-5")
    error = pl.fails(ExitCode.CONFLICT, "plan", "retry", "cam-05")
    assert "remove" in error["hint"]
    assert [(e["name"], e["status"], e["device_id"]) for e in pl.ok("plan", "list")] == [
        ("cam-01", "claimed", None),
        ("cam-05", "done", "device-5"),
    ]
    assert pl.ok("plan", "list", "--status", "pending") == []
    assert pl.run("plan", "list", "--status", "pending").stdout.strip() == "no pending entries in the plan"
    db.close()


# ---------------------------------------------------------------- import, one file per format


CSV_FULL = """
    name,description,tags,eth0,eth0_ip,eth0_mask,eth0_gateway,eth0_dns,eth1,eth1_ip,eth1_mask,eth1_gateway,eth1_dns,ntp,ota_version,allow_major,reboot
    cam-01,lobby camera,site=lab;floor=2,static,10.0.0.10,255.255.255.0,10.0.0.1,10.0.0.2;10.0.0.3,dhcp,,,,,pool.ntp.org;10.0.0.1:123,4.3.94,yes,true
,,,,,,

    cam-02,"two lines? no: one, with a comma",,,,,,,,,,,,,,,
    cam-03,,k=,,10.0.1.5:8080,255.255.0.0,10.0.0.1,dns.example.com,static,10.0.2.5,255.255.255.0,10.0.2.1,10.0.2.2,,,,1
"""

TOML_FULL = """
    # the plan for floor 2
    [[device]]
    name = "cam-01"
    description = "lobby camera"
    tags = { site = "lab", floor = "2" }
    eth0 = "static"
    eth0_ip = "10.0.0.10"
    eth0_mask = "255.255.255.0"
    eth0_gateway = "10.0.0.1"
    eth0_dns = ["10.0.0.2", "10.0.0.3"]
    eth1 = "dhcp"
    ntp = ["pool.ntp.org", "10.0.0.1:123"]
    ota_version = "4.3.94"
    allow_major = true
    reboot = true

    [[device]]
    name = "cam-02"
    description = "two lines? no: one, with a comma"

    [[device]]  # a raw request, with a flat key overriding it
    ota_version = "4.3.95"
    [device.request]
    Name = "cam-03"
    Tags = { k = "" }
    [device.request.NetworkingConfiguration.Ethernet0]
    ConnectionType = "STATIC_IP"
    StaticIpConnectionInfo = { IpAddress = "10.0.1.5:8080", Mask = "255.255.0.0", DefaultGateway = "10.0.0.1", Dns = ["dns.example.com"] }
    [device.request.NetworkingConfiguration.Ethernet1]
    ConnectionType = "STATIC_IP"
    StaticIpConnectionInfo = { IpAddress = "10.0.2.5", Mask = "255.255.255.0", DefaultGateway = "10.0.2.1", Dns = ["10.0.2.2"] }
"""

JSON_FULL = """
    {"devices": [
      {"name": "cam-01", "description": "lobby camera", "tags": {"site": "lab", "floor": "2"},
       "eth0": "static", "eth0_ip": "10.0.0.10", "eth0_mask": "255.255.255.0", "eth0_gateway": "10.0.0.1",
       "eth0_dns": ["10.0.0.2", "10.0.0.3"], "eth1": "dhcp", "ntp": ["pool.ntp.org", "10.0.0.1:123"],
       "actions": {"ota": {"image_version": "4.3.94", "allow_major": true}, "reboot": true}},
      {"name": "cam-02", "description": "two lines? no: one, with a comma"},
      {"request": {"Name": "cam-03", "Tags": {"k": ""}, "NetworkingConfiguration": {
          "Ethernet0": {"ConnectionType": "STATIC_IP", "StaticIpConnectionInfo": {"IpAddress": "10.0.1.5:8080",
              "Mask": "255.255.0.0", "DefaultGateway": "10.0.0.1", "Dns": ["dns.example.com"]}}}},
       "eth1": "static", "eth1_ip": "10.0.2.5", "eth1_mask": "255.255.255.0", "eth1_gateway": "10.0.2.1",
       "eth1_dns": "10.0.2.2", "reboot": "1"}
    ]}
"""

CAM_03 = {
    "Name": "cam-03",
    "Tags": {"k": ""},
    "NetworkingConfiguration": {
        "Ethernet0": {
            "ConnectionType": "STATIC_IP",
            "StaticIpConnectionInfo": {
                "IpAddress": "10.0.1.5:8080",
                "Mask": "255.255.0.0",
                "DefaultGateway": "10.0.0.1",
                "Dns": ["dns.example.com"],
            },
        },
        "Ethernet1": {
            "ConnectionType": "STATIC_IP",
            "StaticIpConnectionInfo": {
                "IpAddress": "10.0.2.5",
                "Mask": "255.255.255.0",
                "DefaultGateway": "10.0.2.1",
                "Dns": ["10.0.2.2"],
            },
        },
    },
}


@pytest.mark.parametrize(
    "fmt, text, lines, cam03_actions",
    [
        ("csv", CSV_FULL, [2, 5, 6], {"reboot": True}),
        ("toml", TOML_FULL, [2, 17, 21], {"ota": {"image_version": "4.3.95", "allow_major": False}}),
        ("json", JSON_FULL, [2, 6, 7], {"reboot": True}),
    ],
)
def test_import_every_field(pl, fmt, text, lines, cam03_actions):
    path = pl.write(f"plan.{fmt}", text)
    preview = pl.ok("plan", "import", path, "--dry-run")
    assert preview["dry_run"] and preview["count"] == 3 and [e["line"] for e in preview["entries"]] == lines
    assert pl.names() == []  # a dry run changes nothing
    human = pl.run("plan", "import", path, "--dry-run")
    assert (
        "would add 3 entries (dry run: nothing changed)" in human.stdout
        and "eth0 10.0.0.10, eth1 dhcp, ntp ×2" in human.stdout
    )

    imported = pl.ok("plan", "import", path)
    assert imported["count"] == 3 and not imported["dry_run"]
    entries = {e["name"]: e for e in pl.ok("plan", "list")}
    assert list(entries) == ["cam-01", "cam-02", "cam-03"]
    assert entries["cam-01"]["request"] == FULL_REQUEST and entries["cam-01"]["actions"] == FULL_ACTIONS
    assert entries["cam-02"]["request"] == {"Name": "cam-02", "Description": "two lines? no: one, with a comma"}
    assert entries["cam-02"]["actions"] == {}
    assert entries["cam-03"]["request"] == CAM_03 and entries["cam-03"]["actions"] == cam03_actions
    assert all(e["status"] == "pending" and e["attempts"] == 0 for e in entries.values())


def test_import_from_stdin_and_bare_json_list(pl):
    plan = json.dumps([{"name": f"cam-{i}", "eth0": "dhcp"} for i in range(3)])
    assert pl.fails(ExitCode.USAGE, "plan", "import", "-", input=plan)["message"].endswith("needs --format")
    assert pl.ok("plan", "import", "-", "--format", "json", input=plan)["count"] == 3
    human = pl.run("plan", "import", pl.write("one.json", '[{"name": "cam-9"}]'))
    assert human.returncode == 0 and "imported cam-9" in human.stdout and "position 4" in human.stdout
    assert pl.names() == ["cam-0", "cam-1", "cam-2", "cam-9"]


# ---------------------------------------------------------------- bad entries: every one, with its line


def _problems(error: dict) -> set[tuple[int, str]]:
    return {(v["line"], v["field"]) for v in error["details"]["violations"]}


def test_csv_bad_rows_reported_by_physical_line_and_nothing_imported(pl):
    path = pl.write(
        "bad.csv",
        """
        name,description,eth0,eth0_ip,eth0_mask,eth0_gateway,eth0_dns,ntp,ota_version,allow_major,reboot
        cam-01,"a description
        over two lines",dhcp
        cam-02,,static,10.0.0.300,255.255.255.0,10.0.0.1,10.0.0.2,,,,
        cam 03,,,,,,,Pool.Example.COM,,maybe,
        cam-04,,,,,,,,,,
        cam-05,,dhcp,10.0.0.5,,,,,,,nope
        cam-06,,,,,,,,,true,
    """,
    )
    error = pl.fails(ExitCode.VALIDATION, "plan", "import", path)
    assert error["reason"] == "validation" and error["details"]["source"] == path
    assert _problems(error) == {
        (2, "description"),  # a line break: ^.*$; reported where the row starts
        (4, "eth0_ip"),
        (5, "name"),
        (5, "ntp[0]"),
        (5, "allow_major"),
        (7, "eth0"),
        (7, "reboot"),
        (8, "ota_version"),
    }
    by_line = {v["line"]: v for v in error["details"]["violations"]}
    assert by_line[4] == {
        "line": 4,
        "entry": "cam-02",
        "field": "eth0_ip",
        "value": "10.0.0.300",
        "rule": "must be a dotted IPv4 address, optionally :port 1–65535",
    }
    human = pl.run("plan", "import", path)
    assert human.returncode == ExitCode.VALIDATION
    assert "line 4 (cam-02): eth0_ip = '10.0.0.300': must be a dotted IPv4 address" in human.stderr
    assert "nothing was imported" in human.stderr
    assert pl.names() == []


def test_toml_and_json_bad_entries_reported_by_start_line(pl):
    toml_path = pl.write(
        "bad.toml",
        '''
        [[device]]
        name = "cam-01"
        note = """[[device]]
        not a header"""

        [[device]]
        name = "cam-02"
        tags = { "" = "x" }

        [[device]]
        name = "cam-03"
        eth0_dns = 5
        [device.request]
        Description = 7
    ''',
    )
    error = pl.fails(ExitCode.VALIDATION, "plan", "import", toml_path)
    assert _problems(error) == {(1, "note"), (6, "tags key"), (10, "eth0_dns"), (10, "request.Description")}

    json_path = pl.write(
        "bad.json",
        """
        [
          {"name": "cam-01"},
          {"name": "cam-02", "eth1": "bridge",
           "ota_version": "4.3.94"},
          "cam-03",

          {"name": "cam-04", "name": "cam-05"}, {"name": "cam-06", "actions": {"reboot": 1, "ota": {"image_version": ""}}}
        ]
    """,
    )
    error = pl.fails(ExitCode.VALIDATION, "plan", "import", json_path)
    assert _problems(error) == {
        (3, "eth1"),
        (5, "(entry)"),
        (7, "name"),
        (7, "actions.reboot"),
        (7, "actions.ota.image_version"),
    }
    assert pl.names() == []


def test_duplicates_in_the_file_and_against_the_plan(pl):
    pl.ok("plan", "add", "--name", "cam-01")
    path = pl.write(
        "dups.csv",
        """
        name,eth0
        cam-01,dhcp
        cam-02,dhcp
        cam-03,dhcp
        cam-02,dhcp
    """,
    )
    error = pl.fails(ExitCode.VALIDATION, "plan", "import", path)
    assert {(v["line"], v["rule"]) for v in error["details"]["violations"]} == {
        (2, "already in the plan"),
        (5, "also on line 3"),
    }
    assert pl.names() == ["cam-01"]
    pl.ok("plan", "remove", "cam-01")
    error = pl.fails(ExitCode.VALIDATION, "plan", "import", path)
    assert [(v["line"], v["rule"]) for v in error["details"]["violations"]] == [(5, "also on line 3")]


def test_unknown_columns_and_keys_are_named(pl):
    error = pl.fails(ExitCode.VALIDATION, "plan", "import", pl.write("cols.csv", "name,eth0,vlan\ncam-01,dhcp,7\n"))
    assert [(v["line"], v["value"]) for v in error["details"]["violations"]] == [(1, "vlan")]
    assert "unknown column" in error["details"]["violations"][0]["rule"]
    error = pl.fails(ExitCode.VALIDATION, "plan", "import", pl.write("semi.csv", "name;eth0\ncam-01;dhcp\n"))
    assert "separator is a comma" in error["message"]
    error = pl.fails(
        ExitCode.VALIDATION, "plan", "import", pl.write("keys.json", '[{"name": "cam-01", "Eth0": "dhcp"}]')
    )
    assert [(v["line"], v["field"]) for v in error["details"]["violations"]] == [(1, "Eth0")]


# ---------------------------------------------------------------- files that are not plans


@pytest.mark.parametrize(
    "name, content, line, words",
    [
        ("quote.csv", 'name,description\ncam-01,"unclosed\n', 2, "not valid CSV"),
        ("quote2.csv", 'name,description\ncam-01,"a"b\n', 2, "not valid CSV"),
        ("syntax.toml", '[[device]]\nname = "cam-01"\nname2 = \n', 3, "not valid TOML"),
        ("syntax.json", '[{"name": "cam-01"},\n {"name": "cam-02",}]\n', 2, "not valid JSON"),
        ("trailing.json", '[{"name": "cam-01"}] []\n', 1, "not valid JSON"),
        ("latin1.csv", b"name,description\ncam-01,caf\xe9\n", 2, "not UTF-8"),
        ("empty.toml", "\n  \n", None, "is empty"),
        ("header.csv", "name,eth0\n", None, "holds no devices"),
        ("table.toml", '[device]\nname = "cam-01"\n', None, "write [[device]]"),
        ("object.json", '{"device": []}', 1, "unknown top-level key"),
    ],
)
def test_malformed_files(pl, name, content, line, words):
    error = pl.fails(
        ExitCode.VALIDATION,
        "plan",
        "import",
        pl.write(name, content),
    )
    assert error["reason"] == "plan-file" and words in error["message"]
    assert error["details"].get("line") == line
    assert pl.names() == []


def test_unreadable_paths_are_usage_errors(pl):
    assert pl.fails(ExitCode.USAGE, "plan", "import", str(pl.home / "missing.csv"))["reason"] == "usage"
    (pl.home / "dir.csv").mkdir()
    assert pl.fails(ExitCode.USAGE, "plan", "import", str(pl.home / "dir.csv"))["reason"] == "usage"
    error = pl.fails(ExitCode.USAGE, "plan", "import", pl.write("plan.txt", "name\ncam-01\n"))
    assert "--format" in error["hint"]
    assert pl.ok("plan", "import", str(pl.home / "plan.txt"), "--format", "csv")["count"] == 1


# ---------------------------------------------------------------- the claim under contention

CLAIMER = """
import json, sys
from agent.state import StateDB
db = StateDB(sys.argv[1])
got = []
while (entry := db.claim_next(sys.argv[2])) is not None:
    got.append(entry["id"])
print(json.dumps(got))
"""


def test_every_entry_claimed_exactly_once_by_eight_processes(pl):
    rows = "\n".join(f"cam-{i:02d},dhcp" for i in range(50))
    assert pl.ok("plan", "import", pl.write("fifty.csv", "name,eth0\n" + rows + "\n"))["count"] == 50
    env = clean_env(pl.home)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(pl.state), f"handoff-{n}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    claimed: list[int] = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        claimed += json.loads(out)
    ids = [entry["id"] for entry in pl.ok("plan", "list")]
    assert sorted(claimed) == sorted(ids) and len(claimed) == 50
    entries = pl.ok("plan", "list", "--status", "claimed")
    assert len(entries) == 50 and all(entry["attempts"] == 1 for entry in entries)


def test_every_entry_claimed_exactly_once_by_eight_threads(tmp_path):
    """The daemon's shape: one process, a worker thread per stick, writers queued on one lock."""
    import threading

    db = StateDB(tmp_path / "state")
    db.add_entries([(f"cam-{i:02d}", {"Name": f"cam-{i:02d}"}, {}) for i in range(80)])
    claimed: list[list[int]] = [[] for _ in range(8)]

    def claim(n: int) -> None:
        mine = StateDB(tmp_path / "state")  # its own object, as each worker has: the lock is per file
        while (entry := mine.claim_next(f"handoff-{n}")) is not None:
            claimed[n].append(entry["id"])
        mine.close()

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every = [i for got in claimed for i in got]
    assert sorted(every) == sorted(entry["id"] for entry in db.plan()) and len(every) == 80
    assert sum(1 for got in claimed if got) > 1, "the claims were not spread over the threads"


def test_remove_and_retry_decide_in_the_transaction_that_changes_the_entry(tmp_path, monkeypatch):
    """The daemon claims the entry just after `plan remove`/`plan retry` read it: either the claim waits
    for the change, or the change is refused; a claimed entry is never deleted or put back in the queue."""
    import sqlite3

    from agent.state import StateError

    db = StateDB(tmp_path / "state")
    daemon = StateDB(tmp_path / "state")
    daemon.db.execute("PRAGMA busy_timeout = 0")  # locked out is an answer here, not a 10 s wait
    db.add_entries([("cam-01", {"Name": "cam-01"}, {})])
    read, claims = StateDB.entry, []

    def read_then_claim(self: StateDB, ref: str | int) -> dict:
        found = read(self, ref)
        if self is db and not claims:
            try:
                claims.append(daemon.claim_next("handoff-1"))
            except sqlite3.OperationalError:  # the change holds the write lock: the daemon waits its turn
                claims.append(None)
        return found

    monkeypatch.setattr(StateDB, "entry", read_then_claim)
    for change in (db.retry_entry, db.remove_entry):
        claims.clear()
        try:
            change("cam-01")
        except StateError as exc:
            assert "is being staged right now" in exc.message
            assert read(db, "cam-01")["status"] == "claimed"
        else:
            assert claims == [None], f"{change.__name__} changed an entry the daemon had claimed"
    assert db.plan() == []
    daemon.close()
    db.close()


def test_plan_retry_never_requeues_an_entry_staged_after_it_looked(tmp_path, monkeypatch):
    """`plan retry`'s whole rule (which statuses go back, which actions run again) is judged in the
    transaction that changes the entry: the daemon cannot claim and stage it in between."""
    import sqlite3

    from agent.cli.plan_cmd import _retried

    db = StateDB(tmp_path / "state")
    daemon = StateDB(tmp_path / "state")
    daemon.db.execute("PRAGMA busy_timeout = 0")
    db.add_entries([("cam-01", {"Name": "cam-01"}, {})])
    entry = db.entry("cam-01")
    db.set_entry(entry["id"], status="attention", attempts=3, last_error="stick pulled")
    read, staged = StateDB.entry, []

    def read_then_stage(self: StateDB, ref: str | int) -> dict:
        found = read(self, ref)
        if self is db and not staged:
            try:  # the daemon takes the entry (put back to pending by someone) and stages it
                daemon.set_entry(entry["id"], status="pending")
                claimed = daemon.claim_next("handoff-1")
                daemon.set_entry(claimed["id"], status="staged", device_id="device-1")
                staged.append(True)
            except sqlite3.OperationalError:  # locked out by the retry's transaction: it waits its turn
                staged.append(False)
        return found

    monkeypatch.setattr(StateDB, "entry", read_then_stage)
    retried = db.change_entry("cam-01", lambda e: _retried(e, []))
    assert staged == [False], "the daemon changed the entry between the retry's judgement and its change"
    assert (retried["status"], retried["attempts"]) == ("pending", 0)
    daemon.close()
    db.close()


def test_the_database_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        db = StateDB(tmp_path / "state")
        db.add_entries([("cam-01", {"Name": "cam-01"}, {})])
        files = sorted((tmp_path / "state").iterdir())
        assert {f.name for f in files} >= {"panostage.sqlite3", "panostage.sqlite3-wal", "panostage.sqlite3-shm"}
        assert all(f.stat().st_mode & 0o077 == 0 for f in files), [(f.name, oct(f.stat().st_mode)) for f in files]
    finally:
        os.umask(old)
        db.close()


def test_list_shows_action_progress_and_retry_reruns_the_failed_action(pl):
    """An OTA that failed after the device was provisioned is retried as the OTA, not as a new device."""
    pl.ok("plan", "add", "--name", "cam-01", "--ota", "4.3.94", "--reboot")
    db = StateDB(pl.state)
    entry = db.entry("cam-01")
    progress = {**entry["actions"], "progress": {"ota": "FAILED", "ota_job": "job-1"}}
    db.set_entry(
        entry["id"],
        status="attention",
        device_id="device-1",
        actions=json.dumps(progress),
        last_error="ota job job-1 failed",
    )
    assert "ota 4.3.94 [FAILED], reboot" in pl.run("plan", "list").stdout
    result = pl.run("plan", "retry", "cam-01")
    assert result.returncode == 0 and "ota will run again on device device-1" in result.stdout
    after = db.entry("cam-01")
    assert (after["status"], after["device_id"]) == ("provisioned", "device-1")
    assert after["actions"]["progress"] == {} and after["actions"]["reboot"] is True
    db.close()
