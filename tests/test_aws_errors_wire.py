"""What real AWS answers, and what panostage makes of it: a stub HTTP server (the one edge a test cannot
reach) answers each documented error the way AWS's REST-JSON services do — status, ``x-amzn-ErrorType``,
a JSON body with ``__type``/``message``, or a body that is not JSON at all — and the project's own
clients (``open_backend`` with an endpoint URL, and the real CLI) must give the documented exit code and
a hint of its own for each, never exit 1, never a traceback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from agent.aws.backend import open_backend
from agent.config import load
from agent.error_mapping import to_error
from agent.errors import ExitCode, PanostageError
from tests.helpers import run_cli

KEY, SECRET, REGION = "AKIDSTUBWIRE00000001", "stub-wire-secret-0123456789", "us-west-2"
CORAL = "http://internal.amazon.com/coral/com.amazon.coral.service/"


@dataclass
class Answer:
    """One HTTP answer of the stub: as AWS sends it unless told otherwise."""

    status: int
    code: str | None = None  # x-amzn-ErrorType and __type; None: neither
    message: str = ""
    raw: bytes | None = None  # a body sent as is instead of the JSON one
    content_type: str = "application/json"
    clock_ahead: float | None = 0.0  # the service's Date header, this many seconds ahead of ours; None: no Date

    def encode(self) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = [("x-amzn-RequestId", "8b5c4ae0-stub-4e5d-9d4b-0123456789ab"), ("Content-Type", self.content_type)]
        if self.clock_ahead is not None:
            headers.append(("Date", formatdate(time.time() + self.clock_ahead, usegmt=True)))
        if self.code:
            headers.append(("x-amzn-ErrorType", f"{self.code}:{CORAL}"))
        if self.raw is not None:
            body = self.raw
        else:
            document: dict[str, Any] = {"message": self.message}
            if self.code:
                document = {"__type": f"com.amazon.coral.service#{self.code}", **document}
            body = json.dumps(document).encode()
        return self.status, headers, body


@dataclass
class Stub:
    """An HTTP server on 127.0.0.1 answering every request with :attr:`answer`; it keeps what it was sent."""

    server: ThreadingHTTPServer
    answer: Answer = field(default_factory=lambda: Answer(500))
    requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def stub() -> Iterator[Stub]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.requests.append(dict(self.headers.items()))
            status, headers, body = state.answer.encode()
            self.send_response_only(status)  # no Date of http.server's own: the answer says what the clock is
            for name, value in headers + [("Content-Length", str(len(body)))]:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = Stub(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def backend(stub: Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The project's own backend for ``--endpoint-url <stub>``: credentials from the environment, one attempt."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    config = tmp_path / "config.toml"
    config.write_text("")
    settings = load(
        str(config),
        env={
            "PANOSTAGE_BACKEND_ENDPOINT_URL": stub.url,
            "PANOSTAGE_BACKEND_REGION": REGION,
            "PANOSTAGE_BACKEND_MAX_ATTEMPTS": "1",
        },
    ).settings
    opened = open_backend(settings)
    yield opened
    opened.close()


def refused(stub: Stub, backend: Any, answer: Answer) -> PanostageError:
    """What a ListDevices answered with ``answer`` becomes (the request having been signed for real)."""
    stub.answer = answer
    with pytest.raises(ClientError) as exc:
        backend.panorama().list_devices()
    assert stub.requests[-1]["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY}/")
    assert f"/{REGION}/panorama/aws4_request" in stub.requests[-1]["Authorization"]
    return to_error(exc.value)


def check_all(stub: Stub, backend: Any, cases: list[tuple[Answer, ExitCode, str]]) -> None:
    """Every case's exit code, and its words in the hint (or, for an unknown code, the message)."""
    wrong = []
    for answer, code, words in cases:
        error = refused(stub, backend, answer)
        said = f"{error.message}\n{error.hint or ''}"
        if error.exit_code != code or words not in said:
            wrong.append(
                f"{answer.status} {answer.code}: exit {int(error.exit_code)} (want {int(code)}); "
                f"want {words!r} in {said!r}"
            )
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------- every 403 is ACCESS_DENIED, each with its hint

FORBIDDEN = [
    (
        Answer(403, "ExpiredTokenException", "The security token included in the request is expired"),
        ExitCode.ACCESS_DENIED,
        "session token has expired",
    ),
    (
        Answer(403, "MissingAuthenticationTokenException", "Missing Authentication Token"),
        ExitCode.ACCESS_DENIED,
        "reached the service unsigned",
    ),
    (
        Answer(403, "InvalidClientTokenId", "The security token included in the request is invalid."),
        ExitCode.ACCESS_DENIED,
        "access key ID does not exist",
    ),
    (
        Answer(403, "UnrecognizedClientException", "The security token included in the request is invalid."),
        ExitCode.ACCESS_DENIED,
        "does not know this access key",
    ),
    (
        Answer(
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you "
            "provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ),
        ExitCode.ACCESS_DENIED,
        "AWS_SECRET_ACCESS_KEY",
    ),
    (
        Answer(403, "InvalidSignatureException", "Credential should be scoped to a valid region. "),
        ExitCode.ACCESS_DENIED,
        "--region",
    ),
    (
        Answer(
            403,
            "IncompleteSignatureException",
            "Authorization header requires 'Credential' parameter. Authorization=Bearer x",
        ),
        ExitCode.ACCESS_DENIED,
        "incomplete or malformed",
    ),
    (
        Answer(403, "OptInRequired", "The AWS Access Key Id needs a subscription for the service"),
        ExitCode.ACCESS_DENIED,
        "not subscribed",
    ),
    (
        Answer(
            403,
            "AccessDeniedException",
            "User: arn:aws:iam::123456789012:user/x is not authorized to perform: panorama:ListDevices",
        ),
        ExitCode.ACCESS_DENIED,
        "IAM policy",
    ),
    (Answer(403, "BrandNewAuthException", "something AWS adds next year"), ExitCode.ACCESS_DENIED, "HTTP 403"),
    (
        Answer(403, "ThrottlingException", "a code that means something else, at 403"),
        ExitCode.ACCESS_DENIED,
        "HTTP 403",
    ),
    (Answer(401, "NotAuthorized", "not authorized"), ExitCode.ACCESS_DENIED, "IAM policy"),
]


def test_every_403_is_access_denied_with_its_own_hint(stub, backend):
    check_all(stub, backend, FORBIDDEN)
    hints = {refused(stub, backend, answer).hint for answer, _code, _words in FORBIDDEN[:9]}
    assert len(hints) == 9, "each known code has a hint of its own"


def test_codes_decide_before_statuses(stub, backend):
    """AWS gives some codes other statuses in other services (FACTS: AccessDeniedException 400/403,
    IncompleteSignature 400, ThrottlingException 400, MalformedQueryString 404)."""
    check_all(
        stub,
        backend,
        [
            (Answer(400, "AccessDeniedException", "denied"), ExitCode.ACCESS_DENIED, "IAM policy"),
            (Answer(400, "IncompleteSignature", "incomplete"), ExitCode.ACCESS_DENIED, "incomplete or malformed"),
            (Answer(400, "NotAuthorized", "no"), ExitCode.ACCESS_DENIED, "IAM policy"),
            (Answer(400, "ThrottlingException", "Rate exceeded"), ExitCode.THROTTLED, "throttling"),
            (Answer(404, "MalformedQueryString", "bad query"), ExitCode.VALIDATION, "query string"),
            (Answer(413, "RequestEntityTooLargeException", "too large"), ExitCode.VALIDATION, "larger than"),
            (Answer(500, "InternalFailure", "oops"), ExitCode.SERVICE, "service failed"),
            (Answer(503, "ServiceUnavailable", "later"), ExitCode.SERVICE, "service failed"),
        ],
    )


# ---------------------------------------------------------------- a refused date names the clock


def offset_in(hint: str) -> tuple[int, str]:
    """(seconds, "behind" | "ahead of") from "this workstation's clock is 912 s behind the service's: ..."."""
    seconds, rest = hint.split("this workstation's clock is ", 1)[1].split(" s ", 1)
    return int(seconds), rest.split(" the service's")[0]


def test_a_refused_date_names_the_clock_with_the_measured_offset(stub, backend):
    cases = [
        (
            Answer(
                403,
                "InvalidSignatureException",
                "Signature expired: 20261130T170000Z is now earlier than 20261130T171500Z (20261130T173000Z - 15 min.)",
                clock_ahead=912,
            ),
            912,
            "behind",
        ),
        (
            Answer(
                403,
                "InvalidSignatureException",
                "Signature not yet current: 20261130T174600Z is still later than "
                "20261130T174500Z (20261130T173000Z + 15 min.)",
                clock_ahead=-1300,
            ),
            1300,
            "ahead of",
        ),
        (Answer(400, "RequestExpired", "Request has expired.", clock_ahead=3600), 3600, "behind"),
    ]
    for answer, seconds, side in cases:
        error = refused(stub, backend, answer)
        assert error.exit_code == ExitCode.ACCESS_DENIED and error.reason == "clock-skew", error.to_dict()
        assert "set it right (timedatectl set-ntp true)" in error.hint
        measured, said = offset_in(error.hint)
        assert said == side and abs(measured - seconds) <= 2, error.hint
        assert abs(error.details["clock_offset_seconds"] + (seconds if side == "behind" else -seconds)) <= 2
    # without a Date header there is nothing to measure: the clock is still named
    error = refused(stub, backend, Answer(400, "RequestExpired", "Request has expired.", clock_ahead=None))
    assert error.exit_code == ExitCode.ACCESS_DENIED and "clock" in error.hint and "timedatectl" in error.hint
    assert "clock_offset_seconds" not in error.details


# ---------------------------------------------------------------- anything else: a documented code by status


def test_unknown_codes_map_by_status_and_never_exit_1(stub, backend):
    check_all(
        stub,
        backend,
        [
            (Answer(400, "SomeNewValidationException", "bad"), ExitCode.VALIDATION, "invalid"),
            (Answer(401, "SomeNewException", "who?"), ExitCode.ACCESS_DENIED, "HTTP 401"),
            (Answer(402, "SomeNewException", "pay"), ExitCode.QUOTA, "quota"),
            (Answer(404, "SomeNewException", "gone"), ExitCode.NOT_FOUND, "no such"),
            (Answer(409, "SomeNewException", "busy"), ExitCode.CONFLICT, "in use"),
            (Answer(413, "SomeNewException", "big"), ExitCode.VALIDATION, "larger than"),
            (Answer(429, "SomeNewException", "slow down"), ExitCode.THROTTLED, "throttling"),
            (Answer(418, "TeapotException", "short and stout"), ExitCode.SERVICE, "TeapotException (HTTP 418)"),
            (Answer(451, "LegalException", "no"), ExitCode.SERVICE, "HTTP 451 with LegalException"),
            (Answer(500, "SomeNewException", "crash"), ExitCode.SERVICE, "service failed"),
            (Answer(504, None, "timeout"), ExitCode.SERVICE, "HTTP 504"),
        ],
    )


def test_error_bodies_that_are_not_json_objects(stub, backend):
    """A proxy's HTML page, an empty body, or JSON that is not an object (botocore's parser fails on those)."""
    html = b"<html><body><h1>403 Forbidden</h1>\n<p>Request blocked.</p></body></html>"
    check_all(
        stub,
        backend,
        [
            (Answer(403, raw=html, content_type="text/html"), ExitCode.ACCESS_DENIED, "Request blocked."),
            (
                Answer(502, raw=b"<html><body><b>Http/1.1 Bad Gateway</b></body></html>", content_type="text/html"),
                ExitCode.SERVICE,
                "HTTP 502",
            ),
            (Answer(400, raw=b""), ExitCode.VALIDATION, "HTTP 400 without an error code"),
            (Answer(500, raw=b""), ExitCode.SERVICE, "HTTP 500"),
            (Answer(404, raw=b'["not", "an", "object"]'), ExitCode.NOT_FOUND, "HTTP 404"),
            (Answer(418, raw=b"null"), ExitCode.SERVICE, "HTTP 418"),
            (Answer(400, raw=b'"just a string"'), ExitCode.VALIDATION, "just a string"),
            (Answer(403, raw=b'{"__type": 42, "message": ["x"]}'), ExitCode.ACCESS_DENIED, "HTTP 403"),
            (Answer(409, raw=b"\xff\xfe not text"), ExitCode.CONFLICT, "HTTP 409"),
        ],
    )


# ---------------------------------------------------------------- the real CLI


@pytest.mark.parametrize(
    "answer, code, words",
    [
        (
            Answer(403, "ExpiredTokenException", "The security token included in the request is expired"),
            ExitCode.ACCESS_DENIED,
            "session token has expired",
        ),
        (
            Answer(403, "MissingAuthenticationTokenException", "Missing Authentication Token"),
            ExitCode.ACCESS_DENIED,
            "unsigned",
        ),
        (
            Answer(
                403,
                "InvalidSignatureException",
                "Signature expired: 20261130T170000Z is now earlier than 20261130T171500Z (20261130T173000Z - 15 min.)",
                clock_ahead=912,
            ),
            ExitCode.ACCESS_DENIED,
            "s behind the service's",
        ),
        (Answer(418, "TeapotException", "short and stout"), ExitCode.SERVICE, "HTTP 418"),
        (Answer(404, raw=b"[1, 2]"), ExitCode.NOT_FOUND, "no such"),
        (
            Answer(403, raw=b"<html>Request blocked</html>", content_type="text/html"),
            ExitCode.ACCESS_DENIED,
            "HTTP 403 without an error code",
        ),
    ],
    ids=["expired-token", "missing-token", "clock", "unknown-418", "array-404", "html-403"],
)
def test_the_cli_exits_with_the_documented_code_and_the_hint(stub, tmp_path, answer, code, words):
    stub.answer = answer
    env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "PANOSTAGE_BACKEND_MAX_ATTEMPTS": "1"}
    shown = run_cli("--endpoint-url", stub.url, "--region", REGION, "device", "list", env=env, home=tmp_path)
    assert shown.returncode == code, shown.stderr
    assert "Traceback" not in shown.stderr and "hint: " in shown.stderr and words in shown.stderr, shown.stderr
    as_json = run_cli(
        "--endpoint-url", stub.url, "--region", REGION, "device", "list", "--json", env=env, home=tmp_path
    )
    error = json.loads(as_json.stderr.strip().splitlines()[-1])["error"]
    assert as_json.returncode == error["exit_code"] == code and "Traceback" not in as_json.stderr
    assert words in error["message"] + error["hint"]
    if answer.clock_ahead:
        measured, side = offset_in(error["hint"])
        assert side == "behind" and abs(measured - 912) <= 2
