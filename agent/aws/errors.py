"""botocore exceptions -> PanostageError with the right exit code and a plain message.

A service error is mapped by its error code first and its HTTP status second (AWS gives some codes
different statuses in different services), except that every 401/403 is ACCESS_DENIED whatever the
code.  No answer from a service, known or unknown, JSON or not, ever becomes exit 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agent.errors import ExitCode, PanostageError

_CLOCK_FIX = "set it right (timedatectl set-ntp true)"
_CREDENTIALS = "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, --profile)"

#: error codes of signing and authorization failures (AWS's common errors, both spellings) -> (reason, hint)
_AUTH: dict[str, tuple[str, str]] = {
    "AccessDeniedException": (
        "access-denied",
        f"the credentials are valid but not allowed this call: check the IAM policy of the user or role {_CREDENTIALS}",
    ),
    "UnrecognizedClientException": (
        "unrecognized-client",
        "the service does not know this access key: check it "
        f"{_CREDENTIALS}, and that --endpoint-url is the service the key belongs to",
    ),
    "InvalidClientTokenId": (
        "invalid-client-token",
        f"the access key ID does not exist (deleted, or mistyped): check it {_CREDENTIALS}",
    ),
    "InvalidSignatureException": (
        "invalid-signature",
        "the secret access key does not match the access key ID: check "
        f"AWS_SECRET_ACCESS_KEY or the profile's secret {_CREDENTIALS}",
    ),
    "IncompleteSignatureException": (
        "incomplete-signature",
        "the request's signature is incomplete or malformed: a "
        "proxy between here and the service may be rewriting its Authorization or "
        "X-Amz-Date header",
    ),
    "MissingAuthenticationTokenException": (
        "missing-authentication",
        "the request reached the service unsigned: "
        f"set credentials {_CREDENTIALS}; AWS also answers this for a path it does "
        "not serve, so check --endpoint-url",
    ),
    "ExpiredTokenException": (
        "expired-token",
        "the temporary credentials' session token has expired: get new ones "
        "(aws sso login, aws sts assume-role, or whatever set AWS_SESSION_TOKEN)",
    ),
    "OptInRequired": (
        "opt-in-required",
        "the account is not subscribed to this service, or the region is not enabled "
        "for it: enable it (AWS console, Account > Regions) or use another --region",
    ),
    "NotAuthorized": (
        "not-authorized",
        f"not authorized for this call: check the IAM policy of the credentials {_CREDENTIALS}",
    ),
    "RequestExpired": ("clock-skew", ""),  # the hint names the measured offset
    "RequestTimeTooSkewed": ("clock-skew", ""),
}
for _code, _alias in (
    ("AccessDeniedException", "AccessDenied"),
    ("ExpiredTokenException", "ExpiredToken"),
    ("InvalidSignatureException", "SignatureDoesNotMatch"),
    ("IncompleteSignatureException", "IncompleteSignature"),
    ("MissingAuthenticationTokenException", "MissingAuthenticationToken"),
    ("UnrecognizedClientException", "InvalidAccessKeyId"),
):
    _AUTH[_alias] = _AUTH[_code]

_THROTTLED = (ExitCode.THROTTLED, "throttled", "the service is throttling requests; try again shortly")
_INTERNAL = (ExitCode.SERVICE, "service-internal", "the service failed; try again, and report it if it persists")
_INVALID = (ExitCode.VALIDATION, "service-validation", "the service refused the input; fix the fields it names")
_TOO_LARGE = (ExitCode.VALIDATION, "request-too-large", "the request is larger than the service takes")
#: every other error code the mapping knows -> (exit code, reason, hint)
_BY_CODE: dict[str, tuple[ExitCode, str, str | None]] = {
    **{code: (ExitCode.ACCESS_DENIED, reason, hint) for code, (reason, hint) in _AUTH.items()},
    "ValidationException": _INVALID,
    "ValidationError": _INVALID,
    "InvalidParameterValueException": _INVALID,
    "SerializationException": (
        ExitCode.VALIDATION,
        "service-validation",
        "the service could not read the request body; report this with --debug output",
    ),
    "MalformedQueryString": (ExitCode.VALIDATION, "service-validation", "the service could not read the query string"),
    "RequestEntityTooLargeException": _TOO_LARGE,
    "ServiceQuotaExceededException": (ExitCode.QUOTA, "quota", "delete devices you no longer need, or raise the quota"),
    "ResourceNotFoundException": (ExitCode.NOT_FOUND, "not-found", "check the ID"),  # by operation: _NOT_FOUND_HINT
    "UnknownOperationException": (
        ExitCode.NOT_FOUND,
        "not-found",
        "the endpoint serves no such operation: check --endpoint-url",
    ),
    "ConflictException": (ExitCode.CONFLICT, "conflict", "the resource is in use or in a state that forbids this"),
    "ThrottlingException": _THROTTLED,
    "Throttling": _THROTTLED,
    "TooManyRequestsException": _THROTTLED,
    "RequestLimitExceeded": _THROTTLED,
    "InternalServerException": _INTERNAL,
    "InternalFailure": _INTERNAL,
    "InternalError": _INTERNAL,
    "ServiceUnavailable": _INTERNAL,
    "ServiceUnavailableException": _INTERNAL,
}
_DEVICES = "check the device ID or name: `panostage device list` lists the devices"
_TASKS = "check the task ID: `panostage snow list` lists the tasks"
#: what to run when an operation's resource is not found: the exact command that lists what exists
_NOT_FOUND_HINT: dict[str, str] = {
    "DescribeDevice": _DEVICES,
    "DeleteDevice": _DEVICES,
    "CreateJobForDevices": _DEVICES,
    "ListDevicesJobs": _DEVICES,
    "DescribeDeviceJob": "check the job ID: `panostage job list` lists the jobs (`--device DEVICE` for one device's)",
    "DescribePackageImportJob": (
        "check the job ID: it is the JobId `panostage package import` printed (the same import run again prints "
        "it again: the ClientToken is a hash of the request)"
    ),
    "CreateTask": "check the managed device IDs: `panostage snow devices` lists the devices tasks can target",
    "DescribeTask": _TASKS,
    "CancelTask": _TASKS,
    "ListExecutions": _TASKS,
    "DescribeExecution": (
        "check the task ID (`panostage snow list` lists the tasks) and the device ID (`panostage snow executions "
        "TASK` lists the task's executions)"
    ),
}
#: an error code (or none) the mapping does not know -> by its HTTP status
_BY_STATUS: dict[int, tuple[ExitCode, str, str | None]] = {
    400: (ExitCode.VALIDATION, "service-validation", "the service refused the request as invalid"),
    401: (ExitCode.ACCESS_DENIED, "access-denied", f"check the credentials {_CREDENTIALS} and their permissions"),
    402: (ExitCode.QUOTA, "quota", "a quota of the account is used up"),
    403: (ExitCode.ACCESS_DENIED, "access-denied", f"check the credentials {_CREDENTIALS} and their permissions"),
    404: (ExitCode.NOT_FOUND, "not-found", "the service found no such resource or operation (check --endpoint-url)"),
    409: (ExitCode.CONFLICT, "conflict", "the resource is in use or in a state that forbids this"),
    413: _TOO_LARGE,
    429: _THROTTLED,
}
#: the error code a status stands for when the service sent none (see :func:`error_code`)
_CODE_OF_STATUS: dict[int, str] = {
    400: "ValidationException",
    402: "ServiceQuotaExceededException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    409: "ConflictException",
    429: "ThrottlingException",
}
_MESSAGE_MAX = 300
_TEXT_KEYS = ("__type", "code", "Code", "message", "Message")  # members of an error body botocore reads as text


def translate(exc: BaseException) -> PanostageError | None:
    """The PanostageError for a botocore exception, or None if ``exc`` is not one."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        return from_client_error(exc)
    if isinstance(exc, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return PanostageError(
            f"no answer from {getattr(exc, 'kwargs', {}).get('endpoint_url', 'the endpoint')}: {exc}",
            exit_code=ExitCode.UNREACHABLE,
            reason="timeout",
            hint="raise backend.connect_timeout / backend.read_timeout, or check the endpoint",
        )
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError)):
        return PanostageError(
            f"cannot reach the service: {exc}",
            exit_code=ExitCode.UNREACHABLE,
            reason="unreachable",
            hint="check --endpoint-url / the network; `panostage config show` prints the backend in use",
        )
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return PanostageError(
            f"no usable credentials: {exc}",
            exit_code=ExitCode.ACCESS_DENIED,
            reason="no-credentials",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --profile (the local backend needs none)",
        )
    if isinstance(exc, bx.ProfileNotFound):
        return PanostageError(
            str(exc), exit_code=ExitCode.CONFIG, reason="config", hint="check --profile / backend.profile"
        )
    if isinstance(exc, bx.NoRegionError):
        return PanostageError(
            str(exc), exit_code=ExitCode.CONFIG, reason="config", hint="set --region / backend.region"
        )
    if isinstance(exc, bx.ParamValidationError):
        return PanostageError(str(exc), exit_code=ExitCode.VALIDATION, reason="validation")
    if isinstance(exc, bx.BotoCoreError):
        return PanostageError(f"{type(exc).__name__}: {exc}", exit_code=ExitCode.SERVICE, reason="service")
    return None


def _sent_code(response: Mapping[str, Any]) -> str | None:
    """The error code the service sent, or None (botocore puts the status there for a body without one)."""
    code = response.get("Error", {}).get("Code") or ""
    return code if isinstance(code, str) and code and not code.isdigit() else None


def error_code(exc: BaseException) -> str | None:
    """The service error code of a ClientError (from the status when the type is missing)."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return None
    code = _sent_code(exc.response)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code:
        return code
    if status in _CODE_OF_STATUS:
        return _CODE_OF_STATUS[status]
    return "InternalServerException" if status >= 500 else exc.response.get("Error", {}).get("Code") or None


def service_time(response: dict[str, Any]) -> datetime | None:
    """The service's clock when it answered: the HTTP ``Date`` header (whole seconds), or None."""
    from email.utils import parsedate_to_datetime

    value = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        served = parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None
    return None if served is None or served.tzinfo is None else served.astimezone(UTC)


def clock_offset(response: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds this machine's clock is ahead of the service's (negative: behind), from the answer's HTTP
    ``Date`` header (whole seconds, cut: the service's time was half a second later on average); None
    without one."""
    served = service_time(response)
    if served is None:
        return None
    return ((now or datetime.now(UTC)) - served).total_seconds() - 0.5


def clock_hint(offset: float | None) -> str:
    """What to do about a request refused for its date, naming the measured offset when there is one."""
    if offset is None:
        return (
            "the request's date is more than 15 minutes off the service's clock: check this workstation's "
            f"clock and {_CLOCK_FIX}"
        )
    if abs(offset) < 2:
        return (
            "this workstation's clock agrees with the service's (within 1 s), yet the request's date was more than "
            "15 minutes off when it arrived: something held the request (a proxy?)"
        )
    side = "behind" if offset < 0 else "ahead of"
    return f"this workstation's clock is {abs(offset):.0f} s {side} the service's: {_CLOCK_FIX}"


def _classify(code: str | None, status: int | None, message: str) -> tuple[ExitCode, str, str | None]:
    """(exit code, reason, hint) by error code first, HTTP status second; every 401/403 is ACCESS_DENIED."""
    known = _BY_CODE.get(code or "")
    if status in (401, 403) and (known is None or known[0] is not ExitCode.ACCESS_DENIED):
        exit_code, reason, hint = _BY_STATUS[status]
        return exit_code, reason, f"the service refused the request ({code or 'no error code'}, HTTP {status}): {hint}"
    if known is not None:
        exit_code, reason, hint = known
        if reason == "invalid-signature":
            if "Signature expired" in message or "not yet current" in message:
                return exit_code, "clock-skew", ""
            if "scoped to a valid region" in message:
                return (
                    exit_code,
                    "wrong-region",
                    (
                        "the service does not take requests signed for this region: set "
                        "--region / backend.region to the service's"
                    ),
                )
            if "scoped to correct service" in message:
                return exit_code, "wrong-service", "the request was signed for another service: check --endpoint-url"
        return exit_code, reason, hint
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status and 400 <= status < 500:
        return (
            ExitCode.SERVICE,
            "service",
            (
                f"the service answered HTTP {status} with {code or 'no error code'}, which "
                "panostage does not know; report it with the --debug output"
            ),
        )
    return _INTERNAL if status and status >= 500 else (ExitCode.SERVICE, "service", "the service broke the protocol")


def _short(message: Any) -> str:
    """An error message fit for one line: whitespace folded, cut at :data:`_MESSAGE_MAX` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."


def from_client_error(exc: Any) -> PanostageError:
    """A botocore ClientError as a PanostageError: exit code and hint from its code and status, the
    service's message, the clock's measured offset for a refused date."""
    response = exc.response
    code = _sent_code(response)
    metadata = response.get("ResponseMetadata", {})
    status = metadata.get("HTTPStatusCode")
    attempts = metadata.get("RetryAttempts", 0)
    message = str(response.get("Error", {}).get("Message") or response.get("message") or "")
    if code is None:  # no error code: the body may be any page (a proxy's HTML), fit it on a line
        message = _short(message)
    exit_code, reason, hint = _classify(code, status, message)
    if code == "ResourceNotFoundException" and exc.operation_name in _NOT_FOUND_HINT:
        hint = _NOT_FOUND_HINT[exc.operation_name]
    details: dict[str, Any] = {
        "operation": exc.operation_name,
        "error_code": code or error_code(exc),
        "http_status": status,
    }
    if reason == "clock-skew":
        offset = clock_offset(response)
        hint = clock_hint(offset)
        if offset is not None:
            details["clock_offset_seconds"] = round(offset)
    if attempts:
        details["retry_attempts"] = attempts
    for key in ("Fields", "ResourceId", "ResourceType", "QuotaCode", "ServiceCode", "Reason"):
        if key in response:
            details[key[0].lower() + key[1:]] = response[key]
    what = f"{code} (HTTP {status})" if code else f"HTTP {status} without an error code"
    text = f"{exc.operation_name} failed: {what}: {message}".rstrip(": ")
    fields = response.get("Fields") or []
    if isinstance(fields, list) and fields:
        text += "".join(f"\n  - {f.get('Name')}: {f.get('Message')}" for f in fields if isinstance(f, dict))
    if attempts:
        text += f" [after {attempts + 1} attempts]"
    return PanostageError(text, exit_code=exit_code, reason=reason, hint=hint, details=details)


def mend_error_body(response_dict: dict[str, Any], **_: Any) -> None:
    """A ``before-parse`` hook: botocore's JSON error parser takes any JSON error body for an object and
    fails (AttributeError, TypeError, UnicodeDecodeError) on ``[...]``, ``"text"``, ``null``, a ``__type``
    that is not text, or bytes that are not UTF-8; such a body is handed on as text, as botocore does with
    a body that is not JSON at all."""
    if (response_dict.get("status_code") or 0) < 300 or not isinstance(response_dict.get("body"), bytes):
        return
    body = response_dict["body"]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        response_dict["body"] = body.decode("utf-8", "replace").encode()
        return
    try:
        parsed = json.loads(text)
    except ValueError:  # not JSON: botocore takes the text for the message
        return
    if not isinstance(parsed, dict):
        response_dict["body"] = json.dumps({"message": text}).encode()
        return
    odd = {
        key: json.dumps(parsed[key])
        for key in _TEXT_KEYS
        if parsed.get(key) is not None and not isinstance(parsed[key], str)
    }
    if odd:
        response_dict["body"] = json.dumps({**parsed, **odd}).encode()
