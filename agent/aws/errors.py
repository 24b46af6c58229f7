"""botocore exceptions -> PanostageError with the right exit code and a plain message."""

from __future__ import annotations

from typing import Any

from agent.errors import ExitCode, PanostageError

#: error code (x-amzn-ErrorType) -> (exit code, reason, hint)
_BY_CODE: dict[str, tuple[ExitCode, str, str | None]] = {
    "ValidationException": (ExitCode.VALIDATION, "service-validation", "the service refused the input; fix the fields it names"),
    "ServiceQuotaExceededException": (ExitCode.QUOTA, "quota", "delete devices you no longer need, or raise the quota"),
    "AccessDeniedException": (ExitCode.ACCESS_DENIED, "access-denied", "check the credentials (profile, AWS_* environment) and their permissions"),
    "UnrecognizedClientException": (ExitCode.ACCESS_DENIED, "access-denied", "the access key is not known to this endpoint"),
    "InvalidSignatureException": (ExitCode.ACCESS_DENIED, "access-denied", "the secret key does not match the access key"),
    "ResourceNotFoundException": (ExitCode.NOT_FOUND, "not-found", "check the ID (list them with the matching `list` command)"),
    "ConflictException": (ExitCode.CONFLICT, "conflict", "the resource is in use or in a state that forbids this"),
    "ThrottlingException": (ExitCode.THROTTLED, "throttled", "the service is throttling requests; try again shortly"),
    "TooManyRequestsException": (ExitCode.THROTTLED, "throttled", "the service is throttling requests; try again shortly"),
    "InternalServerException": (ExitCode.SERVICE, "service-internal", "the service failed; try again, and report it if it persists"),
}
_BY_STATUS: dict[int, str] = {
    400: "ValidationException", 402: "ServiceQuotaExceededException", 403: "AccessDeniedException",
    404: "ResourceNotFoundException", 409: "ConflictException", 429: "ThrottlingException",
}


def translate(exc: BaseException) -> PanostageError | None:
    """The PanostageError for a botocore exception, or None if ``exc`` is not one."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        return from_client_error(exc)
    if isinstance(exc, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return PanostageError(
            f"no answer from {getattr(exc, 'kwargs', {}).get('endpoint_url', 'the endpoint')}: {exc}",
            exit_code=ExitCode.UNREACHABLE, reason="timeout",
            hint="raise backend.connect_timeout / backend.read_timeout, or check the endpoint",
        )
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError)):
        return PanostageError(
            f"cannot reach the service: {exc}", exit_code=ExitCode.UNREACHABLE, reason="unreachable",
            hint="check --endpoint-url / the network; `panostage config show` prints the backend in use",
        )
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return PanostageError(
            f"no usable credentials: {exc}", exit_code=ExitCode.ACCESS_DENIED, reason="no-credentials",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --profile (the local backend needs none)",
        )
    if isinstance(exc, bx.ProfileNotFound):
        return PanostageError(str(exc), exit_code=ExitCode.CONFIG, reason="config", hint="check --profile / backend.profile")
    if isinstance(exc, bx.NoRegionError):
        return PanostageError(str(exc), exit_code=ExitCode.CONFIG, reason="config", hint="set --region / backend.region")
    if isinstance(exc, bx.ParamValidationError):
        return PanostageError(str(exc), exit_code=ExitCode.VALIDATION, reason="validation")
    if isinstance(exc, bx.BotoCoreError):
        return PanostageError(f"{type(exc).__name__}: {exc}", exit_code=ExitCode.SERVICE, reason="service")
    return None


def error_code(exc: BaseException) -> str | None:
    """The service error code of a ClientError (from the status when the type is missing)."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return None
    code = exc.response.get("Error", {}).get("Code") or ""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code and not code.isdigit():
        return code
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return "InternalServerException" if status >= 500 else code or None


def from_client_error(exc: Any) -> PanostageError:
    response = exc.response
    code = error_code(exc) or "UnknownError"
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    attempts = response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
    message = response.get("Error", {}).get("Message") or response.get("message") or ""
    exit_code, reason, hint = _BY_CODE.get(
        code, (ExitCode.SERVICE if not status or status >= 500 else ExitCode.ERROR, "service", None)
    )
    details: dict[str, Any] = {"operation": exc.operation_name, "error_code": code, "http_status": status}
    if attempts:
        details["retry_attempts"] = attempts
    for key in ("Fields", "ResourceId", "ResourceType", "QuotaCode", "ServiceCode", "Reason"):
        if key in response:
            details[key[0].lower() + key[1:]] = response[key]
    text = f"{exc.operation_name} failed: {code} (HTTP {status}): {message}".rstrip(": ")
    fields = response.get("Fields") or []
    if fields:
        text += "".join(f"\n  - {f.get('Name')}: {f.get('Message')}" for f in fields)
    if attempts:
        text += f" [after {attempts + 1} attempts]"
    return PanostageError(text, exit_code=exit_code, reason=reason, hint=hint, details=details)
