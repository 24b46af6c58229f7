"""The authority's certificate authority: one EC P-256 key and self-signed certificate per
state directory, created once (under a file lock) and kept in memory afterwards."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import ExitCode, PanostageError
from agent.paths import discard, fsync_dir, write_atomic

CA_KEY_FILE = "ca-key.pem"
CA_CERT_FILE = "ca.pem"
LOCK_FILE = "ca.lock"
CA_VALIDITY = timedelta(days=3650)


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the CA issued, with what the authority keeps about it."""

    certificate: x509.Certificate
    pem: bytes
    serial_hex: str
    fingerprint: str  # sha256 of the DER encoding, hex
    not_before: datetime
    not_after: datetime


def fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the certificate's DER encoding, hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS8 PEM, unencrypted."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def whole_seconds(moment: datetime) -> datetime:
    """X.509 times have one-second resolution; drop the rest."""
    return moment.astimezone(UTC).replace(microsecond=0)


class CertificateAuthority:
    """Signs device certificates.  Build with :meth:`load_or_create` (on disk) or :meth:`generate`."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.fingerprint = fingerprint(cert)
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())

    @classmethod
    def generate(cls, now: datetime, label: str = "panostage local authority") -> CertificateAuthority:
        """A new CA in memory (self-signed, valid ten years from ``now``)."""
        key = new_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "panostage"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{label} {secrets.token_hex(4)}"),
            ]
        )
        start = whole_seconds(now) - timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load_or_create(cls, directory: Path, now: datetime | None = None) -> CertificateAuthority:
        """The CA kept in ``directory``; created there first if missing.

        A lock file serialises concurrent starters, so two processes starting together
        end up with one CA.  The pair is used only when both files exist (and match); when
        either is missing, the other is removed and a new pair written: the key (0600),
        then the certificate, each through a fsync'd temporary file renamed into place,
        then the directory fsync'd.  The certificate landing commits the pair, so a crash
        or a failed write never leaves a key beside a certificate that is not its own, and
        no temporary file is left behind.
        """
        key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _io_failed(exc, directory, "create the authority's directory and lock file") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            if key_path.exists() and cert_path.exists():
                return cls._load(key_path, cert_path)
            ca = cls.generate(now or datetime.now(UTC))
            try:
                orphans = [path for path in (cert_path, key_path) if path.exists()]
                for orphan in orphans:  # half a pair is never completed, only replaced
                    orphan.unlink()
                if orphans:
                    fsync_dir(directory)
                write_atomic(key_path, private_key_pem(ca.key))
                write_atomic(cert_path, ca.cert_pem, mode=0o644)
                fsync_dir(directory)
            except OSError as exc:
                discard(key_path)  # without its certificate the key is useless: do not leave it
                raise _io_failed(exc, directory, "write a new CA key and certificate") from exc
            return ca
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    @classmethod
    def _load(cls, key_path: Path, cert_path: Path) -> CertificateAuthority:
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except OSError as exc:
            raise _io_failed(exc, key_path.parent, "read the CA key and certificate") from exc
        except (ValueError, TypeError) as exc:
            raise _damaged(key_path, cert_path, f"cannot be parsed ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise _damaged(key_path, cert_path, f"{key_path.name} is not an EC private key")
        cert_key = cert.public_key()
        if (
            not isinstance(cert_key, ec.EllipticCurvePublicKey)
            or cert_key.public_numbers() != key.public_key().public_numbers()
        ):
            raise _damaged(key_path, cert_path, f"{cert_path.name} does not belong to the key in {key_path.name}")
        return cls(key, cert)

    def issue(
        self, common_name: str, public_key: ec.EllipticCurvePublicKey, not_before: datetime, not_after: datetime
    ) -> IssuedCertificate:
        """A client certificate for ``common_name`` signed by this CA."""
        start, end = whole_seconds(not_before), whole_seconds(not_after)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return IssuedCertificate(
            certificate=cert,
            pem=cert.public_bytes(serialization.Encoding.PEM),
            serial_hex=format(cert.serial_number, "x"),
            fingerprint=fingerprint(cert),
            not_before=start,
            not_after=end,
        )

    def issued(self, cert: x509.Certificate) -> bool:
        """True when ``cert`` names this CA as issuer and carries its valid signature."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs); a device signs (its claim, TLS client auth)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _io_failed(exc: OSError, directory: Path, step: str) -> PanostageError:
    name = errno.errorcode.get(exc.errno or 0, "error")
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return PanostageError(
        f"local authority: cannot {step} in {directory}: {exc.strerror or exc} [{name}]"
        + (f" ({exc.filename})" if exc.filename else ""),
        exit_code=ExitCode.IO,
        reason="ca-io",
        hint=(
            f"free space on the filesystem holding {directory}"
            if full
            else f"check the filesystem holding {directory} (read-only? permissions? dmesg)"
        )
        + ", then start again",
        details={"directory": str(directory), "step": step, "errno": name},
    )


def _damaged(key_path: Path, cert_path: Path, problem: str) -> PanostageError:
    return PanostageError(
        f"local authority: the CA in {key_path.parent} is damaged: {problem}",
        exit_code=ExitCode.VERIFY_CORRUPT,
        reason="ca-damaged",
        hint=f"restore {key_path.name} and {cert_path.name} from a backup, or move both aside to have a new CA "
        "created (certificates issued by the old one will no longer verify)",
        details={"key": str(key_path), "certificate": str(cert_path)},
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
