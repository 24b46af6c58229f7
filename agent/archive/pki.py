"""Certificates and private keys found by content (PEM or DER), never by member name.

Private keys are loaded only to derive their public key; nothing but the public key and the
member name leaves this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from agent.archive.model import CertificateInfo, Problem

if TYPE_CHECKING:  # at run time cryptography is imported only inside the functions that need it
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
    from cryptography.x509 import Certificate

_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----")
_END = re.compile(rb"-----END ([A-Z0-9 ]{1,64})-----")
_CERT_LABELS = (b"CERTIFICATE", b"X509 CERTIFICATE")
_WHITESPACE = b" \t\r\n\v\f"


@dataclass
class FoundCert:
    member: str
    encoding: str
    cert: Certificate
    der: bytes
    spki: bytes  # DER SubjectPublicKeyInfo


@dataclass
class FoundKey:
    member: str
    encoding: str
    spki: bytes  # the public half only


@dataclass
class Found:
    certs: list[FoundCert] = field(default_factory=list)
    keys: list[FoundKey] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    objects: int = 0  # certificates + keys seen (limit)


def scan_member(name: str, content: bytes, found: Found, max_objects: int) -> None:
    """Add the certificates and keys in ``content`` to ``found``."""
    if b"-----BEGIN " in content:
        _scan_pem(name, content, found, max_objects)
    elif _whole_der_sequence(content):
        _scan_der(name, content, found, max_objects)


def _over_limit(found: Found, name: str, max_objects: int) -> bool:
    found.objects += 1
    if found.objects == max_objects + 1:
        found.problems.append(
            Problem("too_many_objects", f"more than {max_objects} certificates and keys", member=name)
        )
    return found.objects > max_objects


def _scan_pem(name: str, content: bytes, found: Found, max_objects: int) -> None:
    """Every PEM block, in linear time: the next END marker is looked up only once per END."""
    pos, end_at = 0, -1
    reported: set[str] = set()

    def bad(code: str, message: str) -> None:
        if code not in reported:  # once per member: a member of broken blocks is one problem
            reported.add(code)
            found.problems.append(Problem(code, message, member=name))

    while (begin := _BEGIN.search(content, pos)) is not None:
        label = begin.group(1)
        is_cert, is_key = label in _CERT_LABELS, label.endswith(b"PRIVATE KEY")
        if end_at < begin.end():
            end_at = content.find(b"-----END ", begin.end())
        end = _END.match(content, end_at) if end_at >= 0 else None
        if end is None or end.group(1) != label:
            if is_cert:
                bad("bad_certificate", "unterminated CERTIFICATE PEM block")
            elif is_key:
                bad("key_unreadable", "unterminated private key PEM block")
            if end_at < 0:
                return
            pos = begin.end()
            continue
        pos = end.end()
        if not (is_cert or is_key):
            continue
        if _over_limit(found, name, max_objects):
            return
        if is_cert:
            body = content[begin.end() : end_at].translate(None, _WHITESPACE)
            try:
                der = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError):
                bad("bad_certificate", "CERTIFICATE PEM block is not valid base64")
                continue
            if not _add_cert(name, "PEM", der, found):
                bad("bad_certificate", "CERTIFICATE PEM block does not parse")
        else:
            _add_pem_key(name, content[begin.start() : end.end()], found)


def _scan_der(name: str, content: bytes, found: Found, max_objects: int) -> None:
    if _over_limit(found, name, max_objects):
        return
    if _add_cert(name, "DER", content, found):
        return
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_der_private_key(content, password=None)
    except TypeError:
        found.problems.append(Problem("key_unreadable", "private key is encrypted", member=name))
        return
    except Exception:  # noqa: BLE001 - not a key: perhaps PKCS#12, perhaps anything
        key = None
    if key is not None:
        _add_key(name, "DER", key, found)
        return
    _scan_pkcs12(name, content, found)


def _scan_pkcs12(name: str, content: bytes, found: Found) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        key, cert, extra = pkcs12.load_key_and_certificates(content, None)
    except Exception:  # noqa: BLE001 - not PKCS#12 (or a protected one): not ours to judge
        return
    for c in ([cert] if cert is not None else []) + list(extra):
        _add_cert(name, "PKCS12", c.public_bytes(serialization.Encoding.DER), found)
    if key is not None:
        _add_key(name, "PKCS12", key, found)


def _add_pem_key(name: str, block: bytes, found: Found) -> None:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(block, password=None)
    except TypeError:
        found.problems.append(Problem("key_unreadable", "private key is encrypted", member=name))
        return
    except Exception:  # noqa: BLE001 - cryptography raises several kinds for damaged input
        found.problems.append(Problem("key_unreadable", "private key PEM block does not parse", member=name))
        return
    _add_key(name, "PEM", key, found)


def _add_key(name: str, encoding: str, key: PrivateKeyTypes, found: Found) -> None:
    from cryptography.hazmat.primitives import serialization

    try:
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except Exception:  # noqa: BLE001 - a key type without a usable public half
        found.problems.append(Problem("key_unreadable", "private key of an unsupported type", member=name))
        return
    found.keys.append(FoundKey(name, encoding, spki))


def _add_cert(name: str, encoding: str, der: bytes, found: Found) -> bool:
    """Load ``der``; False when it is not a certificate.  Duplicates (same DER) are kept once."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_der_x509_certificate(der)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except Exception:  # noqa: BLE001
        return False
    if all(c.der != der for c in found.certs):
        found.certs.append(FoundCert(name, encoding, cert, der, spki))
    return True


def _whole_der_sequence(data: bytes) -> bool:
    """True when ``data`` is exactly one DER SEQUENCE (definite length)."""
    if len(data) < 2 or data[0] != 0x30:
        return False
    first = data[1]
    if first < 0x80:
        return 2 + first == len(data)
    count = first & 0x7F
    if count == 0 or count > 4 or len(data) < 2 + count:
        return False
    return 2 + count + int.from_bytes(data[2 : 2 + count], "big") == len(data)


# ---------------------------------------------------------------- facts about one certificate


def describe(found: FoundCert, now: datetime) -> CertificateInfo | None:
    """Public facts about a certificate; None when its fields do not parse."""
    from cryptography import x509

    cert = found.cert
    try:
        try:
            is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        except x509.ExtensionNotFound:
            is_ca = False
        subject, issuer = cert.subject, cert.issuer
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        return CertificateInfo(
            member=found.member,
            encoding=found.encoding,
            subject=subject.rfc4514_string(),
            issuer=issuer.rfc4514_string(),
            serial=format(cert.serial_number, "x"),
            sha256=hashlib.sha256(found.der).hexdigest(),
            not_before=not_before,
            not_after=not_after,
            seconds_left=(not_after - now).total_seconds(),
            is_ca=is_ca,
            self_signed=subject == issuer and issued_by(found, found),
        )
    except Exception:  # noqa: BLE001 - malformed extensions or names surface lazily
        return None


def issued_by(child: FoundCert, parent: FoundCert) -> bool:
    """``parent`` names and signed ``child``."""
    try:
        child.cert.verify_directly_issued_by(parent.cert)
    except Exception:  # noqa: BLE001 - ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm
        return False
    return True
