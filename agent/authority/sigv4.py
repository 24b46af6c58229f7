"""Verify AWS Signature Version 4 on received requests.

The signature is recomputed with botocore's own :class:`botocore.auth.SigV4Auth` over the
request as received (method, raw path, query, the headers the client signed, body), so the
algorithm is never re-implemented here.  Every refusal is an ``AccessDeniedException``
with a message that says what was wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Mapping
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from agent.authority.apierror import ApiError, access_denied

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = timedelta(minutes=15)
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


@dataclass(frozen=True)
class Caller:
    """Who signed a request, and for which region and service."""

    access_key_id: str
    region: str
    service: str


def query_pairs(query: str) -> list[tuple[str, str]]:
    """The decoded ``(key, value)`` pairs of a raw query string (``+`` is taken literally)."""
    pairs = []
    for part in query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def verify(
    *,
    method: str,
    raw_path: str,
    query: str,
    headers: Mapping[str, str] | object,
    body: bytes,
    credentials: Mapping[str, str],
    now: datetime,
    services: tuple[str, ...] | None,
) -> Caller:
    """Check the request's SigV4 signature; return the caller or raise :class:`ApiError` (403).

    ``headers`` is an :class:`email.message.Message`-like object (``get``/``get_all``).
    ``services``: the signing names this route accepts (None: any).
    """
    auth = headers.get("Authorization")  # type: ignore[union-attr]
    if not auth:
        raise access_denied("request is not signed: missing Authorization header (AWS Signature Version 4 required)")
    if not auth.startswith(ALGORITHM):
        algorithm = auth.split(" ", 1)[0]
        raise access_denied(f"unsupported signature algorithm {algorithm!r}: only {ALGORITHM} is accepted")
    match = _AUTH.match(auth)
    if not match:
        raise access_denied("malformed Authorization header: expected Credential=..., SignedHeaders=..., Signature=...")
    parts = match.group("credential").split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise access_denied("malformed credential scope: expected KEY/yyyymmdd/region/service/aws4_request")
    access_key, scope_date, region, service, _ = parts
    secret = credentials.get(access_key)
    if secret is None:
        raise access_denied(f"the access key ID {access_key} is not known to this authority")
    if services is not None and service not in services:
        raise access_denied(
            f"credential scope names service {service!r}, but this operation is signed for {' or '.join(services)!r}"
        )
    amz_date = headers.get("X-Amz-Date")  # type: ignore[union-attr]
    if not amz_date:
        raise access_denied("missing X-Amz-Date header")
    try:
        if len(amz_date) != 16 or amz_date[8] != "T" or amz_date[15] != "Z":
            raise ValueError(amz_date)
        d, t = amz_date[:8], amz_date[9:15]
        signed_at = datetime(int(d[:4]), int(d[4:6]), int(d[6:]), int(t[:2]), int(t[2:4]), int(t[4:]), tzinfo=timezone.utc)
    except ValueError:
        raise access_denied(f"X-Amz-Date {amz_date!r} is not in the form yyyymmddTHHMMSSZ") from None
    if scope_date != amz_date[:8]:
        raise access_denied(f"credential scope date {scope_date} does not match X-Amz-Date {amz_date}")
    if abs(signed_at - now) > MAX_SKEW:
        raise access_denied(
            f"signature expired: X-Amz-Date {amz_date} is more than 15 minutes from the authority's time "
            f"{now.strftime('%Y%m%dT%H%M%SZ')}; check the clock"
        )
    signed_names = match.group("signed").split(";")
    if "host" not in signed_names:
        raise access_denied("SignedHeaders must include host")
    content_sha = headers.get("X-Amz-Content-SHA256")  # type: ignore[union-attr]
    if content_sha is not None and "x-amz-content-sha256" in signed_names:
        if content_sha != hashlib.sha256(body).hexdigest():
            raise access_denied("X-Amz-Content-SHA256 does not match the request body")

    request = AWSRequest(method=method, url=f"http://{headers.get('Host', '')}{raw_path}", data=body)  # type: ignore[union-attr]
    for name in signed_names:
        values = headers.get_all(name) or []  # type: ignore[union-attr]
        if not values:
            raise access_denied(f"signed header {name!r} is missing from the request")
        for value in values:
            request.headers[name] = value
    request.params = query_pairs(query)
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key, secret), service, region)
    headers_to_sign = signer.headers_to_sign(request)
    if signer.signed_headers(headers_to_sign) != match.group("signed"):
        raise access_denied("SignedHeaders is not in canonical form (sorted, lowercase, no hop-by-hop headers)")
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, match.group("signature")):
        raise access_denied(
            "the request signature does not match the signature the authority computed: "
            "check the secret access key and the signing method"
        )
    return Caller(access_key, region, service)


__all__ = ["ApiError", "Caller", "verify", "query_pairs", "MAX_SKEW"]
