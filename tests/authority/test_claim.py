"""The appliance's claim: certificate-authenticated registration of a provisioned device."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization

from agent.authority.claim import ClaimRejected, build_claim, post_claim
from tests.authority.test_archive import find_certificates, members, split
from tests.authority_kit import unique


def provision(server, **kwargs) -> tuple[str, bytes, bytes]:
    """(device ID, certificate PEM, key PEM) from a real ProvisionDevice."""
    out = server.client().provision_device(Name=kwargs.pop("name", None) or unique(), **kwargs)
    files = members(out["Certificates"])
    device_cert, _ = split(find_certificates(files))
    key = next(d for d in files.values() if b"PRIVATE KEY" in d)
    return out["DeviceId"], device_cert.public_bytes(serialization.Encoding.PEM), key


def authority_now(server) -> float:
    return server.admin.clock()["now"]


def refused(server, claim: dict) -> ClaimRejected:
    """The authority's refusal of ``claim`` (fails the test if it was accepted)."""
    with pytest.raises(ClaimRejected) as exc:
        post_claim(server.endpoint_url, claim)
    return exc.value


def status_of(server, device_id: str) -> dict:
    return server.client().describe_device(DeviceId=device_id)


def test_claim_succeeds_and_the_device_comes_online(authority_server):
    device, cert, key = provision(authority_server)
    answer = post_claim(
        authority_server.endpoint_url,
        build_claim(device, cert, key, authority_now(authority_server), serial_number="1234567890"),
    )
    assert answer == {"DeviceId": device, "ProvisioningStatus": "SUCCEEDED", "DeviceConnectionStatus": "ONLINE"}
    described = status_of(authority_server, device)
    assert described["ProvisioningStatus"] == "SUCCEEDED"
    assert described["DeviceConnectionStatus"] == "ONLINE"
    assert described["DeviceAggregatedStatus"] == "ONLINE"
    assert described["CurrentSoftware"] and described["LatestSoftware"]
    assert isinstance(described["LeaseExpirationTime"], datetime)
    assert described["SerialNumber"] == "1234567890"
    assert described["CurrentNetworkingStatus"]["Ethernet0Status"]["ConnectionStatus"] == "CONNECTED"


def test_a_second_claim_is_a_conflict(authority_server):
    device, cert, key = provision(authority_server)
    claim = build_claim(device, cert, key, authority_now(authority_server))
    post_claim(authority_server.endpoint_url, claim)
    rejected = refused(authority_server, claim)  # replayed as is
    assert (rejected.status, rejected.error_type) == (409, "ConflictException")
    assert "SUCCEEDED" in rejected.message


def test_stale_or_future_timestamp_is_refused_without_changing_the_device(authority_server):
    device, cert, key = provision(authority_server)
    for skew in (-301, 400):
        rejected = refused(authority_server, build_claim(device, cert, key, authority_now(authority_server) + skew))
        assert rejected.status == 403 and "stale" in rejected.message
    assert status_of(authority_server, device)["ProvisioningStatus"] == "AWAITING_PROVISIONING"


def test_bad_signature_is_refused_without_changing_the_device(authority_server):
    device, cert, _ = provision(authority_server)
    _, _, other_key = provision(authority_server)
    rejected = refused(authority_server, build_claim(device, cert, other_key, authority_now(authority_server)))
    assert rejected.status == 403 and "signature" in rejected.message
    assert status_of(authority_server, device)["ProvisioningStatus"] == "AWAITING_PROVISIONING"


def test_another_devices_certificate_fails_the_device(authority_server):
    device, _, _ = provision(authority_server)
    _, other_cert, other_key = provision(authority_server)
    rejected = refused(authority_server, build_claim(device, other_cert, other_key, authority_now(authority_server)))
    assert rejected.status == 403 and rejected.body["ProvisioningStatus"] == "FAILED"
    assert "not issued to device" in rejected.message
    described = status_of(authority_server, device)
    assert described["ProvisioningStatus"] == "FAILED" and described["DeviceAggregatedStatus"] == "FAILED"


@pytest.mark.parametrize("kind, reason", [("wrong_ca", "not issued by this authority"), ("expired_cert", "expired")])
def test_faulty_archives_fail_the_claim(authority_server, kind, reason):
    authority_server.admin.set_fault("ProvisionDevice", archive=kind, count=1)
    try:
        device, cert, key = provision(authority_server)
    finally:
        authority_server.admin.clear_faults()
    rejected = refused(authority_server, build_claim(device, cert, key, authority_now(authority_server)))
    assert rejected.status == 403 and reason in rejected.message
    assert status_of(authority_server, device)["ProvisioningStatus"] == "FAILED"


def test_certificate_expired_by_the_clock_fails_the_claim(fresh_authority):
    server = fresh_authority()
    device, cert, key = provision(server)
    server.admin.advance_clock(301)
    rejected = refused(server, build_claim(device, cert, key, authority_now(server)))
    assert rejected.status == 403 and "expired" in rejected.message
    described = status_of(server, device)
    assert described["ProvisioningStatus"] == "FAILED" and described["DeviceConnectionStatus"] == "ERROR"
    # and a FAILED device is not claimed again
    rejected = refused(server, build_claim(device, cert, key, authority_now(server)))
    assert rejected.status == 409


def test_claim_of_unknown_or_deleted_device_and_malformed_claims(authority_server):
    device, cert, key = provision(authority_server)
    rejected = refused(authority_server, build_claim("device-unknown", cert, key, authority_now(authority_server)))
    assert rejected.status == 404
    authority_server.client().delete_device(DeviceId=device)
    rejected = refused(authority_server, build_claim(device, cert, key, authority_now(authority_server)))
    assert rejected.status == 409 and "DELETING" in rejected.message
    for body in (
        {"DeviceId": device},
        {"DeviceId": device, "Certificate": "junk", "Timestamp": 1, "Signature": "AA=="},
    ):
        rejected = refused(authority_server, body)
        assert rejected.status == 400 and rejected.error_type == "ValidationException"
    req = urllib.request.Request(authority_server.endpoint_url + "/_local/claim", data=b"{nope", method="POST")
    with pytest.raises(urllib.error.HTTPError) as http_exc:
        urllib.request.urlopen(req, timeout=10)
    assert http_exc.value.code == 400 and json.loads(http_exc.value.read())["Reason"] == "CANNOT_PARSE"


def test_job_after_claim_is_accepted(authority_server):
    device, cert, key = provision(authority_server)
    pan = authority_server.client()
    with pytest.raises(ClientError):
        pan.create_job_for_devices(DeviceIds=[device], JobType="REBOOT")
    post_claim(authority_server.endpoint_url, build_claim(device, cert, key, authority_now(authority_server)))
    jobs = pan.create_job_for_devices(DeviceIds=[device], JobType="REBOOT")["Jobs"]
    assert jobs[0]["DeviceId"] == device and jobs[0]["JobId"]
