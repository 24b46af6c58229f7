"""The verifier's vocabulary: limits, outcomes, problem codes and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from agent.clock import iso
from agent.errors import ExitCode


@dataclass(frozen=True)
class Limits:
    """Refusal thresholds, all decided from the central directory before anything is inflated."""

    max_members: int = 64
    max_member_bytes: int = 1 << 20  # declared uncompressed size of one member
    max_total_bytes: int = 8 << 20  # declared uncompressed total
    max_ratio: float = 200.0  # declared uncompressed / compressed, per member
    ratio_floor_bytes: int = 4096  # members declaring no more than this are not judged by ratio
    max_objects: int = 32  # certificates + private keys parsed from the whole archive

    @property
    def max_file_bytes(self) -> int:
        """The largest file that can hold an archive within these limits (its members stored, plus room
        for headers, names and the comment).  A larger file is refused from its size, never read."""
        payload = min(self.max_total_bytes, self.max_members * self.max_member_bytes)
        return payload + payload // 64 + self.max_members * 1024 + 65536 + 22


class Outcome(Enum):
    """The verdict; ordered by precedence (first wins) in :data:`PRECEDENCE`."""

    OK = "ok"
    EXPIRING = "expiring"
    EXPIRED = "expired"
    CORRUPT = "corrupt"
    UNVERIFIABLE = "unverifiable"

    @property
    def exit_code(self) -> ExitCode:
        return _EXIT[self]


_EXIT = {
    Outcome.OK: ExitCode.OK,
    Outcome.EXPIRING: ExitCode.VERIFY_EXPIRING,
    Outcome.EXPIRED: ExitCode.VERIFY_EXPIRED,
    Outcome.CORRUPT: ExitCode.VERIFY_CORRUPT,
    Outcome.UNVERIFIABLE: ExitCode.VERIFY_UNVERIFIABLE,
}

#: most severe first
PRECEDENCE = (Outcome.CORRUPT, Outcome.UNVERIFIABLE, Outcome.EXPIRED, Outcome.EXPIRING, Outcome.OK)

_C, _U, _X, _W, _OK = Outcome.CORRUPT, Outcome.UNVERIFIABLE, Outcome.EXPIRED, Outcome.EXPIRING, Outcome.OK

#: Every problem code and the outcome it forces.  Codes are part of the interface: never rename.
CODES: dict[str, Outcome] = {
    # structure (decided before inflating anything)
    "too_large": _C,  # the file is larger than any archive within the limits: judged by its size, unread
    "not_zip": _C,  # no ZIP end record anywhere
    "truncated": _C,  # looks like a ZIP but ends early / has trailing bytes
    "malformed": _C,  # inconsistent headers, multi-disk, local header disagrees with the directory
    "too_many_members": _C,
    "zip_bomb": _C,  # declared sizes/ratio over the limits, overlapping members, or inflates past its size
    "encrypted": _C,
    "unsupported_compression": _C,  # anything but stored (0) or deflate (8)
    "unsafe_path": _C,  # absolute, '..', backslash, drive letter, control chars, symlink/special file
    "duplicate_member": _C,  # exact or case-insensitive (FAT) duplicate name
    # content
    "bad_crc": _C,  # CRC mismatch, size mismatch or a damaged deflate stream
    "manifest_invalid": _C,
    "manifest_mismatch": _C,
    "network_json_invalid": _C,
    "network_json_missing": _OK,  # a warning only
    # certificates and keys
    "too_many_objects": _C,
    "bad_certificate": _C,  # a CERTIFICATE PEM block that does not parse
    "no_certificate": _U,
    "no_device_certificate": _U,  # only CA certificates found
    "no_private_key": _C,
    "key_unreadable": _C,  # encrypted or damaged private key
    "key_mismatch": _C,
    "ca_private_key": _C,  # the archive carries a CA's private key
    "chain_broken": _C,
    # time
    "not_yet_valid": _C,  # see verify.py: a clock problem, not an expiry
    "expired": _X,
    "expiring": _W,
    # names
    "bad_file_name": _C,
    "name_mismatch": _C,
}


@dataclass
class Problem:
    """One failed check.  ``code`` is stable (see :data:`CODES`); ``message`` is for people."""

    code: str
    message: str
    member: str | None = None
    hint: str | None = None

    @property
    def outcome(self) -> Outcome:
        return CODES[self.code]

    @property
    def severity(self) -> str:
        return "warning" if self.outcome is Outcome.OK else "error"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "code": self.code,
            "outcome": self.outcome.value,
            "severity": self.severity,
            "message": self.message,
        }
        if self.member is not None:
            data["member"] = self.member
        if self.hint:
            data["hint"] = self.hint
        return data


@dataclass
class MemberInfo:
    """One ZIP entry as the central directory declares it, and whether its data checked out."""

    name: str
    size: int
    compressed_size: int
    crc_ok: bool | None = None  # None: not inflated (refused, encrypted, unsupported, directory)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "compressed_size": self.compressed_size, "crc_ok": self.crc_ok}


@dataclass
class CertificateInfo:
    """What the report says about one certificate (public data only)."""

    member: str
    encoding: str  # "PEM" | "DER" | "PKCS12"
    subject: str
    issuer: str
    serial: str  # hex
    sha256: str  # hex fingerprint of the DER encoding
    not_before: datetime
    not_after: datetime
    seconds_left: float
    is_ca: bool
    self_signed: bool
    key_member: str | None = None
    chained_to_ca: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "encoding": self.encoding,
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "sha256": self.sha256,
            "not_before": iso(self.not_before),
            "not_after": iso(self.not_after),
            "seconds_left": round(self.seconds_left, 3),
            "is_ca": self.is_ca,
            "self_signed": self.self_signed,
            "key_member": self.key_member,
            "chained_to_ca": self.chained_to_ca,
        }


@dataclass
class ArchiveReport:
    """Everything the verifier found.  Holds no key material and no member bytes."""

    outcome: Outcome
    sha256: str | None  # None: judged by its size alone, never read
    size: int
    checked_at: datetime
    members: list[MemberInfo] = field(default_factory=list)
    device_certificate: CertificateInfo | None = None
    ca_certificate: CertificateInfo | None = None
    certificates: list[CertificateInfo] = field(default_factory=list)  # every distinct one found
    key_members: list[str] = field(default_factory=list)  # members holding a private key (names only)
    network: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)
    not_after: datetime | None = None  # earliest end of the device certificate and its CA
    seconds_left: float | None = None
    file_name: str | None = None
    device_name: str | None = None  # as given, else taken from the file name, else from the manifest

    @property
    def exit_code(self) -> ExitCode:
        return self.outcome.exit_code

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    def codes(self) -> list[str]:
        """The problem codes, in the order found."""
        return [p.code for p in self.problems]

    def summary(self) -> str:
        """One line for people."""
        if self.outcome is Outcome.OK:
            left = f", {self.seconds_left:.0f} s left" if self.seconds_left is not None else ""
            return f"archive ok{left}"
        worst = [p for p in self.problems if p.outcome is self.outcome]
        return f"archive {self.outcome.value}: " + "; ".join(p.message for p in worst[:3])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready.  Any string that looks like PEM private-key armour is redacted, whatever its origin."""
        data = {
            "outcome": self.outcome.value,
            "exit_code": int(self.exit_code),
            "exit_name": self.exit_code.name,
            "sha256": self.sha256,
            "size": self.size,
            "checked_at": iso(self.checked_at),
            "file_name": self.file_name,
            "device_name": self.device_name,
            "not_after": iso(self.not_after) if self.not_after else None,
            "seconds_left": round(self.seconds_left, 3) if self.seconds_left is not None else None,
            "members": [m.to_dict() for m in self.members],
            "device_certificate": self.device_certificate.to_dict() if self.device_certificate else None,
            "ca_certificate": self.ca_certificate.to_dict() if self.ca_certificate else None,
            "certificates": [c.to_dict() for c in self.certificates],
            "key_members": list(self.key_members),
            "network": self.network,
            "manifest": self.manifest,
            "problems": [p.to_dict() for p in self.problems],
        }
        redacted: dict[str, Any] = _redact(data)
        return redacted


def decide(problems: list[Problem]) -> Outcome:
    """The most severe outcome any problem forces (OK when none)."""
    found = {p.outcome for p in problems}
    for outcome in PRECEDENCE:
        if outcome in found:
            return outcome
    return Outcome.OK


_REDACTED = "<redacted: private key material>"


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return _REDACTED if "PRIVATE KEY" in value.upper() else value
    if isinstance(value, dict):
        return {_redact(str(k)): _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _redact(str(value))
