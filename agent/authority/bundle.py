"""The configuration archive ProvisionDevice returns, and its deliberately broken variants.

A ZIP (deflated) holding the device certificate, its private key, the CA certificate,
``network.json`` and ``manifest.json``.  Only ``network.json`` is a documented name;
consumers are expected to find certificates by content.  The archive is built in memory
and never kept.  A small ZIP writer of our own (checked against :mod:`zipfile` in the
tests) makes the malformed kinds easy to produce exactly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.clock import iso

CERT_MEMBER = "certificate.pem.crt"
KEY_MEMBER = "private.pem.key"
CA_MEMBER = "root-ca.pem"
NETWORK_MEMBER = "network.json"
MANIFEST_MEMBER = "manifest.json"

#: archive defects the authority can be told to produce (fault ``archive=<kind>``)
ZIP_DEFECTS = ("not_zip", "bad_crc", "path_traversal", "zip_bomb", "no_certificate", "duplicate_member")
CERT_DEFECTS = ("expired_cert", "key_mismatch", "wrong_ca")
DEFECTS = ZIP_DEFECTS + CERT_DEFECTS

BOMB_MEMBER = "padding.bin"
BOMB_SIZE = 128 * 1024 * 1024  # inflates beyond 100 MiB
NOT_ZIP = b"panostage: injected fault: this is not a ZIP archive\n" * 8


@dataclass(frozen=True)
class ArchiveContent:
    """What goes into one archive."""

    device_id: str
    device_name: str
    thing_name: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    network: dict[str, Any]
    created: datetime
    not_after: datetime


@dataclass
class _Member:
    name: str
    data: bytes | None  # None: precompressed (``raw`` holds the deflate stream)
    mode: int = 0o644
    raw: bytes = b""
    size: int = 0
    crc: int = 0
    crc_xor: int = 0  # non-zero: write a wrong CRC (bad_crc)


def build_archive(content: ArchiveContent, defect: str | None = None) -> bytes:
    """The archive bytes for ``content``; ``defect`` names a ZIP-level malformation."""
    if defect == "not_zip":
        return NOT_ZIP
    network = json.dumps(content.network, sort_keys=True).encode() + b"\n"
    members = [
        _Member(CERT_MEMBER, content.cert_pem),
        _Member(KEY_MEMBER, content.key_pem, mode=0o600),
        _Member(CA_MEMBER, content.ca_pem),
        _Member(NETWORK_MEMBER, network),
    ]
    if defect == "no_certificate":
        members = [m for m in members if m.name not in (CERT_MEMBER, CA_MEMBER)]
    elif defect == "bad_crc":
        members[3].crc_xor = 0xFFFFFFFF
    elif defect == "path_traversal":
        members.append(_Member("../" + NETWORK_MEMBER, network))
    elif defect == "duplicate_member":
        members.append(_Member(NETWORK_MEMBER, b'{"Ethernet0": {"ConnectionType": "DHCP"}}\n'))
    elif defect == "zip_bomb":
        raw, crc = _bomb_stream()
        members.append(_Member(BOMB_MEMBER, None, raw=raw, size=BOMB_SIZE, crc=crc))
    elif defect is not None and defect not in CERT_DEFECTS:
        raise ValueError(f"unknown archive defect {defect!r}; known: {', '.join(DEFECTS)}")
    manifest = {
        "format": 1,
        "device_id": content.device_id,
        "device_name": content.device_name,
        "iot_thing_name": content.thing_name,
        "created": iso(content.created),
        "not_after": iso(content.not_after),
        "members": [
            {
                "name": m.name,
                "size": m.size if m.data is None else len(m.data),
                "sha256": _bomb_sha256() if m.data is None else hashlib.sha256(m.data).hexdigest(),
            }
            for m in members
        ],
    }
    members.append(_Member(MANIFEST_MEMBER, json.dumps(manifest).encode() + b"\n"))
    return _write_zip(members, content.created)


# ---------------------------------------------------------------- a minimal ZIP writer


def _dos_time(moment: datetime) -> tuple[int, int]:
    year = max(moment.year, 1980)
    return (
        (moment.hour << 11) | (moment.minute << 5) | (moment.second // 2),
        ((year - 1980) << 9) | (moment.month << 5) | moment.day,
    )


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data, 6, wbits=-15)  # raw deflate, as ZIP stores it


def _write_zip(members: list[_Member], when: datetime) -> bytes:
    """ZIP bytes: local headers and deflated data, central directory, end record."""
    dos_time, dos_date = _dos_time(when)
    out = bytearray()
    central = bytearray()
    for m in members:
        if m.data is not None:
            m.raw, m.size, m.crc = _deflate(m.data), len(m.data), zlib.crc32(m.data)
        name = m.name.encode()
        crc = m.crc ^ m.crc_xor
        offset = len(out)
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0x0800, 8, dos_time, dos_date, crc, len(m.raw), m.size, len(name), 0
        )
        out += name + m.raw
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            (3 << 8) | 20,
            20,
            0x0800,
            8,
            dos_time,
            dos_date,
            crc,
            len(m.raw),
            m.size,
            len(name),
            0,
            0,
            0,
            0,
            (0o100000 | m.mode) << 16,
            offset,
        )
        central += name
    start = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), start, 0)
    return bytes(out)


@functools.lru_cache(maxsize=1)
def _bomb_stream() -> tuple[bytes, int]:
    """The deflate stream of BOMB_SIZE zero bytes and their CRC (computed once)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1024 * 1024)
    parts, crc = [], 0
    for _ in range(BOMB_SIZE // len(chunk)):
        parts.append(comp.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    parts.append(comp.flush())
    return b"".join(parts), crc


@functools.lru_cache(maxsize=1)
def _bomb_sha256() -> str:
    digest = hashlib.sha256()
    chunk = bytes(1024 * 1024)
    for _ in range(BOMB_SIZE // len(chunk)):
        digest.update(chunk)
    return digest.hexdigest()
