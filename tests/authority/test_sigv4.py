"""SigV4 verification: real boto3 calls that must pass, and every way to fail with 403 and the error
code and message AWS's JSON services answer for it."""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from agent.authority import sigv4
from agent.authority.apierror import ApiError
from tests.authority_kit import REGION, TEST_KEY, TEST_SECRET, unique

MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method."
)


def send(
    server,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    service: str = "panorama",
    key: str = TEST_KEY,
    secret: str = TEST_SECRET,
    sign: bool = True,
    tamper=None,
    region: str = REGION,
):
    """Sign (or not) with botocore, optionally change the request afterwards, send it."""
    url = server.endpoint_url + path
    request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
    if sign:
        SigV4Auth(Credentials(key, secret), service, region).add_auth(request)
    headers = dict(request.headers.items())
    if tamper:
        url, body, headers = tamper(url, body, headers)
    req = urllib.request.Request(url, data=body or None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        assert exc.headers.get("x-amzn-ErrorType")
        return exc.code, {"type": exc.headers["x-amzn-ErrorType"], **json.loads(exc.read())}


def refusal(exc: pytest.ExceptionInfo) -> tuple[int, str, str]:
    response = exc.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response["Error"]["Message"]


def test_unsigned_request_is_refused(authority_server):
    status, body = send(authority_server, "GET", "/devices", sign=False)
    assert (status, body["type"], body["message"]) == (
        403,
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    )


def test_unknown_access_key_is_refused(authority_server):
    pan = authority_server.client(key="AKIDSOMEONEELSE00000")
    with pytest.raises(ClientError) as exc:
        pan.list_devices()
    assert refusal(exc) == (
        403,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )


def test_wrong_secret_is_a_bad_signature(authority_server):
    pan = authority_server.client(secret="not-the-secret")
    with pytest.raises(ClientError) as exc:
        pan.list_devices()
    status, code, message = refusal(exc)
    assert (status, code) == (403, "InvalidSignatureException") and message.startswith(MISMATCH)


@pytest.mark.parametrize(
    "path, wrong_service, right_service",
    [
        ("/devices", "snow-device-management", "panorama"),
        ("/managed-devices", "panorama", "snow-device-management"),
        ("/devices", "s3", "panorama"),
    ],
)
def test_credential_scope_must_name_the_routes_service(authority_server, path, wrong_service, right_service):
    status, body = send(authority_server, "GET", path, service=wrong_service)
    assert (status, body["type"]) == (403, "InvalidSignatureException")
    assert body["message"] == f"Credential should be scoped to correct service: '{right_service}'. "


def test_credential_scope_must_name_an_accepted_region(authority_server):
    """The authority accepts its backend region (the kit's); a client signing for another is refused, so no
    device ever takes a region nobody configured."""
    lost = authority_server.client(region="zz-nowhere-9")
    with pytest.raises(ClientError) as exc:
        lost.list_devices()
    assert refusal(exc) == (403, "InvalidSignatureException", "Credential should be scoped to a valid region. ")
    with pytest.raises(ClientError) as exc:
        lost.provision_device(Name=unique("zz"))
    assert refusal(exc)[1] == "InvalidSignatureException"
    status, body = send(authority_server, "GET", "/_local/faults", service="panostage", region="us-east-1")
    assert (status, body["type"]) == (403, "InvalidSignatureException")  # the admin API as well


def test_configured_regions_replace_the_backend_region(fresh_authority):
    server = fresh_authority(env={"PANOSTAGE_AUTHORITY_REGIONS": "us-west-2, eu-west-1"})
    assert server.info["regions"] == ["us-west-2", "eu-west-1"]
    for region in ("us-west-2", "eu-west-1"):
        device = server.client(region=region).provision_device(Name=unique(region))["Arn"]
        assert device.startswith(f"arn:aws:panorama:{region}:")
    with pytest.raises(ClientError) as exc:
        server.client(region=REGION).list_devices()  # the backend region no longer is one of them
    assert refusal(exc)[:2] == (403, "InvalidSignatureException")


def test_tampered_body_query_and_path_are_refused(authority_server):
    def body_swap(url, body, headers):
        return url, b'{"Name": "other"}', {**headers, "Content-Length": "17"}

    status, body = send(authority_server, "POST", "/devices", body=b'{"Name": "mine1"}', tamper=body_swap)
    assert (status, body["type"]) == (403, "InvalidSignatureException") and body["message"].startswith(MISMATCH)

    status, body = send(
        authority_server,
        "GET",
        "/devices?MaxResults=2",
        tamper=lambda u, b, h: (u.replace("MaxResults=2", "MaxResults=3"), b, h),
    )
    assert (status, body["type"]) == (403, "InvalidSignatureException")
    status, body = send(
        authority_server,
        "GET",
        "/devices/device-aaa",
        tamper=lambda u, b, h: (u.replace("device-aaa", "device-bbb"), b, h),
    )
    assert (status, body["type"]) == (403, "InvalidSignatureException")


def test_verifier_accepts_queries_ids_in_paths_and_empty_bodies(authority_server):
    pan = authority_server.client()
    raw = authority_server.client(validate=False)
    prefix = unique("sig") + " a/b+c%d~é"  # every awkward character a query can carry
    assert pan.list_devices(NameFilter=prefix, MaxResults=5, SortBy="NAME", SortOrder="DESCENDING")["Devices"] == []
    device = pan.provision_device(Name=unique())["DeviceId"]
    assert pan.describe_device(DeviceId=device)["DeviceId"] == device
    assert pan.list_devices_jobs(DeviceId=device)["DeviceJobs"] == []
    assert pan.delete_device(DeviceId=device)["DeviceId"] == device  # DELETE, empty body
    # an ID that needs percent-encoding in the path passes the signature check and fails validation instead
    with pytest.raises(ClientError) as exc:
        raw.describe_device(DeviceId="dev ice:é/x")
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    snow = authority_server.client("snow-device-management")
    with pytest.raises(ClientError) as exc:
        snow.describe_execution(taskId="st-a b", managedDeviceId="smd/é:1")
    assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_admin_api_needs_a_signature_but_health_does_not(authority_server):
    status, body = send(authority_server, "GET", "/_local/faults", sign=False)
    assert (status, body["type"]) == (403, "MissingAuthenticationTokenException")
    status, body = send(authority_server, "GET", "/_local/faults", service="panostage")
    assert status == 200 and "rules" in body
    status, body = send(authority_server, "GET", "/_local/health", sign=False)
    assert status == 200 and body["status"] == "ok"


STAMP = r"(\d{8}T\d{6}Z)"


def _stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def test_stale_date_is_refused_in_aws_words_and_admin_still_works(fresh_authority):
    server = fresh_authority()
    pan = server.client()
    pan.list_devices()
    server.admin.set_clock_offset(16 * 60)
    with pytest.raises(ClientError) as exc:
        pan.list_devices()
    status, code, message = refusal(exc)
    assert (status, code) == (403, "InvalidSignatureException")
    # "Signature expired: 20261130T170000Z is now earlier than 20261130T171500Z (20261130T173000Z - 15 min.)"
    found = re.fullmatch(f"Signature expired: {STAMP} is now earlier than {STAMP} \\({STAMP} - 15 min\\.\\)", message)
    assert found, message
    signed, limit, now = (_stamp(found[i]) for i in (1, 2, 3))
    assert limit == now - timedelta(minutes=15) and signed < limit
    assert abs((now - signed).total_seconds() - 16 * 60) <= 5
    server.admin.set_clock_offset(14 * 60)  # admin calls are checked against the unshifted clock
    pan.list_devices()
    server.admin.set_clock_offset(-16 * 60)
    with pytest.raises(ClientError) as exc:
        pan.list_devices()
    status, code, message = refusal(exc)
    found = re.fullmatch(
        f"Signature not yet current: {STAMP} is still later than {STAMP} \\({STAMP} \\+ 15 min\\.\\)", message
    )
    assert (status, code) == (403, "InvalidSignatureException") and found, message
    signed, limit, now = (_stamp(found[i]) for i in (1, 2, 3))
    assert limit == now + timedelta(minutes=15) and signed > limit


def test_the_cli_names_the_clock_when_the_authority_refuses_the_date(tmp_path, fresh_authority):
    """End to end: the authority's clock 20 minutes ahead refuses the CLI's signature as expired, and the
    CLI (exit 7) names this workstation's clock and the offset it measured from the answer's Date."""
    from tests.authority.test_process import run_cli

    server = fresh_authority()
    server.admin.set_clock_offset(20 * 60)
    aws = {"AWS_ACCESS_KEY_ID": TEST_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET, "PANOSTAGE_BACKEND_MAX_ATTEMPTS": "1"}
    out = run_cli(tmp_path, "--endpoint-url", server.endpoint_url, "device", "list", "--json", env=aws)
    error = json.loads(out.stderr.strip().splitlines()[-1])["error"]
    assert out.returncode == error["exit_code"] == 7 and error["reason"] == "clock-skew", out.stderr
    assert "Signature expired" in error["message"] and "Traceback" not in out.stderr
    assert "s behind the service's: set it right (timedatectl set-ntp true)" in error["hint"]
    assert abs(error["details"]["clock_offset_seconds"] + 20 * 60) <= 3


# ---------------------------------------------------------------- the verifier on its own


def _signed(method: str, url: str, body: bytes = b"", headers: dict | None = None, service: str = "panorama"):
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(TEST_KEY, TEST_SECRET), service, "ap-south-1").add_auth(request)
    message = http.client.HTTPMessage()
    for name, value in request.headers.items():
        message[name] = value
    message["Host"] = url.split("/")[2]
    path, _, query = url.split("/", 3)[3].partition("?")
    return message, "/" + path, query


def _verify(message, path, query, body=b"", method="GET", services=("panorama",), regions=None, now=None):
    return sigv4.verify(
        method=method,
        raw_path=path,
        query=query,
        headers=message,
        body=body,
        credentials={TEST_KEY: TEST_SECRET},
        now=now or datetime.now(UTC),
        services=services,
        regions=regions,
    )


def _refused(message, path, query, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as exc:
        _verify(message, path, query, **kwargs)
    assert exc.value.status == 403
    return exc.value


def test_verify_returns_the_caller_region_and_service():
    message, path, query = _signed("GET", "http://127.0.0.1:1/devices?NameFilter=a%20b&MaxResults=3")
    caller = _verify(message, path, query)
    assert (caller.access_key_id, caller.region, caller.service) == (TEST_KEY, "ap-south-1", "panorama")


def test_verify_checks_signed_payload_hash():
    body = b'{"Name": "x"}'
    message, path, query = _signed(
        "POST", "http://127.0.0.1:1/devices", body, headers={"X-Amz-Content-SHA256": "0" * 64}
    )
    error = _refused(message, path, query, body=body, method="POST")
    assert error.error_type == "InvalidSignatureException" and "'x-amz-content-sha256'" in error.message


@pytest.mark.parametrize(
    "header, words",
    [
        ("AWS4-HMAC-SHA512 Credential=x", "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA512'."),
        (
            "AWS4-HMAC-SHA256 nonsense",
            "'nonsense' not a valid key=value pair (missing equal-sign) in Authorization header",
        ),
        (
            "Bearer abc",
            "Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' "
            "parameter. Authorization header requires 'SignedHeaders' parameter. Authorization=Bearer abc",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20261130/eu-central-1/panorama/aws4_request, Signature=00",
            "Authorization header requires 'SignedHeaders' parameter.",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/eu-central-1/panorama/aws4_request, SignedHeaders=host, Signature=00",
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got",
        ),
    ],
)
def test_verify_refuses_other_algorithms_and_garbage_as_incomplete(header, words):
    message, path, query = _signed("GET", "http://127.0.0.1:1/devices")
    message.replace_header("Authorization", header)
    error = _refused(message, path, query)
    assert error.error_type == "IncompleteSignatureException" and words in error.message, error.message


def test_verify_needs_a_well_formed_x_amz_date_and_a_signed_host():
    message, path, query = _signed("GET", "http://127.0.0.1:1/devices")
    stamp = message["X-Amz-Date"]
    del message["X-Amz-Date"]
    error = _refused(message, path, query)
    assert error.error_type == "IncompleteSignatureException" and "'X-Amz-Date'" in error.message
    message["X-Amz-Date"] = stamp[:8] + "T25"
    error = _refused(message, path, query)
    assert error.error_type == "IncompleteSignatureException" and "ISO8601 Long Format" in error.message
    message.replace_header("X-Amz-Date", stamp)
    message.replace_header("Authorization", message["Authorization"].replace("SignedHeaders=host;", "SignedHeaders="))
    error = _refused(message, path, query)
    assert error.error_type == "IncompleteSignatureException" and "'Host'" in error.message


def test_verify_checks_the_scopes_terminator_date_region_and_key():
    message, path, query = _signed("GET", "http://127.0.0.1:1/devices")
    auth = message["Authorization"]
    message.replace_header("Authorization", auth.replace("/aws4_request", "/aws5_request"))
    error = _refused(message, path, query)
    assert error.error_type == "IncompleteSignatureException" and "'aws4_request', not 'aws5_request'" in error.message
    stamp = message["X-Amz-Date"]
    message.replace_header("Authorization", auth.replace(f"/{stamp[:8]}/", "/19991231/"))
    error = _refused(message, path, query)
    assert error.error_type == "InvalidSignatureException"
    assert error.message.startswith(
        f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
        f"from HTTP: '19991231' != '{stamp[:8]}'"
    )
    message.replace_header("Authorization", auth)
    error = _refused(message, path, query, regions=("eu-central-1", "us-east-1"))
    assert (error.error_type, error.message) == (
        "InvalidSignatureException",
        "Credential should be scoped to a valid region. ",
    )
    assert _verify(message, path, query, regions=("ap-south-1",)).region == "ap-south-1"
    message.replace_header("Authorization", auth.replace(f"Credential={TEST_KEY}/", "Credential=AKIDUNKNOWN/"))
    error = _refused(message, path, query)
    assert error.error_type == "UnrecognizedClientException"


def test_verify_names_the_window_a_date_missed_in_aws_words():
    message, path, query = _signed("GET", "http://127.0.0.1:1/devices")
    signed = _stamp(message["X-Amz-Date"])
    error = _refused(message, path, query, now=signed + timedelta(minutes=30))
    s = lambda t: t.strftime("%Y%m%dT%H%M%SZ")  # noqa: E731
    assert (error.error_type, error.message) == (
        "InvalidSignatureException",
        f"Signature expired: {s(signed)} is now earlier than {s(signed + timedelta(minutes=15))} "
        f"({s(signed + timedelta(minutes=30))} - 15 min.)",
    )
    error = _refused(message, path, query, now=signed - timedelta(minutes=16))
    assert error.message == (
        f"Signature not yet current: {s(signed)} is still later than "
        f"{s(signed + timedelta(minutes=-1))} ({s(signed - timedelta(minutes=16))} + 15 min.)"
    )
    assert _verify(message, path, query, now=signed + timedelta(minutes=15)).service == "panorama"  # the edge passes
