"""Build a ProvisionDevice request from what a person types (flags, plan rows).

The shape of the request is checked later by :mod:`agent.aws.validation`; this
module only assembles it and refuses combinations that make no sense (a static
address given for a DHCP port, a tag without ``=``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import UsageError, Violation

PORTS = {"eth0": "Ethernet0", "eth1": "Ethernet1"}


@dataclass
class PortInput:
    """One Ethernet port as typed: ``dhcp``/``static`` plus the static fields."""

    mode: str | None = None
    ip: str | None = None
    mask: str | None = None
    gateway: str | None = None
    dns: list[str] = field(default_factory=list)

    @property
    def has_static_fields(self) -> bool:
        return any((self.ip, self.mask, self.gateway, self.dns))

    def to_payload(self, port: str) -> dict[str, Any] | None:
        mode = (self.mode or ("static" if self.has_static_fields else "")).lower()
        if not mode:
            return None
        if mode not in ("dhcp", "static"):
            raise UsageError(f"--{port}: {self.mode!r} is not dhcp or static")
        if mode == "dhcp":
            if self.has_static_fields:
                raise UsageError(
                    f"--{port} dhcp was given together with static settings (--{port}-ip/-mask/-gateway/-dns)",
                    hint=f"drop the static settings, or use --{port} static",
                )
            return {"ConnectionType": "DHCP"}
        info: dict[str, Any] = {}
        if self.ip is not None:
            info["IpAddress"] = self.ip
        if self.mask is not None:
            info["Mask"] = self.mask
        if self.gateway is not None:
            info["DefaultGateway"] = self.gateway
        if self.dns:
            info["Dns"] = list(self.dns)
        # A missing member is left out on purpose: validation names each one.
        return {"ConnectionType": "STATIC_IP", "StaticIpConnectionInfo": info}


def parse_tags(items: Iterable[str], *, flag: str = "--tag") -> dict[str, str]:
    """``KEY=VALUE`` strings to a map; a repeated key is an error, not a silent overwrite."""
    tags: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"{flag} {item!r} must be KEY=VALUE", hint="an empty value is written KEY=")
        key, value = item.split("=", 1)
        if key in tags:
            raise UsageError(f"{flag}: key {key!r} given twice")
        tags[key] = value
    return tags


def build_request(
    *,
    name: Any,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    ports: Mapping[str, PortInput] | None = None,
    ntp: Iterable[str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ProvisionDevice request; explicit values override those in ``base`` (--input-json)."""
    request: dict[str, Any] = dict(base or {})
    request["Name"] = name
    if description is not None:
        request["Description"] = description
    # A base member of the wrong type is left as it is: merging into it would crash or
    # silently reshape it, and validation names it with its rule.
    if tags:
        present = request.get("Tags")
        if present is None or isinstance(present, Mapping):
            request["Tags"] = {**(present or {}), **tags}
    present = request.get("NetworkingConfiguration")
    if present is not None and not isinstance(present, Mapping):
        return request
    network: dict[str, Any] = dict(present or {})
    for port, port_input in (ports or {}).items():
        payload = port_input.to_payload(port)
        if payload is None:
            continue
        kept = _static_info(network.get(PORTS[port]))
        if payload["ConnectionType"] == "STATIC_IP" and kept is not None:
            # flags override the file's fields one by one (--eth1-gateway alone keeps its address and mask)
            payload["StaticIpConnectionInfo"] = {**kept, **payload["StaticIpConnectionInfo"]}
        network[PORTS[port]] = payload
    ntp = list(ntp or [])
    if ntp:
        network["Ntp"] = {"NtpServers": ntp}
    if network:
        request["NetworkingConfiguration"] = network
    return request


def _static_info(port: object) -> Mapping[str, Any] | None:
    """A request port's static settings, if it is a well-formed static port (else None: replaced whole)."""
    if not isinstance(port, Mapping) or port.get("ConnectionType") != "STATIC_IP":
        return None
    info = port.get("StaticIpConnectionInfo")
    return info if isinstance(info, Mapping) else None


#: Where each part of a ProvisionDevice request comes from: (request path, input key).  The input key is a
#: plan file's column (``eth0_gateway``) and, spelled as a flag, the option typed (``--eth0-gateway``); the
#: first prefix that matches wins.  Plan files name their columns the same way
#: (:mod:`agent.staging.plan.entry_check`).
REQUEST_TO_INPUT: tuple[tuple[str, str], ...] = (
    ("NetworkingConfiguration.Ntp.NtpServers", "ntp"),
    ("NetworkingConfiguration.Ntp", "ntp"),
    *[
        (f"NetworkingConfiguration.{eth}.StaticIpConnectionInfo.{member}", f"{port}_{key}")
        for port, eth in PORTS.items()
        for member, key in (("IpAddress", "ip"), ("Mask", "mask"), ("DefaultGateway", "gateway"), ("Dns", "dns"))
    ],
    *[(f"NetworkingConfiguration.{eth}", port) for port, eth in PORTS.items()],
    ("Name", "name"),
    ("Description", "description"),
    ("Tags", "tags"),
)
#: Input keys whose flag is not ``--`` + the key with dashes.
_FLAG_OF = {"tags": "--tag"}
#: Option destinations (``provision_options``) whose input key differs.
_KEY_OF_DEST = {f"{port}_mode": port for port in PORTS}


def flag_of(key: str) -> str:
    """The flag a person types for an input key: ``eth1_gateway`` -> ``--eth1-gateway``."""
    return _FLAG_OF.get(key) or "--" + key.replace("_", "-")


def given_inputs(options: Mapping[str, Any]) -> set[str]:
    """The input keys given as flags, from a command's option values (before they are popped)."""
    return {
        _KEY_OF_DEST.get(dest, dest)
        for dest, value in options.items()
        if dest != "input_json" and value is not None and value != () and value != []
    }


def flag_violations(violations: Iterable[Violation], given: Collection[str], *, from_file: bool) -> list[Violation]:
    """``violations`` of a ProvisionDevice request named by the flags they came from.

    A path is renamed to its flag when the value came from a flag: always without ``--input-json``
    (``from_file``), and with it when that flag, or another of its port (``--eth1 static``), was given; a
    value that came from the file keeps its request path, which is what the file spells.  A list index is
    dropped (the value names the item); a member missing from a static port is "required with --ethN static".
    """
    out = []
    for violation in violations:
        path, rule = violation.path, violation.rule
        for prefix, key in REQUEST_TO_INPUT:
            if not (path == prefix or path.startswith((prefix + ".", prefix + "[", prefix + " "))):
                continue
            family = key.split("_")[0] if key.startswith("eth") else key
            if from_file and not any(g == family or g.startswith(family + "_") for g in given):
                break
            rest = path[len(prefix) :]
            if key == "tags" and rest:
                rest = " key" if rest == " key" else " " + rest.lstrip(".")
            else:
                rest = ""
            if family in PORTS and family != key and violation.value is None and rule.startswith("required"):
                rule = f"required with --{family} static"
            path = flag_of(key) + rest
            break
        out.append(Violation(path, violation.value, rule))
    return out


def validate_typed(request: Mapping[str, Any], given: Collection[str], *, from_file: bool) -> None:
    """Check a ProvisionDevice request built from flags; every violation is named by its flag where one was
    typed (:func:`flag_violations`)."""
    from agent.aws import validation
    from agent.errors import InputValidationError

    violations = flag_violations(validation.check("ProvisionDevice", request), given, from_file=from_file)
    if violations:
        raise InputValidationError(violations, subject="ProvisionDevice request")
