"""Configuration archives for tests: real EC P-256 certificates made at run time, and a small ZIP
writer that can be told to lie (sizes, CRCs, flags, modes, ZIP64 fields).

No key material is ever written to a file: keys and their PEM text exist only in memory.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.clock import iso

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DEVICE = "cam-01"
LIFETIME = timedelta(minutes=5)
NETWORK = {"Ethernet0": {"ConnectionType": "DHCP"}, "Ntp": {"NtpServers": ["pool.ntp.org"]}}

# ---------------------------------------------------------------- keys and certificates


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "panostage tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(key: ec.EllipticCurvePrivateKey, common_name: str = "test CA", now: datetime = NOW) -> x509.Certificate:
    name = _name(common_name)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_device_cert(
    public_key: ec.EllipticCurvePublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    not_before: datetime,
    not_after: datetime,
    common_name: str = "device-0123",
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )


@functools.cache
def _keys(label: str) -> ec.EllipticCurvePrivateKey:
    """One key per label for the whole run (key generation is the slow part)."""
    return new_key()


@dataclass
class Pki:
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    device_key: ec.EllipticCurvePrivateKey
    device_cert: x509.Certificate

    @classmethod
    def make(
        cls,
        *,
        issued: datetime = NOW,
        lifetime: timedelta = LIFETIME,
        ca_label: str = "ca",
        device_label: str = "device",
    ) -> Pki:
        """A CA and a device certificate valid from ``issued`` for ``lifetime`` (whole seconds)."""
        ca_key, device_key = _keys(ca_label), _keys(device_label)
        ca_cert = _ca_cert(ca_label)
        start = issued.replace(microsecond=0)
        return cls(
            ca_key,
            ca_cert,
            device_key,
            make_device_cert(device_key.public_key(), ca_key, ca_cert, start, start + lifetime),
        )


@functools.cache
def _ca_cert(label: str) -> x509.Certificate:
    return make_ca(_keys(label), f"test CA {label}")


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def key_pem(key: ec.EllipticCurvePrivateKey, fmt: str = "pkcs8", password: bytes | None = None) -> bytes:
    form = {"pkcs8": serialization.PrivateFormat.PKCS8, "traditional": serialization.PrivateFormat.TraditionalOpenSSL}[
        fmt
    ]
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, form, enc)


def key_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# ---------------------------------------------------------------- a ZIP writer that can lie


@dataclass
class Member:
    """One entry.  ``None`` overrides mean: the truth."""

    name: str | bytes
    data: bytes = b""
    method: int = 8
    flags: int = 0
    mode: int = 0o100644
    made_by: int = (3 << 8) | 20  # Unix, spec 2.0
    raw: bytes | None = None  # compressed bytes to write instead of compressing ``data``
    crc: int | None = None  # declared CRC-32
    size: int | None = None  # declared uncompressed size
    csize: int | None = None  # declared compressed size
    offset_fixup: int = 0  # added to the central directory's local-header offset

    @property
    def raw_name(self) -> bytes:
        return self.name if isinstance(self.name, bytes) else self.name.encode()


def deflate(data: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    return comp.compress(data) + comp.flush()


def write_zip(members: list[Member], *, zip64: bool = False, comment: bytes = b"") -> bytes:
    """ZIP bytes: local headers and data, central directory, (ZIP64 records,) end record."""
    out, central = bytearray(), bytearray()
    dos_time = (NOW.hour << 11) | (NOW.minute << 5) | (NOW.second // 2)
    dos_date = ((NOW.year - 1980) << 9) | (NOW.month << 5) | NOW.day
    for m in members:
        raw = m.raw if m.raw is not None else (deflate(m.data) if m.method == 8 else m.data)
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        size = len(m.data) if m.size is None else m.size
        csize = len(raw) if m.csize is None else m.csize
        name = m.raw_name
        offset = len(out)
        out += struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 20, m.flags, m.method, dos_time, dos_date, crc, csize, size, len(name), 0
        )
        out += name + raw
        extra = b""
        c_size, c_csize, c_offset = size, csize, offset + m.offset_fixup
        if zip64:
            extra = struct.pack("<HHQQQ", 1, 24, c_size, c_csize, c_offset)
            c_size = c_csize = c_offset = 0xFFFFFFFF
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            m.made_by,
            20,
            m.flags,
            m.method,
            dos_time,
            dos_date,
            crc,
            c_csize,
            c_size,
            len(name),
            len(extra),
            0,
            0,
            0,
            (m.mode << 16) & 0xFFFFFFFF,
            c_offset,
        )
        central += name + extra
    cd_offset, count = len(out), len(members)
    out += central
    if zip64:
        z64_at = len(out)
        out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(central), cd_offset)
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, z64_at, 1)
        out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, len(comment))
    else:
        out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(central), cd_offset, len(comment))
    return bytes(out + comment)


def member_data_offset(archive: bytes, name: str) -> int:
    """Where ``name``'s compressed data starts (found with the standard library, as a cross-check)."""
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(name)
    _, _, _, _, _, _, _, _, _, nlen, xlen = struct.unpack_from("<4sHHHHHIIIHH", archive, info.header_offset)
    return info.header_offset + 30 + nlen + xlen


# ---------------------------------------------------------------- archives like the authority's


def network_bytes(network: object = None) -> bytes:
    return json.dumps(NETWORK if network is None else network, indent=2, sort_keys=True).encode() + b"\n"


def manifest_member(
    members: list[Member], *, device_name: str = DEVICE, not_after: datetime | None = None, form: str = "map"
) -> Member:
    """manifest.json over ``members``: ``form`` "map" ({name: sha256}) or "list" ([{name, size, sha256}])."""
    digests = {m.raw_name.decode(): hashlib.sha256(m.data).hexdigest() for m in members}
    listed: object = (
        digests
        if form == "map"
        else [
            {"name": m.raw_name.decode(), "size": len(m.data), "sha256": digests[m.raw_name.decode()]} for m in members
        ]
    )
    doc = {
        "device_id": "device-0123",
        "device_name": device_name,
        "iot_thing_name": f"thing-{device_name}",
        "created": iso(NOW),
        "not_after": iso(not_after or NOW + LIFETIME),
        "members": listed,
    }
    return Member("manifest.json", json.dumps(doc, indent=2).encode() + b"\n")


def standard_members(
    pki: Pki | None = None, *, device_name: str = DEVICE, manifest: bool = True, form: str = "map"
) -> list[Member]:
    """Device certificate, PKCS8 key, CA certificate, network.json (and manifest.json)."""
    pki = pki or Pki.make()
    members = [
        Member("certificate.pem.crt", cert_pem(pki.device_cert)),
        Member("private.pem.key", key_pem(pki.device_key), mode=0o100600),
        Member("root-ca.pem", cert_pem(pki.ca_cert)),
        Member("network.json", network_bytes()),
    ]
    if manifest:
        members.append(
            manifest_member(members, device_name=device_name, not_after=pki.device_cert.not_valid_after_utc, form=form)
        )
    return members


def build(pki: Pki | None = None, **kwargs: object) -> bytes:
    return write_zip(standard_members(pki, **kwargs))  # type: ignore[arg-type]


def with_manifest(members: list[Member], **kwargs: object) -> list[Member]:
    """``members`` plus a manifest that lists them all (so only the intended defect shows)."""
    return members + [manifest_member(members, **kwargs)]  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4)
def zeros_stream(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``size`` zero bytes and its CRC, built in 1 MiB chunks."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts, crc, left = [], 0, size
    while left:
        piece = chunk[: min(left, len(chunk))]
        parts.append(comp.compress(piece))
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    parts.append(comp.flush())
    return b"".join(parts), crc
