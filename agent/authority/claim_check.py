"""The authority's side of the appliance's claim (``POST /_local/claim``, not an AWS API): read
the claim, verify its signature, timestamp and certificate, and record the device SUCCEEDED
or FAILED.  The appliance's side is :mod:`agent.authority.claim`."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.authority.apierror import ApiError, access_denied, cannot_parse, conflict, invalid_request, validation_error
from agent.authority.ca import fingerprint
from agent.authority.operation_base import OperationGroup, Response
from agent.clock import iso
from agent.errors import Violation

CLAIM_MAX_AGE = 300.0
CLAIM_PREFIX = "panostage-claim"


def claim_message(device_id: str, timestamp: int) -> bytes:
    """The bytes a claim signs: ``panostage-claim:{DeviceId}:{Timestamp}``."""
    return f"{CLAIM_PREFIX}:{device_id}:{timestamp}".encode()


class ApplianceClaims(OperationGroup):
    """Claims of provisioned devices by the appliances that hold their archives."""

    def claim(self, body: dict[str, Any]) -> Response:
        """Register a device with the certificate from its archive (``POST /_local/claim``)."""
        device_id, cert, timestamp, signature, serial_number = _parse_claim(body)
        row, _, state = self.live_device(device_id)
        if state.provisioning != "AWAITING_PROVISIONING":
            raise conflict(
                "device",
                device_id,
                f"device {device_id} is {state.provisioning}; a device is claimed once "
                "(delete it and provision a new one to start over)",
            )
        now = self.clock.now()
        if abs(now.timestamp() - timestamp) > CLAIM_MAX_AGE:
            raise access_denied(
                f"claim timestamp {timestamp} is more than {int(CLAIM_MAX_AGE)} s from the authority's time "
                f"{int(now.timestamp())} (stale or replayed claim)"
            )
        public_key = cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise access_denied("the claim certificate does not carry an EC public key")
        try:
            public_key.verify(signature, claim_message(device_id, body["Timestamp"]), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise access_denied(
                "claim signature does not verify with the certificate's public key "
                "(is the private key the one that belongs to the certificate?)"
            ) from None
        reason = None
        if not self.ca.issued(cert):
            reason = "the certificate was not issued by this authority's CA"
        elif format(cert.serial_number, "x") != row["cert_serial"] or fingerprint(cert) != row["cert_fingerprint"]:
            reason = f"the certificate (serial {cert.serial_number:x}) was not issued to device {device_id}"
        elif now >= cert.not_valid_after_utc:
            reason = f"the certificate expired at {iso(cert.not_valid_after_utc)}"
        elif now < cert.not_valid_before_utc:
            reason = f"the certificate is not valid before {iso(cert.not_valid_before_utc)}"
        status = "FAILED" if reason else "SUCCEEDED"
        if not self.store.record_claim(device_id, status, now.timestamp(), reason, serial_number):
            raise conflict("device", device_id, f"device {device_id} was claimed or deleted meanwhile")
        if reason:
            raise ApiError(
                403,
                "AccessDeniedException",
                f"claim refused: {reason}; device {device_id} is now FAILED",
                DeviceId=device_id,
                ProvisioningStatus="FAILED",
            )
        return {"DeviceId": device_id, "ProvisioningStatus": "SUCCEEDED", "DeviceConnectionStatus": "ONLINE"}


def _parse_claim(body: dict[str, Any]) -> tuple[str, x509.Certificate, float, bytes, str | None]:
    """The claim's DeviceId, certificate, timestamp, raw signature and SerialNumber; else a 400 naming
    every field that is wrong."""
    if not isinstance(body, dict):
        raise cannot_parse("the claim must be a JSON object")
    problems = []
    device_id, cert_pem, timestamp, signature = (
        body.get(k) for k in ("DeviceId", "Certificate", "Timestamp", "Signature")
    )
    serial = body.get("SerialNumber")
    if not isinstance(device_id, str) or not device_id:
        problems.append(Violation("DeviceId", device_id, "required: the device ID"))
    if not isinstance(cert_pem, str) or not cert_pem:
        problems.append(Violation("Certificate", None, "required: the certificate PEM from the archive"))
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        problems.append(Violation("Timestamp", timestamp, "required: whole epoch seconds (an integer)"))
    if not isinstance(signature, str) or not signature:
        problems.append(Violation("Signature", None, "required: base64 ECDSA-SHA256 signature"))
    if serial is not None and (not isinstance(serial, str) or not re.fullmatch(r"[0-9]{1,20}", serial)):
        problems.append(Violation("SerialNumber", serial, "must be 1-20 digits"))
    if problems or not (  # the checks above again, in the form that narrows the types
        isinstance(device_id, str)
        and isinstance(cert_pem, str)
        and isinstance(signature, str)
        and isinstance(timestamp, int)
    ):
        raise invalid_request(problems)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise validation_error(
            "Certificate is not a PEM X.509 certificate", [Violation("Certificate", None, "not a PEM certificate")]
        ) from None
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise validation_error("Signature is not base64", [Violation("Signature", signature, "not base64")]) from None
    return device_id, cert, float(timestamp), raw_signature, serial
