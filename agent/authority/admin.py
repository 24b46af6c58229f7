"""A small client for a running authority's admin API (faults, clock, health), signing its
requests with botocore's SigV4Auth like any AWS call."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

from agent.errors import ExitCode, PanostageError

ADMIN_SIGNING_NAME = "panostage"
_EXIT_BY_STATUS = {400: ExitCode.VALIDATION, 403: ExitCode.ACCESS_DENIED, 404: ExitCode.NOT_FOUND}


def _hint(status: int, message: str) -> str | None:
    """What to do about a refused admin call."""
    if status != 403:
        return None
    if "valid region" in message:
        return "sign for a region the authority takes ([authority] regions, else its backend.region): --region"
    return "the admin API takes the authority's own credentials"


class AdminError(PanostageError):
    """The authority refused an admin call, or could not be reached."""

    exit_code = ExitCode.SERVICE
    reason = "authority-admin"


class AdminClient:
    """``/_local/*`` calls against the authority at ``endpoint_url``."""

    def __init__(
        self,
        endpoint_url: str,
        access_key_id: str,
        secret_access_key: str,
        *,
        region: str = "us-east-1",
        timeout: float = 10.0,
    ) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.region = region
        self.timeout = timeout

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None, *, signed: bool = True) -> Any:
        """Call ``method path`` (path may carry a query); return the decoded JSON answer."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        url = self.endpoint_url + path
        data = b"" if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if signed:
            aws = AWSRequest(method=method, url=url, data=data, headers=headers)
            SigV4Auth(
                Credentials(self.access_key_id, self.secret_access_key), ADMIN_SIGNING_NAME, self.region
            ).add_auth(aws)
            headers = dict(aws.headers.items())
        req = urllib.request.Request(
            url, data=data if method in ("PUT", "POST") else None, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read() or b"{}")
            except ValueError:
                detail = {}
            message = detail.get("message") or exc.reason
            raise AdminError(
                f"authority at {self.endpoint_url} answered {exc.code} {exc.headers.get('x-amzn-ErrorType', '')}: {message}",
                exit_code=_EXIT_BY_STATUS.get(exc.code, ExitCode.SERVICE),
                details={"status": exc.code, "body": detail},
                hint=_hint(exc.code, str(message)),
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(
                f"cannot reach the authority at {self.endpoint_url}: {reason}",
                exit_code=ExitCode.UNREACHABLE,
                hint="is `panostage authority serve` running there? check --endpoint-url",
            ) from None

    def _object(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, signed: bool = True
    ) -> dict[str, Any]:
        """:meth:`request` for an answer that is a JSON object, as every ``/_local/`` one is."""
        return cast(dict[str, Any], self.request(method, path, body, signed=signed))

    def health(self) -> dict[str, Any]:
        return self._object("GET", "/_local/health", signed=False)

    def faults(self) -> dict[str, Any]:
        return self._object("GET", "/_local/faults")

    def set_faults(
        self, rules: Mapping[str, Mapping[str, Any]], *, seed: int | None = None, replace: bool = False
    ) -> dict[str, Any]:
        """Set rules per operation (``{"ProvisionDevice": {"error": 500, "count": 1}}``)."""
        body: dict[str, Any] = {"rules": {op: dict(rule) for op, rule in rules.items()}, "replace": replace}
        if seed is not None:
            body["seed"] = seed
        return self._object("PUT", "/_local/faults", body)

    def set_fault(self, operation: str, **rule: Any) -> dict[str, Any]:
        return self.set_faults({operation: rule})

    def clear_faults(self, operation: str | None = None) -> dict[str, Any]:
        suffix = f"?operation={quote(operation, safe='')}" if operation else ""
        return self._object("DELETE", "/_local/faults" + suffix)

    def clock(self) -> dict[str, Any]:
        return self._object("GET", "/_local/clock")

    def set_clock_offset(self, seconds: float) -> dict[str, Any]:
        return self._object("PUT", "/_local/clock", {"offset_seconds": seconds})

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        return self._object("PUT", "/_local/clock", {"advance_seconds": seconds})
