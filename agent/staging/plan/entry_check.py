"""One entry's keys, read and checked: its ProvisionDevice request and actions, or every problem it has."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.errors import UsageError, Violation
from agent.staging.plan.actions import build_actions, check_actions
from agent.staging.plan.entries import PlanEntry
from agent.staging.plan.keys import FLAT_KEYS, STRUCTURED_KEYS

if TYPE_CHECKING:
    from agent.provision_request import PortInput

TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")
#: List cells (DNS, NTP) are split on these; no address contains any of them.
_LIST_SPLIT = re.compile(r"[;,\s]+")


def check_entry(fields: object, *, csv_cells: bool) -> tuple[str | None, PlanEntry | None, list[Violation]]:
    """Build and check one entry: (its name if valid, the entry if all is well, every problem)."""
    if not isinstance(fields, Mapping):
        return None, None, [Violation("(entry)", fields, "must be a table/object of the plan keys")]
    allowed = FLAT_KEYS if csv_cells else FLAT_KEYS + STRUCTURED_KEYS
    found = [
        Violation(str(key), fields[key], f"unknown key; known: {', '.join(allowed)}")
        for key in fields
        if key not in allowed
    ]
    found += [
        Violation(path, value, "not valid Unicode text (a lone surrogate)") for path, value in _surrogates(fields)
    ]
    reader = _Fields(fields, found)
    base = reader.table("request", "must be a table: the ProvisionDevice request")
    name = reader.text("name")
    if name is None and base is not None:
        name = base.get("Name")
    description = reader.text("description")
    tags = reader.tags()
    ntp = reader.text_list("ntp")
    ports: dict[str, PortInput] = {}
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
    request = build_request(
        name=name,  # a missing name stays None: the check below names it required
        description=description,
        tags=tags,
        ports=ports,
        ntp=ntp,
        base=base,
    )
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


def _port(reader: _Fields, port: str) -> PortInput | None:
    from agent.provision_request import PortInput

    mode, ip, mask = reader.text(port), reader.text(f"{port}_ip"), reader.text(f"{port}_mask")
    gateway, dns = reader.text(f"{port}_gateway"), reader.text_list(f"{port}_dns")
    if mode is None and not any((ip, mask, gateway, dns)):
        return None
    return PortInput(mode=mode, ip=ip, mask=mask, gateway=gateway, dns=dns)


def _actions(reader: _Fields, fields: Mapping[str, Any], found: list[Violation]) -> dict[str, object]:
    flat = [key for key in ("ota_version", "allow_major", "reboot") if fields.get(key) is not None]
    if fields.get("actions") is not None:
        if flat:
            found.append(
                Violation("actions", fields["actions"], f"give either an actions table or {', '.join(flat)}, not both")
            )
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
    found.extend(
        check_actions(
            actions,
            {
                "ota": "ota_version",
                "ota.image_version": "ota_version",
                "ota.allow_major": "allow_major",
                "reboot": "reboot",
            },
        )
    )
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


def _surrogates(value: object, path: str = "") -> Iterator[tuple[str, object]]:
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
    *[
        (f"NetworkingConfiguration.{eth}.StaticIpConnectionInfo.{member}", f"{port}_{key}")
        for port, eth in (("eth0", "Ethernet0"), ("eth1", "Ethernet1"))
        for member, key in (("IpAddress", "ip"), ("Mask", "mask"), ("DefaultGateway", "gateway"), ("Dns", "dns"))
    ],
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
                rest = path[len(prefix) :]
                if rest.startswith(".StaticIpConnectionInfo") or rest.startswith(".ConnectionType"):
                    rest = ""
                return key + rest
            break
    return f"request.{path}" if has_request else path
