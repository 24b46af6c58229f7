"""Plan files (CSV, TOML, JSON) and the post-provision actions schema.

A plan entry is one device to provision: its ProvisionDevice request and the
actions the daemon runs once the device reports ONLINE.  Every format carries the
same keys per entry:

=================  ===========================================================
``name``           the device name (required unless ``request`` holds ``Name``)
``description``    free text
``tags``           ``"k=v;k=v"`` (TOML/JSON also: a table, or a list of ``"k=v"``)
``eth0``/``eth1``  ``dhcp`` or ``static``
``eth0_ip``        static address, IPv4[:port] (likewise ``eth1_ip``)
``eth0_mask``      static netmask
``eth0_gateway``   default gateway
``eth0_dns``       DNS servers, ``"a;b"`` (TOML/JSON also: a list)
``ntp``            NTP servers, ``"a;b"`` (TOML/JSON also: a list)
``ota_version``    run an OTA job to this image version once the device is ONLINE
``allow_major``    the OTA may cross a major version (true/false/yes/no/1/0)
``reboot``         reboot the device once it is ONLINE (after the OTA, if any)
``request``        TOML/JSON only: a raw ProvisionDevice request; the keys above override it
``actions``        TOML/JSON only: the actions in their stored form (instead of the three keys)
=================  ===========================================================

Every entry is checked against every documented rule (the ProvisionDevice rules
through :func:`agent.aws.validation.check`, the OTA rules through the same function
for CreateJobForDevices), plus duplicate names in the file and in the plan.  All
problems of all entries come back at once, each with the line the entry starts
on; nothing is returned when any entry is bad, so an import is all or nothing.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Mapping

from agent.errors import ExitCode, InputValidationError, PanostageError, UsageError, Violation

FORMATS = ("csv", "toml", "json")
PORT_KEYS = tuple(f"{port}{suffix}" for port in ("eth0", "eth1") for suffix in ("", "_ip", "_mask", "_gateway", "_dns"))
#: The keys of an entry, in the order of a CSV header.
FLAT_KEYS = ("name", "description", "tags", *PORT_KEYS, "ntp", "ota_version", "allow_major", "reboot")
#: Keys only the structured formats (TOML, JSON) can carry.
STRUCTURED_KEYS = ("request", "actions")
ACTION_KEYS = ("ota", "reboot")
OTA_KEYS = ("image_version", "allow_major")
TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")
#: A plan file larger than this is refused unread (a plan of thousands of devices is a few MB).
MAX_FILE_BYTES = 32 << 20
#: Problems shown in the error message; ``details`` (``--json``) lists all of them.
SHOWN_PROBLEMS = 40
#: Stand-in device ID: the OTA rules are checked before the device exists.
_PLACEHOLDER_DEVICE = "plan-entry"
#: List cells (DNS, NTP) are split on these; no address contains any of them.
_LIST_SPLIT = re.compile(r"[;,\s]+")


# ---------------------------------------------------------------- results and errors


@dataclass(frozen=True)
class PlanEntry:
    """One device of a plan file, checked: ready for :meth:`agent.state.StateDB.add_entries`."""

    name: str
    request: dict[str, Any]
    actions: dict[str, Any]
    line: int | None = None

    def as_tuple(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return self.name, self.request, self.actions

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "line": self.line, "request": self.request, "actions": self.actions}


@dataclass(frozen=True)
class RowProblem:
    """A broken rule in one entry of a plan file."""

    line: int | None
    entry: str | None
    violation: Violation

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "line ?"
        if self.entry:
            where += f" ({self.entry})"
        return f"{where}: {self.violation}"

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "entry": self.entry, **self.violation.to_dict()}


class PlanFileError(PanostageError):
    """The file itself cannot be read as a plan (syntax, encoding, shape, empty)."""

    exit_code = ExitCode.VALIDATION
    reason = "plan-file"

    def __init__(self, source: str, problem: str, *, line: int | None = None, column: int | None = None,
                 hint: str | None = None) -> None:
        where = f" (line {line}" + (f", column {column}" if column is not None else "") + ")" if line is not None else ""
        details: dict[str, Any] = {"source": source}
        if line is not None:
            details["line"] = line
        if column is not None:
            details["column"] = column
        super().__init__(f"{source}: {problem}{where}", hint=hint, details=details)


class PlanValidationError(InputValidationError):
    """Entries of a plan file break documented rules: every problem, with its line."""

    reason = "validation"

    def __init__(self, problems: Iterable[RowProblem], *, source: str, entries: int) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line is None, p.line or 0))
        self.violations = [p.violation for p in self.problems]
        bad_lines = {p.line for p in self.problems}
        shown = "\n".join(f"  - {p}" for p in self.problems[:SHOWN_PROBLEMS])
        more = len(self.problems) - SHOWN_PROBLEMS
        if more > 0:
            shown += f"\n  … and {more} more (--json lists every one)"
        count = len(self.problems)
        lines = len(bad_lines)
        PanostageError.__init__(
            self,
            f"{source}: {count} {'problem' if count == 1 else 'problems'} on {lines} "
            f"{'line' if lines == 1 else 'lines'}; nothing was imported:\n{shown}",
            hint="fix these lines and import the whole file again",
            details={"source": source, "entries": entries, "violations": [p.to_dict() for p in self.problems]},
        )


# ---------------------------------------------------------------- actions


def build_actions(ota_version: str | None = None, allow_major: bool | None = None,
                  reboot: bool | None = None) -> dict[str, Any]:
    """The stored form of the actions; ``allow_major`` without a version is kept so the check names it."""
    actions: dict[str, Any] = {}
    if ota_version is not None or allow_major:
        ota: dict[str, Any] = {"allow_major": bool(allow_major)}
        if ota_version is not None:
            ota = {"image_version": ota_version, **ota}
        actions["ota"] = ota
    if reboot:
        actions["reboot"] = True
    return actions


def check_actions(actions: Any, names: Mapping[str, str] | None = None) -> list[Violation]:
    """Every broken rule in ``actions``; ``names`` renames the fields (``"ota.image_version"`` -> ``"--ota"``)."""
    names = {"ota": "actions.ota", "ota.image_version": "actions.ota.image_version",
             "ota.allow_major": "actions.ota.allow_major", "reboot": "actions.reboot", "": "actions",
             **(names or {})}
    if not isinstance(actions, Mapping):
        return [Violation(names[""], actions, "must be a table (ota, reboot)")]
    found = [Violation(f"{names['']}.{key}", actions[key], f"unknown action; known: {', '.join(ACTION_KEYS)}")
             for key in actions if key not in ACTION_KEYS]
    reboot = actions.get("reboot")
    if reboot is not None and not isinstance(reboot, bool):
        found.append(Violation(names["reboot"], reboot, "must be a boolean (true/false)"))
    ota = actions.get("ota")
    if ota is None:
        return found
    if not isinstance(ota, Mapping):
        return found + [Violation(names["ota"], ota, "must be a table (image_version, allow_major)")]
    found += [Violation(f"{names['ota']}.{key}", ota[key], f"unknown key; known: {', '.join(OTA_KEYS)}")
              for key in ota if key not in OTA_KEYS]
    # the OTA job's documented rules, checked once, where CreateJobForDevices is checked
    from agent.aws import validation

    config = {"ImageVersion": ota.get("image_version")}
    if ota.get("allow_major") is not None:
        config["AllowMajorVersionUpdate"] = ota["allow_major"]
    job = {"DeviceIds": [_PLACEHOLDER_DEVICE], "JobType": "OTA", "DeviceJobConfig": {"OTAJobConfig": config}}
    renames = {"DeviceJobConfig.OTAJobConfig.ImageVersion": names["ota.image_version"],
               "DeviceJobConfig.OTAJobConfig.AllowMajorVersionUpdate": names["ota.allow_major"]}
    for violation in validation.check("CreateJobForDevices", job):
        path = renames.get(violation.path, names["ota"])
        rule = violation.rule
        if path == names["ota.image_version"] and violation.value is None:
            rule = "required: the image version the OTA installs"
        found.append(Violation(path, violation.value, rule))
    return found


def describe_actions(actions: Mapping[str, Any] | None) -> str:
    """``ota 4.3.94 (major allowed), reboot``; ``-`` when there is none.

    The daemon keeps its progress in ``actions["progress"]`` (``{"ota": "COMPLETED", "reboot_job": ...}``);
    it is shown in brackets.
    """
    actions = actions if isinstance(actions, Mapping) else {}
    progress = actions.get("progress") if isinstance(actions.get("progress"), Mapping) else {}

    def state(kind: str) -> str:
        done = progress.get(kind) or ("job started" if progress.get(f"{kind}_job") else None)
        return f" [{done}]" if done else ""

    parts = []
    ota = actions.get("ota")
    if isinstance(ota, Mapping):
        parts.append(f"ota {ota.get('image_version')}" + (" (major allowed)" if ota.get("allow_major") else "")
                     + state("ota"))
    if actions.get("reboot"):
        parts.append("reboot" + state("reboot"))
    return ", ".join(parts) or "-"


# ---------------------------------------------------------------- reading


def format_of(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else the format the file name's extension names."""
    if fmt:
        if fmt.lower() not in FORMATS:
            raise UsageError(f"unknown plan format {fmt!r}", hint=f"one of {', '.join(FORMATS)}")
        return fmt.lower()
    suffix = Path(str(path)).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    raise UsageError(f"cannot tell the format of {path} from its name",
                     hint=f"name it .csv, .toml or .json, or give --format {'|'.join(FORMATS)}")


def read_plan_file(path: str | Path, fmt: str | None = None, *, existing: Collection[str] = ()) -> list[PlanEntry]:
    """Read and check a plan file (``-`` is standard input; then ``fmt`` is required).

    A path that cannot be read is a :class:`UsageError` (exit USAGE); a file whose
    content is not a valid plan raises :class:`PlanFileError` or
    :class:`PlanValidationError` (exit VALIDATION).
    """
    if str(path) == "-":
        if not fmt:
            raise UsageError("reading a plan from standard input needs --format", hint=f"one of {', '.join(FORMATS)}")
        fmt = format_of(path, fmt)
        raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        source = "<stdin>"
    else:
        fmt = format_of(path, fmt)
        source = str(path)
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            raise UsageError(f"cannot read plan file {path}: {getattr(exc, 'strerror', None) or exc}",
                             hint="check the path and its permissions") from None
    if len(raw) > MAX_FILE_BYTES:
        raise PlanFileError(source, f"larger than {MAX_FILE_BYTES >> 20} MiB; split the plan")
    return parse_plan(decode(raw, source), fmt, source, existing=existing)


def decode(raw: bytes, source: str) -> str:
    """UTF-8 (a byte-order mark is dropped), or a :class:`PlanFileError` naming the line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PlanFileError(source, f"not UTF-8 text: byte {raw[exc.start:exc.start + 1].hex()} at offset {exc.start}",
                            line=line, hint="save the file as UTF-8") from None


def parse_plan(text: str, fmt: str, source: str = "<plan>", *, existing: Collection[str] = ()) -> list[PlanEntry]:
    """Every entry of a plan file, checked; raises when the file or any entry is bad.

    ``existing`` holds the names already in the plan (a clash is a problem of the entry).
    """
    fmt = format_of(source, fmt)
    if not text.strip():
        raise PlanFileError(source, "is empty", hint="a plan holds at least one device")
    rows, problems = {"csv": _csv_rows, "toml": _toml_rows, "json": _json_rows}[fmt](text, source)
    if not rows and not problems:
        raise PlanFileError(source, "holds no devices", hint=_SHAPE_HINT[fmt])
    entries: list[PlanEntry] = []
    first_line: dict[str, int | None] = {}
    existing = set(existing)
    for line, fields in rows:
        name, entry, found = _entry(fields, csv_cells=fmt == "csv")
        if name is not None:  # a valid name, even in an entry with other problems
            if name in first_line:
                seen = first_line[name]
                found.append(Violation("name", name, f"also on line {seen}" if seen else "given twice in the file"))
            elif name in existing:
                found.append(Violation("name", name, "already in the plan"))
            first_line.setdefault(name, line)
        problems += [RowProblem(line, name or _label(fields), v) for v in found]
        if entry is not None and not found:
            entries.append(PlanEntry(entry.name, entry.request, entry.actions, line))
    if problems:
        raise PlanValidationError(problems, source=source, entries=len(rows))
    return entries


_SHAPE_HINT = {
    "csv": "a header row (name,eth0,...) and one row per device",
    "toml": "one [[device]] table per device",
    "json": 'a list of objects, one per device (or {"devices": [...]})',
}


def _label(fields: Any) -> str | None:
    """Something to call an entry whose name is not valid, if it is printable and short."""
    name = fields.get("name") if isinstance(fields, Mapping) else None
    return name if isinstance(name, str) and name and len(name) <= 80 and name.isprintable() else None


# ---------------------------------------------------------------- one entry


def _entry(fields: Any, *, csv_cells: bool) -> tuple[str | None, PlanEntry | None, list[Violation]]:
    """Build and check one entry: (its name if valid, the entry if all is well, every problem)."""
    if not isinstance(fields, Mapping):
        return None, None, [Violation("(entry)", fields, "must be a table/object of the plan keys")]
    allowed = FLAT_KEYS if csv_cells else FLAT_KEYS + STRUCTURED_KEYS
    found = [Violation(str(key), fields[key], f"unknown key; known: {', '.join(allowed)}")
             for key in fields if key not in allowed]
    found += [Violation(path, value, "not valid Unicode text (a lone surrogate)") for path, value in _surrogates(fields)]
    reader = _Fields(fields, found)
    base = reader.table("request", "must be a table: the ProvisionDevice request")
    name = reader.text("name")
    if name is None and base is not None:
        name = base.get("Name")
    description = reader.text("description")
    tags = reader.tags()
    ntp = reader.text_list("ntp")
    ports = {}
    for port in ("eth0", "eth1"):
        port_input = _port(reader, port)
        try:
            if port_input is not None:
                port_input.to_payload(port)
                ports[port] = port_input
        except UsageError as exc:  # not dhcp|static, or dhcp with static settings
            found.append(Violation(port, fields.get(port), exc.message))
    actions = _actions(reader, fields, found)

    from agent.aws import validation
    from agent.provision_request import build_request

    # what could be read is checked too, so one pass names every problem of the entry
    request = build_request(name=name, description=description, tags=tags, ports=ports, ntp=ntp, base=base)
    given = {key for key, value in fields.items() if value is not None}
    named = {v.path for v in found}  # a key already refused (a wrong type) is not reported again as missing
    for violation in validation.check("ProvisionDevice", request):
        where = _user_field(violation.path, given, base is not None)
        if where not in named:
            found.append(Violation(where, violation.value, violation.rule))
    if not any(v.path == "name" for v in found):
        from agent.archive.verify import staged_name_violations

        found += staged_name_violations(request.get("Name"), "name")
    name = request.get("Name")
    if not isinstance(name, str) or any(v.path == "name" for v in found):
        name = None
    if found or name is None:
        return name, None, found
    return name, PlanEntry(name, request, actions), found


def _port(reader: "_Fields", port: str):
    from agent.provision_request import PortInput

    mode, ip, mask = reader.text(port), reader.text(f"{port}_ip"), reader.text(f"{port}_mask")
    gateway, dns = reader.text(f"{port}_gateway"), reader.text_list(f"{port}_dns")
    if mode is None and not any((ip, mask, gateway, dns)):
        return None
    return PortInput(mode=mode, ip=ip, mask=mask, gateway=gateway, dns=dns)


def _actions(reader: "_Fields", fields: Mapping[str, Any], found: list[Violation]) -> dict[str, Any]:
    flat = [key for key in ("ota_version", "allow_major", "reboot") if fields.get(key) is not None]
    if fields.get("actions") is not None:
        if flat:
            found.append(Violation("actions", fields["actions"],
                                   f"give either an actions table or {', '.join(flat)}, not both"))
            return {}
        actions = fields["actions"]
        problems = check_actions(actions)
        found.extend(problems)
        if problems:
            return {}
        ota = actions.get("ota") or {}
        return build_actions(ota.get("image_version"), ota.get("allow_major"), actions.get("reboot"))
    version, allow_major, reboot = reader.text("ota_version"), reader.flag("allow_major"), reader.flag("reboot")
    actions = build_actions(version, allow_major, reboot)
    found.extend(check_actions(actions, {"ota": "ota_version", "ota.image_version": "ota_version",
                                         "ota.allow_major": "allow_major", "reboot": "reboot"}))
    return actions


@dataclass
class _Fields:
    """Typed access to one entry's keys; a wrong type becomes a violation, not an exception."""

    fields: Mapping[str, Any]
    found: list[Violation] = field(default_factory=list)

    def _bad(self, key: str, rule: str) -> None:
        self.found.append(Violation(key, self.fields.get(key), rule))

    def text(self, key: str) -> str | None:
        value = self.fields.get(key)
        if value is None or isinstance(value, str):
            return value
        self._bad(key, "must be a string")
        return None

    def text_list(self, key: str) -> list[str]:
        value = self.fields.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [item for item in _LIST_SPLIT.split(value) if item]
        if isinstance(value, list):
            return list(value)  # a non-string item is named by the request's own check
        self._bad(key, 'must be a list of strings, or one string "a;b"')
        return []

    def flag(self, key: str) -> bool | None:
        value = self.fields.get(key)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        self._bad(key, "must be a boolean: true/false, yes/no or 1/0")
        return None

    def table(self, key: str, rule: str) -> dict[str, Any] | None:
        value = self.fields.get(key)
        if value is None or isinstance(value, dict):
            return value
        self._bad(key, rule)
        return None

    def tags(self) -> dict[str, Any]:
        from agent.provision_request import parse_tags

        value = self.fields.get("tags")
        if value is None:
            return {}
        if isinstance(value, dict):
            return dict(value)  # keys and values are checked by the request's own rules
        if isinstance(value, str):
            items = [item.strip() for item in value.split(";") if item.strip()]
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            items = list(value)
        else:
            self._bad("tags", 'must be "k=v;k=v", a table, or a list of "k=v"')
            return {}
        # "k = v" in a cell means k=v: the spaces around "=" are layout, not part of the tag
        items = ["=".join(part.strip() for part in item.split("=", 1)) if "=" in item else item for item in items]
        try:
            return parse_tags(items, flag="tags")
        except UsageError as exc:
            self._bad("tags", exc.message.replace("tags ", "", 1) if exc.message.startswith("tags ") else exc.message)
            return {}


def _surrogates(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Strings (values or keys) holding a lone surrogate: no UTF-8 encoding, no way onto the wire."""
    if isinstance(value, str):
        if any("\ud800" <= char <= "\udfff" for char in value):
            yield path or "(entry)", value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and any("\ud800" <= char <= "\udfff" for char in key):
                yield sub.encode("utf-8", "backslashreplace").decode(), key
            else:
                yield from _surrogates(item, sub)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _surrogates(item, f"{path}[{index}]")


_REQUEST_TO_KEY = [
    ("NetworkingConfiguration.Ntp.NtpServers", "ntp"),
    ("NetworkingConfiguration.Ntp", "ntp"),
    *[(f"NetworkingConfiguration.{eth}.StaticIpConnectionInfo.{member}", f"{port}_{key}")
      for port, eth in (("eth0", "Ethernet0"), ("eth1", "Ethernet1"))
      for member, key in (("IpAddress", "ip"), ("Mask", "mask"), ("DefaultGateway", "gateway"), ("Dns", "dns"))],
    *[(f"NetworkingConfiguration.{eth}", port) for port, eth in (("eth0", "Ethernet0"), ("eth1", "Ethernet1"))],
    ("Name", "name"),
    ("Description", "description"),
    ("Tags", "tags"),
]


def _user_field(path: str, given: Collection[str], has_request: bool) -> str:
    """The plan key a request path came from (``eth0_ip[…]``), or ``request.<path>`` for the raw request."""
    for prefix, key in _REQUEST_TO_KEY:
        if path == prefix or path.startswith((prefix + ".", prefix + "[", prefix + " ")):
            family = key.split("_")[0] if key.startswith("eth") else key
            if not has_request or key in given or any(g == family or g.startswith(family + "_") for g in given):
                rest = path[len(prefix):]
                if rest.startswith(".StaticIpConnectionInfo") or rest.startswith(".ConnectionType"):
                    rest = ""
                return key + rest
            break
    return f"request.{path}" if has_request else path


# ---------------------------------------------------------------- CSV


def _csv_rows(text: str, source: str) -> tuple[list[tuple[int, dict[str, Any]]], list[RowProblem]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[RowProblem] = []
    header: list[str] | None = None
    header_line = 0
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise PlanFileError(source, f"not valid CSV in the row starting here: {exc}", line=start,
                                hint='quote a cell holding "," or a line break, and double a quote inside one') from None
        cells = [cell.strip() for cell in cells]
        if not any(cells):
            continue  # a blank line, or a row of empty cells (spreadsheets write those)
        if header is None:
            header, header_line = [cell.lower() for cell in cells], start
            problems += _csv_header_problems(header, header_line)
            continue
        row: dict[str, Any] = {}
        for index, cell in enumerate(cells):
            if not cell:
                continue  # an empty cell: not given
            column = header[index] if index < len(header) else ""
            if not column:
                problems.append(RowProblem(start, None, Violation(
                    f"column {index + 1}", cell, "a cell in a column without a header name")))
            elif column in FLAT_KEYS and column not in row:
                row[column] = cell
        rows.append((start, row))
    if header is None:
        raise PlanFileError(source, "holds no header row", hint=_SHAPE_HINT["csv"])
    return rows, problems


def _csv_header_problems(header: list[str], line: int) -> list[RowProblem]:
    problems = []
    seen: set[str] = set()
    for index, column in enumerate(header):
        if column and column not in FLAT_KEYS:
            rule = f"unknown column; known: {', '.join(FLAT_KEYS)}"
            if ";" in column and len(header) == 1:
                rule += " (the separator is a comma, not a semicolon)"
            problems.append(RowProblem(line, None, Violation(f"header column {index + 1}", column, rule)))
        elif column in seen:
            problems.append(RowProblem(line, None, Violation(f"header column {index + 1}", column, "column given twice")))
        seen.add(column)
    if "name" not in header:
        problems.append(RowProblem(line, None, Violation("header", None, "the name column is required")))
    return problems


# ---------------------------------------------------------------- TOML


def _toml_rows(text: str, source: str) -> tuple[list[tuple[int | None, Any]], list[RowProblem]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, column = _toml_position(str(exc))
        message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)$", "", str(exc))
        raise PlanFileError(source, f"not valid TOML: {message}", line=line, column=column) from None
    except RecursionError:
        raise PlanFileError(source, "not valid TOML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise PlanFileError(source, f"not valid TOML: {exc}") from None
    unknown = [key for key in data if key != "device"]
    if unknown:
        raise PlanFileError(source, f"unknown top-level key {unknown[0]!r}", hint=_SHAPE_HINT["toml"])
    devices = data.get("device", [])
    if not isinstance(devices, list):
        raise PlanFileError(source, "device must be an array of tables: write [[device]], not [device]",
                            hint=_SHAPE_HINT["toml"])
    lines = _toml_device_lines(text)
    if len(lines) != len(devices):
        lines = [None] * len(devices)  # a layout the scanner does not follow: better no line than a wrong one
    return list(zip(lines, devices)), []


def _toml_position(message: str) -> tuple[int | None, int | None]:
    match = re.search(r"at line (\d+), column (\d+)", message)
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


_DEVICE_HEADER = re.compile(r"""\[\[[ \t]*(?:device|"device"|'device')[ \t]*\]\][ \t]*(?:#.*)?""")
_DEVICE_KEY = re.compile(r"""(?:device|"device"|'device')[ \t]*""")


def _toml_device_lines(text: str) -> list[int]:
    """The line each device entry starts on: ``[[device]]`` headers, or ``{`` items of a root ``device = [...]``.

    A small scanner over text tomllib has already accepted: it follows strings,
    comments and bracket depth, which is all it takes to tell a header from data.
    """
    lines: list[int] = []
    in_string: str | None = None  # '"""' or "'''" while inside a multi-line string
    depth = 0
    at_root = True
    device_value = False
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        i, n = 0, len(line)
        if in_string is None and depth == 0:
            stripped = line.lstrip(" \t")
            if stripped.startswith("["):
                at_root = False
                device_value = False
                if _DEVICE_HEADER.fullmatch(stripped):
                    lines.append(lineno)
                continue
        while i < n:
            if in_string is not None:
                if in_string == '"""' and line[i] == "\\":
                    i += 2
                    continue
                if line.startswith(in_string, i):
                    i += 3
                    for _ in range(2):  # """" or """"": the first quotes are content, the last three close
                        if i < n and line[i] == in_string[0]:
                            i += 1
                    in_string = None
                    continue
                i += 1
                continue
            char = line[i]
            if char == "#":
                break
            if line.startswith('"""', i) or line.startswith("'''", i):
                in_string = line[i:i + 3]
                i += 3
                continue
            if char == '"':
                i += 1
                while i < n and line[i] != '"':
                    i += 2 if line[i] == "\\" else 1
                i += 1
                continue
            if char == "'":
                end = line.find("'", i + 1)
                i = n if end < 0 else end + 1
                continue
            if char == "=" and depth == 0:
                device_value = at_root and bool(_DEVICE_KEY.fullmatch(line[:i].strip(" \t")))
            elif char in "[{":
                depth += 1
                if char == "{" and depth == 2 and device_value:
                    lines.append(lineno)
            elif char in "]}":
                depth = max(depth - 1, 0)
            i += 1
    return lines


# ---------------------------------------------------------------- JSON


_JSON_SPACE = " \t\n\r"


class _JsonScanner:
    """Walks the top of a JSON plan with ``raw_decode`` so each device keeps the offset it starts at."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.duplicates: list[str] = []
        self.decoder = json.JSONDecoder(object_pairs_hook=self._pairs)
        self._newlines = [i for i, char in enumerate(text) if char == "\n"]

    def _pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                self.duplicates.append(key)
            out[key] = value
        return out

    def line(self, offset: int) -> int:
        return bisect.bisect_left(self._newlines, offset) + 1

    def space(self, i: int) -> int:
        while i < len(self.text) and self.text[i] in _JSON_SPACE:
            i += 1
        return i

    def expect(self, i: int, chars: str, what: str) -> str:
        if i >= len(self.text) or self.text[i] not in chars:
            raise json.JSONDecodeError(f"Expecting {what}", self.text, i)
        return self.text[i]

    def value(self, i: int) -> tuple[Any, int]:
        return self.decoder.raw_decode(self.text, i)

    def items(self, i: int) -> tuple[list[tuple[int, Any, list[str]]], int]:
        """The elements of the array at ``i``: (offset, value, duplicate keys inside it)."""
        self.expect(i, "[", "'['")
        out = []
        i = self.space(i + 1)
        if i < len(self.text) and self.text[i] == "]":
            return out, i + 1
        while True:
            self.duplicates = []
            start = i
            value, i = self.value(i)
            out.append((start, value, self.duplicates))
            i = self.space(i)
            if self.expect(i, ",]", "',' delimiter") == "]":
                return out, i + 1
            i = self.space(i + 1)

    def devices(self, source: str) -> list[tuple[int, Any, list[str]]]:
        i = self.space(0)
        head = self.expect(i, "[{", "a list of devices, or an object with \"devices\"")
        if head == "[":
            found, i = self.items(i)
        else:
            found, seen = [], False
            i = self.space(i + 1)
            if not (i < len(self.text) and self.text[i] == "}"):
                while True:
                    self.expect(i, '"', "property name enclosed in double quotes")
                    key_at = i
                    key, i = self.value(i)
                    i = self.space(i)
                    self.expect(i, ":", "':' delimiter")
                    i = self.space(i + 1)
                    if key != "devices":
                        raise PlanFileError(source, f"unknown top-level key {key!r}", line=self.line(key_at),
                                            hint=_SHAPE_HINT["json"])
                    if seen:
                        raise PlanFileError(source, '"devices" given twice', line=self.line(key_at))
                    seen = True
                    if i < len(self.text) and self.text[i] != "[":
                        raise PlanFileError(source, '"devices" must be a list', line=self.line(i),
                                            hint=_SHAPE_HINT["json"])
                    found, i = self.items(i)
                    i = self.space(i)
                    if self.expect(i, ",}", "',' delimiter") == "}":
                        break
                    i = self.space(i + 1)
            i += 1
        i = self.space(i)
        if i < len(self.text):
            raise json.JSONDecodeError("Extra data", self.text, i)
        return found


def _json_rows(text: str, source: str) -> tuple[list[tuple[int | None, Any]], list[RowProblem]]:
    scanner = _JsonScanner(text)
    try:
        found = scanner.devices(source)
    except json.JSONDecodeError as exc:
        raise PlanFileError(source, f"not valid JSON: {exc.msg}", line=exc.lineno, column=exc.colno) from None
    except RecursionError:
        raise PlanFileError(source, "not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise PlanFileError(source, f"not valid JSON: {exc}") from None
    rows: list[tuple[int | None, Any]] = []
    problems: list[RowProblem] = []
    for offset, value, duplicates in found:
        line = scanner.line(offset)
        for key in dict.fromkeys(duplicates):
            name = value.get("name") if isinstance(value, dict) else None
            problems.append(RowProblem(line, name if isinstance(name, str) else None,
                                       Violation(key, value.get(key) if isinstance(value, dict) else None, "key given twice in one object")))
        rows.append((line, value))
    return rows, problems


__all__ = [
    "FORMATS", "FLAT_KEYS", "PlanEntry", "PlanFileError", "PlanValidationError", "RowProblem",
    "build_actions", "check_actions", "describe_actions", "format_of", "parse_plan", "read_plan_file",
]
