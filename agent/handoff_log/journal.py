"""A copy of each hand-off record for journald, sent best effort as structured ``PANOSTAGE_*`` fields.

The log file is the record of truth; a journal that cannot be reached loses only its copy.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any


class Journal:
    """Sends records to journald over its native socket, as structured fields."""

    def __init__(self, socket_path: str = "/run/systemd/journal/socket", identifier: str = "panostage") -> None:
        self.socket_path = socket_path
        self.identifier = identifier

    @staticmethod
    def under_systemd() -> bool:
        return bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))

    def fields(self, record: dict[str, Any]) -> dict[str, str]:
        out = {
            "MESSAGE": _journal_message(record),
            "PRIORITY": "3" if record.get("outcome") == "failed" else "6",
            "SYSLOG_IDENTIFIER": self.identifier,
        }
        for key, value in _flatten(record):
            out["PANOSTAGE_" + key.upper()] = value if isinstance(value, str) else json.dumps(value)
        return out

    def send(self, record: dict[str, Any]) -> None:
        """Best effort: the file is the record of truth; the journal is a copy."""
        payload = b""
        for key, value in self.fields(record).items():
            data = value.encode()
            if b"\n" in data:
                payload += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
            else:
                payload += key.encode() + b"=" + data + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self.socket_path)
        except OSError:
            pass


def _flatten(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in record.items():
        name = f"{prefix}{key}".replace("-", "_")
        if isinstance(value, dict):
            yield from _flatten(value, name + "_")
        elif value is not None:
            yield name, value


def _journal_message(record: dict[str, Any]) -> str:
    device = record.get("device") or {}
    who = device.get("name") or device.get("id") or ""
    return f"{record.get('kind')} {who} {record.get('outcome', '')}".strip()
