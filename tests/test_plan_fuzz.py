"""Fuzzing the plan-file parser and the configuration loader.

Whatever they are fed (arbitrary bytes, arbitrary text, well-formed plans with
bad values, well-formed plans mangled a little), they end in a result or in a
:class:`PanostageError` with the documented exit code: never another exception,
never a hang.  Well-formed plans must also report the right line for each entry,
however their strings are laid out (decoys such as ``[[device]]`` inside a
multi-line string included).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import string
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import config
from agent.aws import validation
from agent.errors import ConfigError, ExitCode, PanostageError
from agent.staging import plan
from tests.helpers import run_cli
from tests.strategies import ipv4_with_optional_port, ntp_servers, plain_ipv4

#: PLAN_FUZZ_SCALE=20 for a long campaign; the default keeps the file under ~30 s.
SCALE = max(1, int(os.environ.get("PLAN_FUZZ_SCALE", "1")))
FUZZ = settings(
    max_examples=200 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)


@contextmanager
def time_limit(seconds: float = 5.0) -> Iterator[None]:
    """A hang becomes a test failure (SIGALRM), not a stuck run."""

    def on_alarm(_signum, _frame):
        raise TimeoutError(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_bytes(raw: bytes, fmt: str) -> list[plan.PlanEntry]:
    """What `plan import` does with a file's bytes."""
    return plan.parse_plan(plan.decode(raw, "fuzz"), fmt, "fuzz")


def outcome(call, *args: Any) -> list[plan.PlanEntry] | PanostageError:
    """Run the parser; any exception but a VALIDATION PanostageError fails the test."""
    try:
        with time_limit():
            entries = call(*args)
    except PanostageError as error:
        assert error.exit_code == ExitCode.VALIDATION, error.to_dict()
        json.dumps(error.to_dict(), allow_nan=False)  # --json can always print it
        error.message.encode("utf-8", "backslashreplace")
        if isinstance(error, plan.PlanValidationError):
            assert error.details["violations"]
            assert all({"line", "field", "value", "rule"} <= set(v) for v in error.details["violations"])
        return error
    assert isinstance(entries, list) and entries
    names = [entry.name for entry in entries]
    assert len(set(names)) == len(names)
    for entry in entries:  # a parse that succeeds hands over only entries that keep every rule
        assert validation.check("ProvisionDevice", entry.request) == []
        assert plan.check_actions(entry.actions) == []
        assert entry.request["Name"] == entry.name
        json.dumps(entry.request, allow_nan=False)
        json.dumps(entry.actions, allow_nan=False)
    return entries


# ---------------------------------------------------------------- arbitrary input

formats = st.sampled_from(plan.FORMATS)
#: Bytes that look a little like plans: pieces of each syntax glued together.
TOKENS = [
    '"',
    "'",
    '"""',
    "'''",
    "[",
    "]",
    "[[device]]",
    "{",
    "}",
    ",",
    ":",
    ";",
    "=",
    "#",
    "\\",
    "\n",
    "\r\n",
    "\r",
    "\x00",
    "\ufeff",
    " ",
    "name",
    "eth0",
    "dhcp",
    "static",
    "true",
    "nan",
    "1e999",
    "-",
    "devices",
    "10.0.0.1",
    "cam-1",
    "\u2028",
    "é",
    "1" * 5000,
    "[" * 2000,
    '{"a":' * 1500,
    "x = ",
    "x = " + "[" * 1200,
    "\n[backend]\nconnect_timeout = ",
    "\n[wait]\n",
]
token_text = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=5)), max_size=40).map("".join)


@FUZZ
@given(raw=st.binary(max_size=1500), fmt=formats)
def test_arbitrary_bytes(raw, fmt):
    outcome(parse_bytes, raw, fmt)


@FUZZ
@given(text=st.one_of(st.text(max_size=800), token_text), fmt=formats)
def test_arbitrary_text(text, fmt):
    outcome(plan.parse_plan, text, fmt, "fuzz")


# ---------------------------------------------------------------- well-formed plans, laid out in many ways

#: Characters the three syntaxes treat specially, and text that looks like their structure.
TRICKY = string.ascii_letters + string.digits + " -_.:/@#[]{}\"'\\,é€😀"
tricky_text = st.text(TRICKY, min_size=1, max_size=12).map(str.strip).filter(bool)
tag_safe = tricky_text  # no ";" nor "=": the CSV form of tags splits on them


@st.composite
def valid_fields(draw, index: int) -> dict[str, Any]:
    """One entry's keys, every value within the documented rules (lists and tables as in TOML/JSON)."""
    fields: dict[str, Any] = {
        "name": f"cam-{index}-" + draw(st.text(string.ascii_letters + string.digits + "-_", max_size=6))
    }
    if draw(st.booleans()):
        fields["description"] = draw(st.one_of(tricky_text, st.just("[[device]]"), st.just('a """ b')))
    if draw(st.booleans()):
        fields["tags"] = draw(st.dictionaries(tag_safe, tag_safe, max_size=3))
    for port in ("eth0", "eth1"):
        mode = draw(st.sampled_from([None, "dhcp", "static"]))
        if mode == "dhcp":
            fields[port] = draw(st.sampled_from(["dhcp", "DHCP"]))
        elif mode == "static":
            if draw(st.booleans()):
                fields[port] = "static"
            fields[f"{port}_ip"] = draw(ipv4_with_optional_port())
            fields[f"{port}_mask"] = "255.255.255.0"
            fields[f"{port}_gateway"] = draw(plain_ipv4)
            fields[f"{port}_dns"] = draw(st.lists(plain_ipv4, min_size=1, max_size=3))
    if draw(st.booleans()):
        fields["ntp"] = draw(st.lists(ntp_servers, min_size=1, max_size=5))
    if draw(st.booleans()):
        fields["ota_version"] = draw(st.sampled_from(["4.3.94", "5.0.0", "1"]))
        if draw(st.booleans()):
            fields["allow_major"] = draw(st.booleans())
    if draw(st.booleans()):
        fields["reboot"] = draw(st.booleans())
    return fields


#: (key, bad value, the field the problem must be reported on)
BAD_VALUES = [
    ("name", "bad name", "name"),
    ("eth0_ip", "10.0.0.300", "eth0_ip"),
    ("ntp", ["Upper.Case.Example"], "ntp[0]"),
    ("allow_major", "maybe", "allow_major"),
    ("eth1", "bridge", "eth1"),
    ("ota_version", "a" * 256, "ota_version"),
    ("description", "x" * 256, "description"),
    ("vlan", "7", "vlan"),
]


def _flag(value: bool) -> str:
    return "true" if value else "false"


# ---- serializers: each returns the text and the line each entry starts on


def to_csv(entries: list[dict[str, Any]], draw) -> tuple[str, list[int]]:
    columns = list(plan.FLAT_KEYS) + sorted({k for e in entries for k in e} - set(plan.FLAT_KEYS))
    columns = draw(st.permutations(columns))
    out = io.StringIO()
    writer = csv.writer(
        out,
        lineterminator=draw(st.sampled_from(["\n", "\r\n"])),
        quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])),
    )
    writer.writerow([c.upper() if draw(st.booleans()) else c for c in columns])
    line, lines = 2, []
    for entry in entries:
        while draw(st.integers(0, 4)) == 0:
            out.write(draw(st.sampled_from(["\n", ",,,\n", " , \n"])))
            line += 1
        cells = []
        for column in columns:
            value = entry.get(column)
            if value is None:
                cells.append("")
            elif isinstance(value, bool):
                cells.append(draw(st.sampled_from([_flag(value), "yes" if value else "no", "1" if value else "0"])))
            elif isinstance(value, list):
                cells.append(draw(st.sampled_from([";", "; ", ","])).join(value))
            elif isinstance(value, dict):
                cells.append(";".join(f"{k}={v}" for k, v in value.items()))
            else:
                cells.append(value)
        writer.writerow(cells)
        lines.append(line)
        line += 1
    return out.getvalue(), lines


def toml_string(text: str, draw=None) -> str:
    escaped = "".join(
        "\\\\" if c == "\\" else '\\"' if c == '"' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c
        for c in text
    )
    if draw is None:
        return f'"{escaped}"'
    style = draw(st.sampled_from(["basic", "literal", "multi", "multi-continued"]))
    if style == "literal" and "'" not in text and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return f"'{text}'"
    if style == "multi":
        return f'"""{escaped}"""' if not escaped.endswith('"') else f'"{escaped}"'
    if style == "multi-continued":  # a line-ending backslash: the value stays on one line, the text does not
        return (
            f'"""\\\n   {escaped}"""'
            if not escaped.endswith('"') and not escaped.startswith((" ", "\t"))
            else f'"{escaped}"'
        )
    return f'"{escaped}"'


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def toml_value(value: Any, draw=None) -> str:
    if isinstance(value, bool):
        return _flag(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value, draw)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v, draw) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v, draw)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def to_toml(entries: list[dict[str, Any]], draw) -> tuple[str, list[int]]:
    text, lines = ("# plan\n" if draw(st.booleans()) else ""), []

    def starts_here(head: str) -> None:  # the entry starts where ``head`` puts its "[[" or "{"
        lines.append(text.count("\n") + 1 + head[: head.index("[[" if "[[" in head else "{")].count("\n"))

    if draw(st.booleans()):  # device = [ {...}, {...} ] at the root, a table a line (inline tables are single-line)
        text += "device = [\n"
        for entry in entries:
            row = "  {" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in entry.items()) + "},\n"
            starts_here(row)
            text += row
        return text + "]\n", lines
    for entry in entries:
        head = draw(st.sampled_from(["[[device]]\n", "[[ device ]]  # next\n", '[["device"]]\n', "\n[[device]]\n"]))
        starts_here(head)
        text += head
        tags_as_table = "tags" in entry and draw(st.booleans())
        for key, value in entry.items():
            if key == "tags" and tags_as_table:
                continue
            text += f"{toml_key(key)} = {toml_value(value, draw)}\n"
            if draw(st.integers(0, 5)) == 0:
                text += draw(st.sampled_from(["\n", "# [[device]] in a comment\n", "  # \"\"\" '''\n"]))
        if tags_as_table:
            text += "[device.tags]\n" + "".join(
                f"{toml_key(k)} = {toml_value(v, draw)}\n" for k, v in entry["tags"].items()
            )
    return text, lines


def to_json(entries: list[dict[str, Any]], draw) -> tuple[str, list[int]]:
    indent = draw(st.sampled_from([None, 0, 2]))
    chunks = [json.dumps(entry, indent=indent, ensure_ascii=draw(st.booleans())) for entry in entries]
    gap = draw(st.sampled_from([", ", ",\n", ",\n\n  ", "\n,"]))
    head = draw(st.sampled_from(["[", "[\n  ", '{"devices": [\n', ' \n{ "devices" :\n[']))
    text, lines = head, []
    for index, chunk in enumerate(chunks):
        if index:
            text += gap
        lines.append(text.count("\n") + 1)
        text += chunk
    text += "]" + ("}" if "devices" in head else "") + "\n"
    return text, lines


SERIALIZERS = {"csv": to_csv, "toml": to_toml, "json": to_json}


@st.composite
def plan_files(draw, *, bad: bool):
    """(format, text, line of each entry, the (line, field) problems planted)."""
    fmt = draw(formats)
    entries = [draw(valid_fields(index)) for index in range(draw(st.integers(1, 6)))]
    spoiled: dict[int, str] = {}
    if bad:
        for index in draw(st.sets(st.integers(0, len(entries) - 1), min_size=1)):
            key, value, field = draw(st.sampled_from(BAD_VALUES))
            if key == "allow_major" and fmt != "csv":
                value = 3  # TOML and JSON carry booleans natively: spoil the type instead
            entries[index][key] = value
            if key == "allow_major":
                entries[index].setdefault("ota_version", "4.3.94")
            if key == "eth0_ip":  # with dhcp, a static address is the port's problem
                entries[index]["eth0"] = "static"
            spoiled[index] = field
    text, lines = SERIALIZERS[fmt](entries, draw)
    planted = {(lines[index], field) for index, field in spoiled.items()}
    return fmt, text, lines, planted


@settings(FUZZ, max_examples=120 * SCALE)
@given(case=plan_files(bad=False))
def test_well_formed_plans_import_with_the_right_lines(case):
    fmt, text, lines, _ = case
    entries = outcome(plan.parse_plan, text, fmt, "fuzz")
    assert not isinstance(entries, PanostageError), entries.message
    assert [entry.line for entry in entries] == lines


@settings(FUZZ, max_examples=120 * SCALE)
@given(case=plan_files(bad=True))
def test_every_bad_entry_is_reported_on_its_own_line(case):
    fmt, text, lines, planted = case
    error = outcome(plan.parse_plan, text, fmt, "fuzz")
    assert isinstance(error, plan.PlanValidationError), error
    reported = {(v["line"], v["field"]) for v in error.details["violations"]}
    if fmt == "csv":  # an unknown column is the header's problem, on line 1
        planted = {
            (1 if field == "vlan" else line, "header column" if field == "vlan" else field) for line, field in planted
        }
        reported = {(line, "header column" if field.startswith("header column") else field) for line, field in reported}
    assert planted <= reported
    assert {line for line, _ in reported} <= set(lines) | {1}


MUTATION_TOKENS = [
    '"',
    "'",
    '"""',
    "[",
    "]",
    "[[device]]\n",
    "{",
    "}",
    ",",
    "\n",
    "\r",
    "=",
    "#",
    "\\",
    "\x00",
    ";",
    "name",
    "\ufeff",
    "\t",
    "nan",
    "-1",
    "1" * 4400,
    "[" * 1200,
]


@st.composite
def mutated_plans(draw):
    fmt, text, _, _ = draw(plan_files(bad=draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        at = draw(st.integers(0, len(text)))
        operation = draw(st.sampled_from(["delete", "insert", "duplicate-line", "truncate"]))
        if operation == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 8)) :]
        elif operation == "insert":
            text = text[:at] + draw(st.one_of(st.sampled_from(MUTATION_TOKENS), st.text(max_size=4))) + text[at:]
        elif operation == "duplicate-line":
            lines = text.split("\n")
            pick = draw(st.integers(0, len(lines) - 1))
            lines.insert(pick, lines[pick])
            text = "\n".join(lines)
        else:
            text = text[:at]
    return fmt, text


@settings(FUZZ, max_examples=150 * SCALE)
@given(case=mutated_plans())
def test_mutated_plans_end_in_entries_or_a_validation_error(case):
    fmt, text = case
    outcome(plan.parse_plan, text, fmt, "fuzz")
    outcome(parse_bytes, text.encode("utf-8", "surrogatepass"), fmt)


# ---------------------------------------------------------------- any value under the known keys

#: Member names of the request and the actions, so random tables reach deep into the checks.
MEMBERS = [
    "Name",
    "Tags",
    "NetworkingConfiguration",
    "Ethernet0",
    "Ethernet1",
    "ConnectionType",
    "STATIC_IP",
    "DHCP",
    "StaticIpConnectionInfo",
    "IpAddress",
    "Mask",
    "DefaultGateway",
    "Dns",
    "Ntp",
    "NtpServers",
    "Description",
    "ota",
    "image_version",
    "allow_major",
    "reboot",
    "dhcp",
    "static",
    "cam-1",
    "10.0.0.1",
    "",
]
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.sampled_from(MEMBERS),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(MEMBERS), inner, max_size=4)),
    max_leaves=12,
)
any_entry = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(plan.FLAT_KEYS + ("actions", "Name", ""), json_values),
        "request": st.dictionaries(
            st.sampled_from(["Name", "Tags", "NetworkingConfiguration", "Description"]), json_values
        ),
        "tags": st.one_of(json_values, st.dictionaries(st.text(max_size=3), st.text(max_size=3), min_size=1)),
        "eth0": st.one_of(json_values, st.sampled_from(["dhcp", "static"])),
    },
)


def _no_none(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, list):
        return all(map(_no_none, value))
    if isinstance(value, dict):
        return all(map(_no_none, value.values()))
    return True


@settings(FUZZ, max_examples=120 * SCALE)
@given(entries=st.lists(any_entry, min_size=1, max_size=4), wrap=st.booleans())
def test_any_values_under_the_known_keys(entries, wrap):
    text = json.dumps({"devices": entries} if wrap else entries)
    outcome(plan.parse_plan, text, "json", "fuzz")
    if _no_none(entries):  # TOML has no null
        toml = "".join(
            "[[device]]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in entry.items())
            for entry in entries
        )
        outcome(plan.parse_plan, toml, "toml", "fuzz")


# ---------------------------------------------------------------- a handful through the real CLI


@pytest.fixture(scope="module")
def cli_home():
    with tempfile.TemporaryDirectory() as home:
        yield Path(home)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
    database=None,
)
@given(case=mutated_plans())
def test_mutated_plans_through_the_cli(cli_home, case):
    fmt, text = case
    path = cli_home / f"plan.{fmt}"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    state = cli_home / "state"
    env = {"PANOSTAGE_PATHS_STATE_DIR": str(state)}
    before = json.loads(run_cli("plan", "list", "--json", env=env, home=cli_home, timeout=60).stdout)
    result = run_cli("plan", "import", str(path), "--json", env=env, home=cli_home, timeout=60)
    after = json.loads(run_cli("plan", "list", "--json", env=env, home=cli_home, timeout=60).stdout)
    assert result.returncode in (ExitCode.OK, ExitCode.VALIDATION), result.stderr
    if result.returncode == ExitCode.OK:
        assert len(after) == len(before) + json.loads(result.stdout)["count"]
    else:
        error = json.loads(result.stderr.splitlines()[-1])["error"]
        assert error["exit_code"] == ExitCode.VALIDATION and error["reason"] in ("validation", "plan-file")
        assert after == before  # all or nothing


# ---------------------------------------------------------------- the configuration loader

config_keys = {section: list(keys) for section, keys in config._section_fields().items()}
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["local", "aws", "restage", "auto", "", "0", "-1"]),
    st.datetimes(timezones=st.sampled_from([None, UTC])),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def config_documents(draw) -> str:
    sections = draw(
        st.lists(
            st.one_of(st.sampled_from(list(config_keys)), st.text(min_size=1, max_size=8)), max_size=4, unique=True
        )
    )
    lines = []
    for section in sections:
        known = config_keys.get(section, [])
        keys = draw(
            st.lists(
                st.one_of(st.sampled_from(known), st.text(min_size=1, max_size=8))
                if known
                else st.text(min_size=1, max_size=8),
                max_size=4,
                unique=True,
            )
        )
        lines.append(f"[{toml_key(section)}]")
        lines += [f"{toml_key(key)} = {toml_value(draw(toml_values))}" for key in keys]
    if draw(st.integers(0, 9)) == 0:  # deep nesting: the TOML parser recurses per level
        lines.append(f"[{draw(st.sampled_from(list(config_keys)))}]")
        depth = draw(st.integers(1, 3000))
        lines.append("x = " + "[" * depth + "]" * depth)
    if draw(st.booleans()):  # a top-level value where a table belongs
        lines.insert(0, f"{draw(st.sampled_from(list(config_keys)))} = {toml_value(draw(scalars))}")
    return "\n".join(lines) + "\n"


def load_outcome(path: Path, env: dict[str, str]) -> None:
    try:
        with time_limit():
            loaded = config.load(str(path), env=env)
    except ConfigError as error:
        assert error.exit_code == ExitCode.CONFIG
        json.dumps(error.to_dict(), default=repr)
        return
    for row in loaded.rows():  # what loads is within every rule
        if isinstance(row["value"], float):
            assert math.isfinite(row["value"])


@pytest.fixture(scope="module")
def config_dir():
    with tempfile.TemporaryDirectory() as home:
        yield Path(home)


@FUZZ
@given(document=st.one_of(config_documents(), st.text(max_size=300), token_text))
def test_config_loader_on_random_toml(config_dir, document):
    path = config_dir / "config.toml"
    path.write_text(document, encoding="utf-8", errors="surrogatepass")
    load_outcome(path, {})


@FUZZ
@given(raw=st.binary(max_size=300))
def test_config_loader_on_random_bytes(config_dir, raw):
    path = config_dir / "config.toml"
    path.write_bytes(raw)
    load_outcome(path, {})


env_names = st.one_of(
    st.sampled_from([f"PANOSTAGE_{s}_{k}".upper() for s, keys in config_keys.items() for k in keys]),
    st.text(string.ascii_uppercase + "_", max_size=12).map(lambda t: "PANOSTAGE_" + t),
)


@FUZZ
@given(
    env=st.dictionaries(
        env_names,
        st.one_of(st.text(max_size=12), st.sampled_from(["nan", "inf", "1e999", "-0", "yes", " 7 "])),
        max_size=4,
    )
)
def test_config_loader_on_random_environment(config_dir, env):
    path = config_dir / "empty.toml"
    path.write_text("")
    load_outcome(path, env)
