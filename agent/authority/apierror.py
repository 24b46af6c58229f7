"""Errors the authority answers, in the AWS REST-JSON shape: an HTTP status, the type in
``x-amzn-ErrorType``, and a JSON body with ``message``, ``Message`` and the shape's fields."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.errors import Violation

QUOTA_CODE = "L-PANOSTAGE-DEVICES"
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key "
    "and signing method. Consult the service documentation for details."
)


class ApiError(Exception):
    """An error response.  ``fields`` are the exception shape's members (ResourceId, ...)."""

    def __init__(self, status: int, error_type: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.fields = {k: v for k, v in fields.items() if v is not None}
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "Message": self.message, **self.fields}


def validation_error(
    message: str, violations: Iterable[Violation] = (), reason: str = "FIELD_VALIDATION_FAILED"
) -> ApiError:
    fields = [{"Name": v.path, "Message": _describe(v)} for v in violations]
    return ApiError(400, "ValidationException", message, Reason=reason, Fields=fields or None)


def invalid_request(violations: list[Violation]) -> ApiError:
    count = len(violations)
    summary = "; ".join(_describe(v, with_path=True) for v in violations[:5]) + ("; ..." if count > 5 else "")
    noun = "field" if count == 1 else "fields"
    return validation_error(f"{count} {noun} failed validation: {summary}", violations)


def cannot_parse(message: str) -> ApiError:
    return validation_error(message, reason="CANNOT_PARSE")


def not_found(resource_type: str, resource_id: str, message: str | None = None) -> ApiError:
    return ApiError(
        404,
        "ResourceNotFoundException",
        message or f"{resource_type} {resource_id} not found",
        ResourceId=resource_id,
        ResourceType=resource_type,
    )


def conflict(resource_type: str, resource_id: str, message: str) -> ApiError:
    return ApiError(409, "ConflictException", message, ResourceId=resource_id, ResourceType=resource_type)


def quota_exceeded(message: str, quota_code: str = QUOTA_CODE, service_code: str = "panorama") -> ApiError:
    return ApiError(402, "ServiceQuotaExceededException", message, QuotaCode=quota_code, ServiceCode=service_code)


def access_denied(message: str) -> ApiError:
    return ApiError(403, "AccessDeniedException", message)


# SigV4 refusals, as AWS's JSON services answer them.  All are HTTP 403: AWS's query services (and some
# documentation of the common errors) give IncompleteSignature 400, but its JSON and REST-JSON services,
# Panorama's kind, answer IncompleteSignatureException with 403 like every other signing failure.


def missing_authentication() -> ApiError:
    """No Authorization header (and no presigned query)."""
    return ApiError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")


def incomplete_signature(message: str) -> ApiError:
    """An Authorization header or credential scope that cannot be read."""
    return ApiError(403, "IncompleteSignatureException", message)


def unrecognized_client() -> ApiError:
    """An access key ID this authority does not know."""
    return ApiError(403, "UnrecognizedClientException", "The security token included in the request is invalid.")


def invalid_signature(message: str = SIGNATURE_MISMATCH) -> ApiError:
    """A signature that does not verify: mismatch, expired, or scoped to another region or service."""
    return ApiError(403, "InvalidSignatureException", message)


def serialization_error(message: str) -> ApiError:
    """A body the JSON protocol cannot take (AWS: 400 SerializationException)."""
    return ApiError(400, "SerializationException", message)


def too_large(message: str) -> ApiError:
    """A request body over the size limit."""
    return ApiError(413, "RequestEntityTooLargeException", message)


def throttled(message: str) -> ApiError:
    error = ApiError(429, "ThrottlingException", message)
    error.headers["Retry-After"] = "1"
    return error


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalServerException", message)


def unknown_operation(method: str, path: str, allowed: Iterable[str] = ()) -> ApiError:
    allowed = sorted(set(allowed))
    extra = f" (this path accepts {', '.join(allowed)})" if allowed else ""
    return ApiError(404, "UnknownOperationException", f"no operation for {method} {path}{extra}")


def injected(status: int, operation: str) -> ApiError:
    """The error a fault rule asks for."""
    message = f"injected fault: {operation} answered {status}"
    if status == 500:
        return internal(message)
    if status == 429:
        return throttled(message)
    if status == 409:
        return conflict("fault", operation, message)
    if status == 402:
        return quota_exceeded(message)
    if status == 403:
        return access_denied(message)
    raise ValueError(f"no injected error for status {status}")


def _describe(v: Violation, with_path: bool = False) -> str:
    value = repr(v.value)
    if len(value) > 60:
        value = value[:57] + "..."
    text = f"{v.rule} (got {value})" if v.value is not None else v.rule
    return f"{v.path}: {text}" if with_path else text
