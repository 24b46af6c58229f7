"""The appliance, simulated: it reads the stick as the appliance does and registers.

It looks at the ROOT of the FAT stick for exactly one ``certificates-omni_*.zip``,
checks it, claims its device at the authority with the archive's certificate and
key (proof of possession), and writes its provisioning logs back to the stick
under ``/panorama/`` — as the real appliance does (FACTS: occ.log, ota_agent.log,
syslog.log, kern.log).  Logs never contain key material.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agent.archive import CertificateInfo, Outcome, verify_archive
from agent.clock import Clock, iso
from agent.stick import LOG_DIR, StickTarget, archives

PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.+?\r?\n-----END \1-----", re.DOTALL)


@dataclass
class ApplianceRun:
    """What the appliance did with the stick."""

    outcome: str  # "provisioned" | "failed"
    reason: str
    archive: str | None = None
    device_id: str | None = None
    certificate_serial: str | None = None
    logs: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "archive": self.archive,
            "device_id": self.device_id,
            "certificate_serial": self.certificate_serial,
            "logs": self.logs,
        }


def _member_bytes(data: bytes, member: str) -> bytes | None:
    """One member's content, read with the verifier's defensive ZIP reader."""
    from agent.archive import Limits
    from agent.archive.zipscan import inflate, read_directory

    directory = read_directory(data, Limits())
    for entry in directory.entries:
        if entry.name == member:
            content, problem = inflate(data, entry)
            return None if problem else content
    return None


def _pem(content: bytes | None, kind: str) -> bytes | None:
    """The first PEM block of ``kind`` ("CERTIFICATE" or a "... PRIVATE KEY"), or a DER object converted."""
    if not content:
        return None
    for match in PEM_RE.finditer(content):
        if (kind == "CERTIFICATE" and match.group(1) == b"CERTIFICATE") or (
            kind == "KEY" and match.group(1).endswith(b"PRIVATE KEY")
        ):
            return match.group(0)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        if kind == "CERTIFICATE":
            return x509.load_der_x509_certificate(content).public_bytes(serialization.Encoding.PEM)
        key = serialization.load_der_private_key(content, password=None)
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    except ValueError:
        return None


class Appliance:
    """One simulated appliance, registering against ``endpoint_url``."""

    def __init__(self, endpoint_url: str, clock: Clock, *, serial_number: str = "100000000001") -> None:
        self.endpoint_url = endpoint_url
        self.clock = clock
        self.serial_number = serial_number

    def consume(self, target: StickTarget) -> ApplianceRun:
        run = self._register(target)
        self._write_logs(target, run)
        return run

    def _log(self, run: ApplianceRun, message: str) -> None:
        run.lines.append(f"{iso(self.clock.now())} occ: {message}")

    def _register(self, target: StickTarget) -> ApplianceRun:
        run = ApplianceRun(outcome="failed", reason="")
        found = [e for e in archives(target) if e.kind == "file"]
        self._log(run, f"usb drive found; {len(found)} configuration archive(s) at the root")
        if len(found) != 1:
            run.reason = (
                "no configuration archive on the drive"
                if not found
                else f"{len(found)} archives on the drive; expected one"
            )
            self._log(run, run.reason)
            return run
        run.archive = found[0].name
        data = target.read(run.archive, bypass_cache=True)
        report = verify_archive(data, now=self.clock.now(), skew_seconds=0, margin_seconds=0, file_name=run.archive)
        cert_info = report.device_certificate
        run.certificate_serial = cert_info.serial if cert_info else None
        run.device_id = (report.manifest or {}).get("device_id")
        self._log(run, f"copied {run.archive} ({report.size} bytes, sha256 {report.sha256})")
        if report.network is not None:
            self._log(run, "network configuration: " + (", ".join(sorted(report.network)) or "defaults"))
        if report.outcome in (Outcome.CORRUPT, Outcome.UNVERIFIABLE) or cert_info is None or not run.device_id:
            run.reason = "archive unusable: " + (
                report.summary() if report.outcome is not Outcome.OK else "no device id"
            )
            self._log(run, run.reason)
            return run
        return self._claim(run, cert_info, run.device_id, data)

    def _claim(self, run: ApplianceRun, cert: CertificateInfo, device_id: str, data: bytes) -> ApplianceRun:
        from agent.authority.claim import ClaimRejected, build_claim, post_claim

        cert_pem = _pem(_member_bytes(data, cert.member), "CERTIFICATE")
        key_pem = _pem(_member_bytes(data, cert.key_member), "KEY") if cert.key_member else None
        if not cert_pem or not key_pem:
            run.reason = "archive unusable: certificate or key unreadable"
            self._log(run, run.reason)
            return run
        self._log(
            run,
            f"registering {device_id} with certificate serial {cert.serial} (valid until {iso(cert.not_after)})",
        )
        try:
            post_claim(
                self.endpoint_url,
                build_claim(device_id, cert_pem, key_pem, self.clock.now(), serial_number=self.serial_number),
            )
        except ClaimRejected as exc:
            run.reason = f"registration refused: {exc.message}"
            self._log(run, run.reason)
            return run
        except OSError as exc:
            run.reason = f"cannot reach the provisioning service: {exc}"
            self._log(run, run.reason)
            return run
        run.outcome, run.reason = "provisioned", "registered"
        self._log(run, "registration succeeded; device online")
        return run

    def _write_logs(self, target: StickTarget, run: ApplianceRun) -> None:
        stamp = iso(self.clock.now())
        logs = {
            "occ.log": "\n".join(run.lines) + "\n",
            "ota_agent.log": f"{stamp} ota_agent: started\n{stamp} ota_agent: provisioning {run.outcome}\n",
            "syslog.log": f"{stamp} panorama-sim systemd[1]: Started provisioning from USB.\n"
            f"{stamp} panorama-sim occ[101]: {run.outcome}: {run.reason}\n",
            "kern.log": f"{stamp} panorama-sim kernel: usb 2-1: new SuperSpeed USB device\n"
            f"{stamp} panorama-sim kernel: sd 0:0:0:0: [sda] Attached SCSI removable disk\n",
        }
        for name, text in logs.items():
            target.write(f"{LOG_DIR}/{name}", text.encode())
            run.logs.append(f"/{LOG_DIR}/{name}")
