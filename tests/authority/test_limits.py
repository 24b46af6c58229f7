"""The authority's input bounds, against a real `authority serve` process: JSON size, nesting and
number limits, finite and bounded admin inputs (API and CLI), http.server's own refusals as JSON, a
client's reset as one log line, and open files that do not grow under load."""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from agent.authority.admin import AdminError
from agent.errors import ExitCode
from tests.authority.test_process import run_cli
from tests.authority_kit import REGION, TEST_KEY, TEST_SECRET, unique
from tests.helpers import wait_until

TEN_YEARS = 10 * 365.25 * 86400


def signed(server, method: str, path: str, body: bytes = b"", service: str = "panorama") -> tuple[int, dict, Any]:
    """One SigV4-signed request with a body boto3 would never send; (status, headers, decoded JSON)."""
    request = AWSRequest(
        method=method, url=server.endpoint_url + path, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(TEST_KEY, TEST_SECRET), service, REGION).add_auth(request)
    conn = http.client.HTTPConnection(server.endpoint_url.split("//")[1], timeout=10)
    try:
        conn.request(method, path, body=body, headers=dict(request.headers.items()))
        response = conn.getresponse()
        return response.status, dict(response.headers), json.loads(response.read() or b"null")
    finally:
        conn.close()


def nested(levels: int) -> bytes:
    """A ProvisionDevice body whose arrays and objects nest ``levels`` deep (the outer object is one)."""
    inner = levels - 2
    return b'{"Name": "deep", "Tags": {"k": ' + b"[" * inner + b"]" * inner + b"}}"


def test_json_nested_too_deeply_is_refused_before_parsing(authority_server):
    for depth in (65, 5000, 400_000):
        status, headers, body = signed(authority_server, "POST", "/devices", nested(depth))
        assert (status, headers["x-amzn-ErrorType"]) == (400, "SerializationException"), (depth, body)
        assert "nested too deeply" in body["message"]
    # 64 levels parse (and then fail validation: a tag value is a string); brackets inside strings do not count
    status, headers, body = signed(authority_server, "POST", "/devices", nested(64))
    assert (status, headers["x-amzn-ErrorType"]) == (400, "ValidationException")
    text = json.dumps({"Name": unique("brackets"), "Description": "[{" * 60 + '\\"' + "]}" * 30}).encode()
    status, _, body = signed(authority_server, "POST", "/devices", text)
    assert status == 200, body
    assert "Traceback" not in authority_server.stderr_path.read_text()


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-2e308"])
def test_nan_infinity_and_numbers_out_of_range_are_not_json(authority_server, token):
    status, headers, body = signed(
        authority_server, "POST", "/devices", b'{"Name": "n", "Tags": {"k": "v"}, "x": ' + token + b"}"
    )
    assert (status, headers["x-amzn-ErrorType"]) == (400, "SerializationException"), body


def test_a_body_over_the_limit_is_413_before_it_is_read(authority_server):
    conn = http.client.HTTPConnection(authority_server.endpoint_url.split("//")[1], timeout=10)
    try:
        conn.putrequest("POST", "/devices")
        conn.putheader("Content-Length", str(1024 * 1024 + 1))
        conn.endheaders()  # the body never comes: the answer must not wait for it
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert (response.status, response.headers["x-amzn-ErrorType"]) == (413, "RequestEntityTooLargeException")
    assert "1048576 bytes" in body["message"]


# ---------------------------------------------------------------- admin inputs


def test_clock_admin_api_refuses_before_storing(fresh_authority):
    server = fresh_authority()
    admin = server.admin
    pan = server.client()
    for body, error_type in [
        (b'{"offset_seconds": NaN}', "SerializationException"),
        (b'{"advance_seconds": Infinity}', "SerializationException"),
        (b'{"offset_seconds": 1e400}', "SerializationException"),
        (b'{"advance_seconds": 1e12}', "ValidationException"),
        (b'{"offset_seconds": -315576001}', "ValidationException"),
        (b'{"offset_seconds": 1' + b"0" * 400 + b"}", "ValidationException"),
    ]:
        status, headers, answer = signed(server, "PUT", "/_local/clock", body, service="panostage")
        assert (status, headers["x-amzn-ErrorType"]) == (400, error_type), (body[:40], answer)
        assert admin.clock()["offset_seconds"] == 0, body[:40]
    admin.set_clock_offset(TEN_YEARS - 100)
    with pytest.raises(AdminError) as exc:
        admin.advance_clock(200)  # the step is small, the result is not
    assert exc.value.exit_code == ExitCode.VALIDATION and "ten years" in exc.value.message
    assert admin.clock()["offset_seconds"] == TEN_YEARS - 100
    admin.set_clock_offset(0)
    pan.list_devices()  # every call still answers
    assert "Traceback" not in server.stderr_path.read_text()


def test_clock_command_refuses_before_calling_out(tmp_path, fresh_authority):
    server = fresh_authority()
    aws = {"AWS_ACCESS_KEY_ID": TEST_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET}
    base = ["--endpoint-url", server.endpoint_url, "authority", "clock"]
    for flag, value in [
        ("--advance", "1e12"),
        ("--offset", "nan"),
        ("--offset", "inf"),
        ("--advance", "-inf"),
        ("--offset", "-4e8"),
    ]:
        out = run_cli(tmp_path, *base, flag, value, env=aws)
        assert out.returncode == ExitCode.USAGE and "ten years" in out.stderr, (flag, value, out.stderr)
        assert "Traceback" not in out.stderr
    assert server.admin.clock()["offset_seconds"] == 0
    assert run_cli(tmp_path, *base, "--offset", "3e8", env=aws).returncode == 0
    out = run_cli(tmp_path, *base, "--advance", "2e7", env=aws)  # the authority refuses the sum
    assert out.returncode == ExitCode.VALIDATION and "ten years" in out.stderr, out.stderr
    assert server.admin.clock()["offset_seconds"] == 3e8
    assert run_cli(tmp_path, *base, "--offset", "0", env=aws).returncode == 0
    server.client().list_devices()


def test_fault_settings_are_bounded(tmp_path, fresh_authority):
    server = fresh_authority()
    for rule in (b'{"latency_ms": NaN}', b'{"latency_ms": 1e12}', b'{"latency_ms": -1}', b'{"rate": 2}'):
        status, headers, body = signed(
            server, "PUT", "/_local/faults", b'{"rules": {"ListDevices": ' + rule + b"}}", service="panostage"
        )
        assert status == 400 and headers["x-amzn-ErrorType"] in ("ValidationException", "SerializationException"), body
    assert server.admin.faults()["rules"] == {}
    aws = {"AWS_ACCESS_KEY_ID": TEST_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET}
    for value in ("nan", "inf", "1e12"):
        out = run_cli(
            tmp_path,
            "--endpoint-url",
            server.endpoint_url,
            "authority",
            "fault",
            "set",
            "ListDevices",
            f"latency_ms={value}",
            env=aws,
        )
        assert out.returncode == ExitCode.USAGE and "latency_ms" in out.stderr, out.stderr
    assert server.admin.faults()["rules"] == {}
    server.client().list_devices()


# ---------------------------------------------------------------- the HTTP layer's own answers


def raw_exchange(server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is; read one HTTP answer (status, headers, body)."""
    host, port = server.endpoint_url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        reader = sock.makefile("rb")
        status = int(reader.readline().split()[1])
        headers = {}
        while line := reader.readline().decode("latin-1").strip():
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, reader.read(int(headers.get("content-length", 0)))


@pytest.mark.parametrize(
    "data, status, error_type",
    [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "RequestURITooLongException"),
        (
            b"GET /devices HTTP/1.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n",
            431,
            "RequestHeaderFieldsTooLargeException",
        ),
        (
            b"GET /devices HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(120)) + b"\r\n",
            431,
            "RequestHeaderFieldsTooLargeException",
        ),
        (b"NONSENSE\r\n\r\n", 400, "BadRequestException"),
        (b"GET /devices HTTP/7.1\r\n\r\n", 505, "HTTPVersionNotSupportedException"),
        (b"OPTIONS /devices HTTP/1.1\r\nHost: x\r\n\r\n", 501, "NotImplementedException"),
    ],
    ids=["414", "431-line", "431-count", "400", "505", "501"],
)
def test_http_layer_refusals_are_json_with_an_error_type(authority_server, data, status, error_type):
    got, headers, body = raw_exchange(authority_server, data)
    assert (got, headers.get("x-amzn-errortype")) == (status, error_type), body[:200]
    assert headers["content-type"] == "application/json" and json.loads(body)["message"]


def test_a_client_reset_is_one_log_line(fresh_authority):
    server = fresh_authority()
    host, port = server.endpoint_url.split("//")[1].split(":")

    def reset(extra: bytes) -> None:
        """One answered request on a connection, then ``extra``, then a TCP reset (SO_LINGER 0)."""
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /_local/health HTTP/1.1\r\nHost: x\r\n\r\n")
            reader = sock.makefile("rb")
            while reader.readline().strip():
                pass  # status line and headers: the handler thread is running and answered
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if extra:
                sock.sendall(extra)

    reset(b"")  # idle between requests
    reset(b'POST /devices HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"Name"')  # half a body

    def lines() -> list[str]:
        return server.stderr_path.read_text().splitlines()

    wait_until(
        lambda: sum("lost" in line for line in lines()) >= 2 or any("Traceback" in line for line in lines()),
        what="the authority's log lines for two resets",
    )
    text = server.stderr_path.read_text()
    assert "Traceback" not in text and "Exception occurred" not in text, text
    assert sum("lost" in line for line in lines()) == 2, text
    assert server.admin.health()["status"] == "ok"


def test_open_files_do_not_grow_with_requests(fresh_authority):
    """1,000 signed calls, each on a connection (and so a handler thread) of its own: once they are done
    the authority holds exactly the descriptors it held before (each thread's SQLite connection, with its
    database, WAL and shared-memory files, closes when the thread's HTTP connection ends)."""
    server = fresh_authority()
    pid = server.info["pid"]
    address = server.endpoint_url.split("//")[1]

    def call() -> None:
        request = AWSRequest(method="GET", url=server.endpoint_url + "/devices?MaxResults=1", data=b"")
        SigV4Auth(Credentials(TEST_KEY, TEST_SECRET), "panorama", REGION).add_auth(request)
        conn = http.client.HTTPConnection(address, timeout=10)
        conn.request("GET", "/devices?MaxResults=1", headers=dict(request.headers.items()))
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200

    def open_files() -> list[str]:
        found = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except FileNotFoundError:  # closed while listed
                pass
        return found

    def idle() -> bool:
        return not any("authority.sqlite3" in target for target in open_files())

    call()  # the server thread is up and one request has come and gone
    wait_until(idle, what="the warm-up request's database connection to close")
    before = len(open_files())
    for _ in range(1000):
        call()
    wait_until(
        lambda: idle() and len(open_files()) <= before,
        timeout=10,
        what=f"the descriptors back to {before}: {sorted(open_files())}",
    )
    assert len(open_files()) == before
