"""Build a ProvisionDevice request from what a person types (flags, plan rows).

The shape of the request is checked later by :mod:`agent.aws.validation`; this
module only assembles it and refuses combinations that make no sense (a static
address given for a DHCP port, a tag without ``=``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import UsageError

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
    name: str,
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
        if payload is not None:
            network[PORTS[port]] = payload
    ntp = list(ntp or [])
    if ntp:
        network["Ntp"] = {"NtpServers": ntp}
    if network:
        request["NetworkingConfiguration"] = network
    return request
