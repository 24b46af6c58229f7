"""Does a blob hold private key material?  Asked of every byte panostage would keep off a stick.

The appliance writes text logs; anything else that turns up where they are (a renamed archive,
a key pasted into a log) must not reach the workstation's disk.  Found by content, anywhere in
the blob:

* PEM armour of any private key (PKCS#1, SEC1, PKCS#8, encrypted PKCS#8, OpenSSH);
* DER private keys (PKCS#8, SEC1 EC, PKCS#1 RSA) that the ``cryptography`` library loads, and
  DER encrypted PKCS#8 (recognised by its PBES1/PBES2 algorithm identifier);
* ZIP members (local headers anywhere in the blob), deflated ones inflated within the archive
  limits and scanned the same way; a member that cannot be inspected (encrypted, an unknown
  method, inflating past the limits) counts as key material - it is not kept.

Stored ZIP members are plain bytes in the blob and are covered by the first two rules.
"""

from __future__ import annotations

import re
import struct
import zlib

from agent.archive.model import Limits

_PEM_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----")
#: Right after a private key's outer SEQUENCE header: PKCS#8 (v0, AlgorithmIdentifier), SEC1 (v1, OCTET
#: STRING), PKCS#1 (v0, INTEGER modulus); PKCS#8 v2 (OneAsymmetricKey) too.
_DER_KEY_STARTS = (b"\x02\x01\x00\x30", b"\x02\x01\x01\x04", b"\x02\x01\x00\x02", b"\x02\x01\x01\x30")
#: PBES2 and the PBES1 / PKCS#12 PBE algorithm arcs: an EncryptedPrivateKeyInfo carries one of them.
_ENCRYPTED_KEY_OIDS = (b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x05\x0d", b"\x06\x0a\x2a\x86\x48\x86\xf7\x0d\x01\x0c\x01")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
MAX_CANDIDATES = 256
MAX_DEPTH = 3


def key_material(data: bytes, limits: Limits = Limits(), *, depth: int = 0) -> str | None:
    """What private key material ``data`` holds (for a message), or None."""
    if _PEM_KEY.search(data):
        return "a PEM private key"
    if any(oid in data for oid in _ENCRYPTED_KEY_OIDS):
        return "an encrypted private key (PKCS#8)"
    if _der_key(data):
        return "a DER private key"
    if depth < MAX_DEPTH and b"PK\x03\x04" in data:
        return _zip_key(data, limits, depth)
    return None


def _der_key(data: bytes) -> bool:
    from cryptography.hazmat.primitives import serialization

    tried = 0
    for marker in _DER_KEY_STARTS:
        pos = data.find(marker)
        while pos >= 0 and tried < MAX_CANDIDATES:
            for start in _sequence_starts(data, pos):
                tried += 1
                try:
                    serialization.load_der_private_key(data[start : start + _der_length(data, start)], password=None)
                    return True
                except TypeError:  # encrypted: a key all the same
                    return True
                except Exception:  # noqa: BLE001 - not a key at this offset
                    continue
            pos = data.find(marker, pos + 1)
    return False


def _sequence_starts(data: bytes, body: int) -> list[int]:
    """Offsets of a SEQUENCE header (short, 0x81 or 0x82 length form) that ends exactly at ``body``."""
    starts = []
    if body >= 2 and data[body - 2] == 0x30 and data[body - 1] < 0x80:
        starts.append(body - 2)
    if body >= 3 and data[body - 3] == 0x30 and data[body - 2] == 0x81:
        starts.append(body - 3)
    if body >= 4 and data[body - 4] == 0x30 and data[body - 3] == 0x82:
        starts.append(body - 4)
    return starts


def _der_length(data: bytes, start: int) -> int:
    first = data[start + 1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    return 2 + count + int.from_bytes(data[start + 2 : start + 2 + count], "big")


def _zip_key(data: bytes, limits: Limits, depth: int) -> str | None:
    pos = data.find(b"PK\x03\x04")
    seen = 0
    while pos >= 0 and seen < limits.max_members:
        seen += 1
        if pos + _LOCAL.size <= len(data):
            _, _, flags, method, _, _, _, csize, _, name_len, extra_len = _LOCAL.unpack_from(data, pos)
            start = pos + _LOCAL.size + name_len + extra_len
            if flags & 0x41:
                return "a ZIP member that is encrypted (it cannot be inspected)"
            if method == 8:
                member = _inflate(data, start, csize if not flags & 0x08 else len(data) - start, limits)
                if member is None:
                    return "a ZIP member that cannot be inflated within the limits (it cannot be inspected)"
                found = key_material(member, limits, depth=depth + 1)
                if found:
                    return f"{found} inside a ZIP"
            elif method != 0:
                return f"a ZIP member compressed with method {method} (it cannot be inspected)"
        pos = data.find(b"PK\x03\x04", pos + 4)
    return None


def _inflate(data: bytes, start: int, size: int, limits: Limits) -> bytes | None:
    """Inflate a raw deflate stream, at most ``max_member_bytes``; None when it is damaged or larger."""
    inflater = zlib.decompressobj(-15)
    try:
        out = inflater.decompress(data[start : start + size], limits.max_member_bytes + 1)
    except zlib.error:
        return None
    return None if len(out) > limits.max_member_bytes else out
