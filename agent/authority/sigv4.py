"""Verify AWS Signature Version 4 on received requests.

The signature is recomputed with botocore's own :class:`botocore.auth.SigV4Auth` over the
request as received (method, raw path, query, the headers the client signed, body), so the
algorithm is never re-implemented here.  Every refusal is an HTTP 403 with the error code and
message shape AWS's JSON services answer: MissingAuthenticationTokenException (unsigned),
IncompleteSignatureException (unreadable header or scope), UnrecognizedClientException
(unknown key), InvalidSignatureException (mismatch, expired, wrong region or service).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from agent.authority.apierror import (
    ApiError,
    incomplete_signature,
    invalid_signature,
    missing_authentication,
    unrecognized_client,
)

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = timedelta(minutes=15)
_STAMP = "%Y%m%dT%H%M%SZ"
_STAMP_SHAPE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_ECHO_MAX = 256  # the Authorization header echoed in a message, at most


class Headers(Protocol):
    """A received request's headers, looked up by name without regard to case, as
    :class:`email.message.Message` (``http.server``'s ``headers``) has them."""

    def get(self, name: str, /) -> str | None: ...

    def get_all(self, name: str, /) -> list[str] | None: ...


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


def _echo(auth: str) -> str:
    return auth if len(auth) <= _ECHO_MAX else auth[: _ECHO_MAX - 3] + "..."


def parse_authorization(auth: str, has_date: bool) -> dict[str, str]:
    """``Credential``, ``SignedHeaders`` and ``Signature`` of a SigV4 Authorization header, or the
    IncompleteSignatureException AWS answers for it."""
    algorithm, _, rest = auth.strip().partition(" ")
    if algorithm.startswith("AWS4-") and algorithm != ALGORITHM:
        raise incomplete_signature(f"Unsupported AWS 'algorithm': '{algorithm}'. Only '{ALGORITHM}' is accepted.")
    params: dict[str, str] = {}
    if algorithm == ALGORITHM:
        for item in (part.strip() for part in rest.split(",")):
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise incomplete_signature(
                    f"'{item}' not a valid key=value pair (missing equal-sign) in Authorization header: '{_echo(auth)}'."
                )
            params[key.strip()] = value.strip()
    missing = [
        f"Authorization header requires '{name}' parameter."
        for name in ("Credential", "Signature", "SignedHeaders")
        if not params.get(name)
    ]
    if not has_date:
        missing.append("Authorization header requires existence of a 'X-Amz-Date' header.")
    if missing:
        raise incomplete_signature(" ".join(missing) + f" Authorization={_echo(auth)}")
    return params


def _signed_at(amz_date: str) -> datetime:
    """X-Amz-Date (``yyyymmddTHHMMSSZ``) as a datetime, or IncompleteSignatureException."""
    try:
        if not _STAMP_SHAPE.fullmatch(amz_date):
            raise ValueError(amz_date)
        return datetime.strptime(amz_date, _STAMP).replace(tzinfo=UTC)
    except ValueError:
        raise incomplete_signature(
            f"X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\", got '{_echo(amz_date)}'"
        ) from None


def check_time(signed_at: datetime, now: datetime) -> None:
    """Refuse a signature more than 15 minutes from ``now``, with AWS's message."""
    stamp = signed_at.strftime(_STAMP)
    if signed_at < now - MAX_SKEW:
        raise invalid_signature(
            f"Signature expired: {stamp} is now earlier than {(now - MAX_SKEW).strftime(_STAMP)} "
            f"({now.strftime(_STAMP)} - 15 min.)"
        )
    if signed_at > now + MAX_SKEW:
        raise invalid_signature(
            f"Signature not yet current: {stamp} is still later than {(now + MAX_SKEW).strftime(_STAMP)} "
            f"({now.strftime(_STAMP)} + 15 min.)"
        )


def verify(
    *,
    method: str,
    raw_path: str,
    query: str,
    headers: Headers,
    body: bytes,
    credentials: Mapping[str, str],
    now: datetime,
    services: tuple[str, ...] | None,
    regions: tuple[str, ...] | None = None,
) -> Caller:
    """Check the request's SigV4 signature; return the caller or raise :class:`ApiError` (403).

    ``headers`` is an :class:`email.message.Message`-like object (:class:`Headers`).
    ``services``: the signing names this route accepts (None: any); ``regions``: the regions a
    credential scope may name (None: any).
    """
    auth = headers.get("Authorization")
    if not auth:
        raise missing_authentication()
    amz_date = headers.get("X-Amz-Date") or ""  # parse_authorization refuses it missing or empty
    params = parse_authorization(auth, bool(amz_date))
    signed_at = _signed_at(amz_date)
    credential = params["Credential"]
    parts = credential.split("/")
    if len(parts) != 5:
        raise incomplete_signature(
            f"Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
            f"got '{_echo(credential)}'"
        )
    access_key, scope_date, region, service, terminator = parts
    if terminator != "aws4_request":
        raise incomplete_signature(
            f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
        )
    if scope_date != amz_date[:8]:
        raise invalid_signature(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{scope_date}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    if regions is not None and region not in regions:
        raise invalid_signature("Credential should be scoped to a valid region. ")
    if services is not None and service not in services:
        raise invalid_signature(f"Credential should be scoped to correct service: '{services[0]}'. ")
    check_time(signed_at, now)
    secret = credentials.get(access_key)
    if secret is None:
        raise unrecognized_client()
    signature = params["Signature"]
    signed = params["SignedHeaders"]
    signed_names = signed.split(";")
    if "host" not in signed_names:
        raise incomplete_signature("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    content_sha = headers.get("X-Amz-Content-SHA256")
    if (
        content_sha is not None
        and "x-amz-content-sha256" in signed_names
        and content_sha != hashlib.sha256(body).hexdigest()
    ):
        raise invalid_signature("The provided 'x-amz-content-sha256' header does not match what was computed.")

    request = AWSRequest(method=method, url=f"http://{headers.get('Host') or ''}{raw_path}", data=body)
    for name in signed_names:
        values = headers.get_all(name) or []
        if not values:  # signed but not sent: AWS computes a signature that cannot match
            raise invalid_signature()
        for value in values:
            request.headers[name] = value
    # botocore canonicalises (key, value) pairs as well as a dict (and a query may repeat a key); its stubs say dict
    request.params = query_pairs(query)  # type: ignore[assignment]
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key, secret), service, region)
    if signer.signed_headers(signer.headers_to_sign(request)) != signed:
        raise invalid_signature()  # not in canonical form (sorted, lowercase, no hop-by-hop headers)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not signature.isascii() or not hmac.compare_digest(expected, signature):
        raise invalid_signature()
    return Caller(access_key, region, service)


__all__ = ["MAX_SKEW", "ApiError", "Caller", "Headers", "check_time", "parse_authorization", "query_pairs", "verify"]
