"""The keys a plan entry may carry, and the shape each format's file takes."""

from __future__ import annotations

FORMATS = ("csv", "toml", "json")
PORT_KEYS = tuple(f"{port}{suffix}" for port in ("eth0", "eth1") for suffix in ("", "_ip", "_mask", "_gateway", "_dns"))
#: The keys of an entry, in the order of a CSV header.
FLAT_KEYS = ("name", "description", "tags", *PORT_KEYS, "ntp", "ota_version", "allow_major", "reboot")
#: Keys only the structured formats (TOML, JSON) can carry.
STRUCTURED_KEYS = ("request", "actions")
#: What a plan file of each format holds, for the hint of an error about its shape.
SHAPE_HINT = {
    "csv": "a header row (name,eth0,...) and one row per device",
    "toml": "one [[device]] table per device",
    "json": 'a list of objects, one per device (or {"devices": [...]})',
}
