"""SigV4 verification: real boto3 calls that must pass, and every way to fail with 403."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from agent.authority import sigv4
from agent.authority.apierror import ApiError
from tests.authority_kit import REGION, TEST_KEY, TEST_SECRET, unique


def send(server, method: str, path: str, *, body: bytes = b"", service: str = "panorama", key: str = TEST_KEY,
         secret: str = TEST_SECRET, sign: bool = True, tamper=None):
    """Sign (or not) with botocore, optionally change the request afterwards, send it."""
    url = server.endpoint_url + path
    request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
    if sign:
        SigV4Auth(Credentials(key, secret), service, REGION).add_auth(request)
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


def test_unsigned_request_is_refused(authority_server):
    status, body = send(authority_server, "GET", "/devices", sign=False)
    assert status == 403 and body["type"] == "AccessDeniedException"
    assert "not signed" in body["message"]


def test_unknown_access_key_is_refused(authority_server):
    pan = authority_server.client(key="AKIDSOMEONEELSE00000")
    with pytest.raises(ClientError) as exc:
        pan.list_devices()
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "AKIDSOMEONEELSE00000 is not known" in exc.value.response["Error"]["Message"]


def test_wrong_secret_is_a_bad_signature(authority_server):
    pan = authority_server.client(secret="not-the-secret")
    with pytest.raises(ClientError) as exc:
        pan.list_devices()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "signature does not match" in exc.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    "path, wrong_service",
    [("/devices", "snow-device-management"), ("/managed-devices", "panorama"), ("/devices", "s3")],
)
def test_credential_scope_must_name_the_routes_service(authority_server, path, wrong_service):
    status, body = send(authority_server, "GET", path, service=wrong_service)
    assert status == 403 and "credential scope names service" in body["message"]


def test_tampered_body_query_and_path_are_refused(authority_server):
    def body_swap(url, body, headers):
        return url, b'{"Name": "other"}', {**headers, "Content-Length": "17"}

    status, body = send(authority_server, "POST", "/devices", body=b'{"Name": "mine1"}', tamper=body_swap)
    assert status == 403 and "signature does not match" in body["message"]

    status, body = send(authority_server, "GET", "/devices?MaxResults=2",
                        tamper=lambda u, b, h: (u.replace("MaxResults=2", "MaxResults=3"), b, h))
    assert status == 403
    status, body = send(authority_server, "GET", "/devices/device-aaa",
                        tamper=lambda u, b, h: (u.replace("device-aaa", "device-bbb"), b, h))
    assert status == 403


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
    assert status == 403
    status, body = send(authority_server, "GET", "/_local/faults", service="panostage")
    assert status == 200 and "rules" in body
    status, body = send(authority_server, "GET", "/_local/health", sign=False)
    assert status == 200 and body["status"] == "ok"


def test_stale_date_is_refused_and_admin_still_works(fresh_authority):
    server = fresh_authority()
    pan = server.client()
    pan.list_devices()
    server.admin.set_clock_offset(16 * 60)
    with pytest.raises(ClientError) as exc:
        pan.list_devices()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "more than 15 minutes" in exc.value.response["Error"]["Message"]
    server.admin.set_clock_offset(14 * 60)  # admin calls are checked against the unshifted clock
    pan.list_devices()
    server.admin.set_clock_offset(-16 * 60)
    with pytest.raises(ClientError):
        pan.list_devices()


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


def _verify(message, path, query, body=b"", method="GET", services=("panorama",)):
    return sigv4.verify(method=method, raw_path=path, query=query, headers=message, body=body,
                        credentials={TEST_KEY: TEST_SECRET}, now=datetime.now(timezone.utc), services=services)


def test_verify_returns_the_caller_region_and_service():
    message, path, query = _signed("GET", "http://127.0.0.1:1/devices?NameFilter=a%20b&MaxResults=3")
    caller = _verify(message, path, query)
    assert (caller.access_key_id, caller.region, caller.service) == (TEST_KEY, "ap-south-1", "panorama")


def test_verify_checks_signed_payload_hash():
    body = b'{"Name": "x"}'
    message, path, query = _signed("POST", "http://127.0.0.1:1/devices", body,
                                   headers={"X-Amz-Content-SHA256": "0" * 64})
    with pytest.raises(ApiError) as exc:
        _verify(message, path, query, body, method="POST")
    assert exc.value.status == 403 and "X-Amz-Content-SHA256" in exc.value.message


def test_verify_refuses_other_algorithms_and_garbage():
    message, path, query = _signed("GET", "http://127.0.0.1:1/devices")
    for bad in ("AWS4-HMAC-SHA512 Credential=x", "AWS4-HMAC-SHA256 nonsense", "Bearer abc"):
        message.replace_header("Authorization", bad)
        with pytest.raises(ApiError) as exc:
            _verify(message, path, query)
        assert exc.value.status == 403
