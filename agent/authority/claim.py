"""The appliance's side of registration: prove possession of the archive's key and present
its certificate (``POST /_local/claim``; not an AWS API, not SigV4).

The claim signs ``panostage-claim:{DeviceId}:{Timestamp}`` with ECDSA-SHA256 using the
device key; the authority checks the chain to its CA, the serial it issued to that
device, the validity period and a timestamp window of five minutes.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

CLAIM_PATH = "/_local/claim"


@dataclass
class ClaimRejected(Exception):
    """The authority refused the claim."""

    status: int
    error_type: str
    message: str
    body: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.status} {self.error_type}: {self.message}"


def build_claim(
    device_id: str, cert_pem: bytes | str, key_pem: bytes | str, now: datetime | float, serial_number: str | None = None
) -> dict[str, Any]:
    """The claim body for ``device_id`` signed with ``key_pem`` at time ``now``."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from agent.authority.service import claim_message

    timestamp = int(now.timestamp() if isinstance(now, datetime) else now)
    key = serialization.load_pem_private_key(key_pem.encode() if isinstance(key_pem, str) else key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the device key must be an EC private key")
    signature = key.sign(claim_message(device_id, timestamp), ec.ECDSA(hashes.SHA256()))
    claim = {
        "DeviceId": device_id,
        "Certificate": cert_pem.decode() if isinstance(cert_pem, bytes) else cert_pem,
        "Timestamp": timestamp,
        "Signature": base64.b64encode(signature).decode(),
    }
    if serial_number is not None:
        claim["SerialNumber"] = serial_number
    return claim


def post_claim(endpoint_url: str, claim: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send a claim; the authority's answer, or :class:`ClaimRejected`."""
    req = urllib.request.Request(
        endpoint_url.rstrip("/") + CLAIM_PATH,
        data=json.dumps(claim).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return cast(dict[str, Any], json.loads(resp.read()))  # a JSON object, the claim's outcome
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        raise ClaimRejected(
            exc.code, exc.headers.get("x-amzn-ErrorType", ""), body.get("message", str(exc.reason)), body
        ) from None
