"""Fault injection through the admin API and --fault, seen from real boto3 clients."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError

from agent.authority.admin import AdminError
from agent.authority.claim import ClaimRejected, build_claim, post_claim
from tests.authority.test_claim import authority_now, provision
from tests.authority_kit import unique


@pytest.fixture
def admin(authority_server):
    authority_server.admin.clear_faults()
    yield authority_server.admin
    authority_server.admin.clear_faults()


def code_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    return exc.value.response["ResponseMetadata"]["HTTPStatusCode"], exc.value.response["Error"]["Code"]


def test_error_for_the_next_n_calls_only(authority_server, admin):
    pan = authority_server.client()
    admin.set_fault("DescribeDevice", error=500, count=2)
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            pan.describe_device(DeviceId="device-whatever")
        assert code_of(exc) == (500, "InternalServerException")
    with pytest.raises(ClientError) as exc:  # budget spent: the real answer again
        pan.describe_device(DeviceId="device-whatever")
    assert code_of(exc) == (404, "ResourceNotFoundException")
    assert admin.faults()["rules"] == {}


@pytest.mark.parametrize(
    "status, code, fields",
    [
        (429, "ThrottlingException", ()),
        (409, "ConflictException", ("ResourceId", "ResourceType")),
        (402, "ServiceQuotaExceededException", ("QuotaCode", "ServiceCode")),
        (403, "AccessDeniedException", ()),
        (500, "InternalServerException", ()),
    ],
)
def test_each_injectable_error(authority_server, admin, status, code, fields):
    admin.set_fault("ProvisionDevice", error=status, count=1)
    with pytest.raises(ClientError) as exc:
        authority_server.client().provision_device(Name=unique())
    assert code_of(exc) == (status, code)
    for name in fields:
        assert exc.value.response[name]
    if status == 429:
        assert exc.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"


def test_retrying_client_gets_through_a_counted_fault(authority_server, admin):
    admin.set_fault("ListDevicesJobs", error=500, count=1)
    out = authority_server.client(attempts=3).list_devices_jobs(MaxResults=1)
    assert out["ResponseMetadata"]["RetryAttempts"] == 1


def test_rate_is_seeded_and_service_qualified_names_pick_one_service(authority_server, admin):
    pan = authority_server.client()
    snow = authority_server.client("snow-device-management")

    def pattern() -> list[bool]:
        admin.set_faults({"panorama:ListDevices": {"error": 500, "rate": 0.5}}, seed=42, replace=True)
        outcome = []
        for _ in range(24):
            try:
                pan.list_devices(MaxResults=1)
                outcome.append(True)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "InternalServerException"
                outcome.append(False)
        snow.list_devices()  # the Snow operation of the same name is untouched
        return outcome

    first, second = pattern(), pattern()
    assert first == second
    assert 0 < first.count(False) < 24


def test_latency(authority_server, admin):
    admin.set_fault("DescribePackageImportJob", latency_ms=400, count=1)
    pan = authority_server.client()
    started = time.monotonic()
    with pytest.raises(ClientError):
        pan.describe_package_import_job(JobId="job-none")
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    with pytest.raises(ClientError):
        pan.describe_package_import_job(JobId="job-none")
    assert time.monotonic() - started < 0.4


def test_drop_connection(authority_server, admin):
    admin.set_fault("ListDevices", drop_connection=True, count=1)
    with pytest.raises(ConnectionClosedError):
        authority_server.client().list_devices()
    authority_server.client().list_devices()


@pytest.mark.parametrize("rule", [{"error": 500}, {"drop_connection": True}])
def test_after_commit_creates_the_device_and_loses_the_answer(authority_server, admin, rule):
    name = unique("lost")
    pan = authority_server.client()
    admin.set_fault("ProvisionDevice", after_commit=True, count=1, **rule)
    with pytest.raises((ClientError, ConnectionClosedError)):
        pan.provision_device(Name=name)
    (found,) = pan.list_devices(NameFilter=name)["Devices"]
    assert found["Name"] == name and found["CreatedTime"]
    with pytest.raises(ClientError) as exc:  # and a retry with the same name is a conflict naming it
        pan.provision_device(Name=name)
    assert exc.value.response["ResourceId"] == found["DeviceId"]


def test_claim_faults(authority_server, admin):
    device, cert, key = provision(authority_server)
    admin.set_fault("Claim", error=429, count=1)
    claim = build_claim(device, cert, key, authority_now(authority_server))
    with pytest.raises(ClaimRejected) as exc:
        post_claim(authority_server.endpoint_url, claim)
    assert (exc.value.status, exc.value.error_type) == (429, "ThrottlingException")
    assert post_claim(authority_server.endpoint_url, claim)["ProvisioningStatus"] == "SUCCEEDED"


def test_admin_api_refuses_bad_rules_and_unsigned_calls(authority_server, admin):
    for op, rule in [
        ("NoSuchOperation", {"error": 500}),
        ("ProvisionDevice", {"error": 418}),
        ("ProvisionDevice", {"bogus": 1}),
        ("ListDevices", {"archive": "not_zip"}),
        ("ProvisionDevice", {"rate": 2}),
        ("ProvisionDevice", {"after_commit": True}),
    ]:
        with pytest.raises(AdminError) as exc:
            admin.set_faults({op: rule})
        assert exc.value.details["status"] == 400, (op, rule)
    from agent.authority.admin import AdminClient

    with pytest.raises(AdminError) as exc:
        AdminClient(authority_server.endpoint_url, "AKIDWRONG", "x").faults()
    assert exc.value.details["status"] == 403
    assert admin.faults()["rules"] == {}


def test_faults_given_at_start(fresh_authority):
    server = fresh_authority(args=["--fault", "ProvisionDevice:error=402,count=1", "--fault-seed", "3"])
    assert server.admin.faults() == {"seed": 3, "rules": {"ProvisionDevice": {"error": 402, "rate": 1.0, "count": 1}}}
    pan = server.client()
    with pytest.raises(ClientError) as exc:
        pan.provision_device(Name="x")
    assert code_of(exc) == (402, "ServiceQuotaExceededException")
    pan.provision_device(Name="x")
