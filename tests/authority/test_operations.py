"""Every operation through an unmodified boto3 client, and the documented errors."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
import zipfile
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from agent.authority.claim import build_claim, post_claim
from tests.authority_kit import REGION, unique

NETWORK = {
    "Ethernet0": {
        "ConnectionType": "STATIC_IP",
        "StaticIpConnectionInfo": {
            "IpAddress": "192.168.1.20",
            "Mask": "255.255.255.0",
            "DefaultGateway": "192.168.1.1",
            "Dns": ["192.168.1.1"],
        },
    },
    "Ethernet1": {"ConnectionType": "DHCP"},
    "Ntp": {"NtpServers": ["time.example.com", "10.0.0.1:123"]},
}


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, dict]:
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response


def test_provision_device_answers_every_documented_member(authority_server):
    pan = authority_server.client()
    name = unique()
    before = datetime.now(UTC)
    out = pan.provision_device(
        Name=name, Description="lobby camera", Tags={"site": "lobby"}, NetworkingConfiguration=NETWORK
    )
    assert out["Status"] == "AWAITING_PROVISIONING"
    assert out["DeviceId"].startswith("device-") and len(out["DeviceId"]) == len("device-") + 26
    assert out["DeviceId"][7:].isalnum() and out["DeviceId"][7:].lower() == out["DeviceId"][7:]
    account = out["Arn"].split(":")[4]
    assert out["Arn"] == f"arn:aws:panorama:{REGION}:{account}:device/{out['DeviceId']}"
    assert len(account) == 12 and account.isdigit()
    assert isinstance(out["Certificates"], bytes)
    assert zipfile.is_zipfile(io.BytesIO(out["Certificates"]))
    assert out["IotThingName"]

    described = pan.describe_device(DeviceId=out["DeviceId"])
    assert described["Name"] == name
    assert described["Description"] == "lobby camera"
    assert described["Tags"] == {"site": "lobby"}
    assert described["NetworkingConfiguration"] == NETWORK
    assert described["ProvisioningStatus"] == "AWAITING_PROVISIONING"
    assert described["DeviceConnectionStatus"] == "AWAITING_CREDENTIALS"
    assert described["DeviceAggregatedStatus"] == "AWAITING_PROVISIONING"
    assert described["Arn"] == out["Arn"]
    assert described["Type"] == "PANORAMA_APPLIANCE" and described["Brand"] == "AWS_PANORAMA"
    assert isinstance(described["CreatedTime"], datetime)
    assert before - timedelta(seconds=5) <= described["CreatedTime"] <= datetime.now(UTC) + timedelta(seconds=5)


def test_list_devices_items_carry_created_time_and_filters_work(authority_server):
    pan = authority_server.client()
    prefix = unique("list")
    ids = [pan.provision_device(Name=f"{prefix}-{i}")["DeviceId"] for i in range(3)]
    listed = pan.list_devices(NameFilter=prefix)["Devices"]
    assert [d["DeviceId"] for d in listed] == ids  # default: oldest first
    for item in listed:
        assert isinstance(item["CreatedTime"], datetime)
        assert item["ProvisioningStatus"] == "AWAITING_PROVISIONING"
        assert item["DeviceAggregatedStatus"] == "AWAITING_PROVISIONING"
    by_name_desc = pan.list_devices(NameFilter=prefix, SortBy="NAME", SortOrder="DESCENDING")["Devices"]
    assert [d["Name"] for d in by_name_desc] == [f"{prefix}-2", f"{prefix}-1", f"{prefix}-0"]
    assert pan.list_devices(NameFilter=prefix, DeviceAggregatedStatusFilter="ONLINE")["Devices"] == []
    assert (
        len(pan.list_devices(NameFilter=prefix, DeviceAggregatedStatusFilter="AWAITING_PROVISIONING")["Devices"]) == 3
    )


def test_list_devices_pages_with_an_opaque_token(authority_server):
    pan = authority_server.client()
    prefix = unique("page")
    ids = [pan.provision_device(Name=f"{prefix}-{i:02d}")["DeviceId"] for i in range(7)]
    seen, token, pages = [], None, 0
    while True:
        kwargs = {"NameFilter": prefix, "MaxResults": 3, "SortBy": "NAME"}
        if token:
            kwargs["NextToken"] = token
        page = pan.list_devices(**kwargs)
        pages += 1
        assert len(page["Devices"]) <= 3
        seen += [d["DeviceId"] for d in page["Devices"]]
        token = page.get("NextToken")
        if not token:
            break
    assert seen == ids and pages == 3
    # a token from one query is refused for another
    first = pan.list_devices(NameFilter=prefix, MaxResults=2)
    with pytest.raises(ClientError) as exc:
        pan.list_devices(NameFilter=prefix, MaxResults=2, SortBy="NAME", NextToken=first["NextToken"])
    assert error_of(exc)[:2] == (400, "ValidationException")
    # MaxResults 0 means the default page size (25), not an empty page
    assert len(pan.list_devices(NameFilter=prefix, MaxResults=0)["Devices"]) == 7


def test_delete_device_then_describe_is_deleting(authority_server):
    pan = authority_server.client()
    device = pan.provision_device(Name=unique())["DeviceId"]
    assert pan.delete_device(DeviceId=device)["DeviceId"] == device
    described = pan.describe_device(DeviceId=device)
    assert described["ProvisioningStatus"] == "DELETING"
    assert described["DeviceAggregatedStatus"] == "DELETING"
    # deleting again is harmless
    assert pan.delete_device(DeviceId=device)["DeviceId"] == device


def test_package_import_job_and_client_token_idempotency(authority_server):
    pan = authority_server.client()
    token = unique("tok")
    request = {
        "ClientToken": token,
        "JobType": "NODE_PACKAGE_VERSION",
        "InputConfig": {
            "PackageVersionInputConfig": {"S3Location": {"BucketName": "b", "ObjectKey": "k/manifest.json"}}
        },
        "OutputConfig": {"PackageVersionOutputConfig": {"PackageName": "people_counter", "PackageVersion": "1.0"}},
        "JobTags": [{"ResourceType": "PACKAGE", "Tags": {"team": "video"}}],
    }
    job = pan.create_package_import_job(**request)["JobId"]
    assert pan.create_package_import_job(**request)["JobId"] == job
    described = pan.describe_package_import_job(JobId=job)
    assert described["Status"] == "PENDING"
    assert described["ClientToken"] == token
    assert described["JobType"] == "NODE_PACKAGE_VERSION"
    assert described["InputConfig"] == request["InputConfig"]
    assert described["OutputConfig"] == request["OutputConfig"]
    assert described["JobTags"] == request["JobTags"]
    assert isinstance(described["CreatedTime"], datetime) and isinstance(described["LastUpdatedTime"], datetime)
    assert described["StatusMessage"]
    changed = dict(
        request, OutputConfig={"PackageVersionOutputConfig": {"PackageName": "other", "PackageVersion": "1.0"}}
    )
    with pytest.raises(ClientError) as exc:
        pan.create_package_import_job(**changed)
    status, code, response = error_of(exc)
    assert (status, code) == (409, "ConflictException")
    assert response["ResourceId"] == job


def test_snow_operations_happy_path(authority_server):
    snow = authority_server.client("snow-device-management")
    devices = snow.list_devices()["devices"]
    assert len(devices) >= 3
    for d in devices:
        assert d["managedDeviceId"].startswith("smd-") and len(d["managedDeviceId"]) == 4 + 24
        assert d["managedDeviceArn"].endswith(f"managed-device/{d['managedDeviceId']}")
    target = devices[0]["managedDeviceId"]
    created = snow.create_task(targets=[target], command={"unlock": {}}, description="unlock it", tags={"k": "v"})
    assert created["taskArn"].endswith(f"task/{created['taskId']}")
    task = snow.describe_task(taskId=created["taskId"])
    assert task["state"] == "IN_PROGRESS" and task["targets"] == [target]
    assert task["description"] == "unlock it" and task["tags"] == {"k": "v"}
    assert isinstance(task["createdAt"], datetime)
    execution = snow.describe_execution(taskId=created["taskId"], managedDeviceId=target)
    assert execution["state"] in ("QUEUED", "IN_PROGRESS", "SUCCEEDED")
    assert execution["taskId"] == created["taskId"] and execution["managedDeviceId"] == target
    listed = snow.list_executions(taskId=created["taskId"])["executions"]
    assert [e["managedDeviceId"] for e in listed] == [target]
    assert created["taskId"] in [t["taskId"] for t in snow.list_tasks()["tasks"]]
    assert snow.cancel_task(taskId=created["taskId"])["taskId"] == created["taskId"]
    assert snow.describe_task(taskId=created["taskId"])["state"] == "CANCELED"
    assert created["taskId"] in [t["taskId"] for t in snow.list_tasks(state="CANCELED")["tasks"]]
    assert created["taskId"] not in [t["taskId"] for t in snow.list_tasks(state="IN_PROGRESS")["tasks"]]
    assert snow.list_executions(taskId=created["taskId"], state="CANCELED")["executions"]


def test_snow_client_token_idempotency(authority_server):
    snow = authority_server.client("snow-device-management")
    target = snow.list_devices()["devices"][1]["managedDeviceId"]
    token = unique("ct")
    first = snow.create_task(targets=[target], command={"reboot": {}}, clientToken=token)
    assert snow.create_task(targets=[target], command={"reboot": {}}, clientToken=token)["taskId"] == first["taskId"]
    with pytest.raises(ClientError) as exc:
        snow.create_task(targets=[target], command={"unlock": {}}, clientToken=token)
    assert error_of(exc)[:2] == (409, "ConflictException")
    # the SDK fills a fresh token itself: two identical calls make two tasks
    a = snow.create_task(targets=[target], command={"reboot": {}})["taskId"]
    b = snow.create_task(targets=[target], command={"reboot": {}})["taskId"]
    assert a != b


# ---------------------------------------------------------------- errors


def test_validation_error_lists_every_field(authority_server):
    pan = authority_server.client(validate=False)
    with pytest.raises(ClientError) as exc:
        pan.provision_device(
            Name="no spaces allowed",
            Description="x" * 256,
            NetworkingConfiguration={"Ethernet0": {"ConnectionType": "WIFI"}, "Ntp": {"NtpServers": ["NOT_A_HOST"]}},
        )
    status, code, response = error_of(exc)
    assert (status, code) == (400, "ValidationException")
    assert response["Reason"] == "FIELD_VALIDATION_FAILED"
    names = {f["Name"] for f in response["Fields"]}
    assert {
        "Name",
        "Description",
        "NetworkingConfiguration.Ethernet0.ConnectionType",
        "NetworkingConfiguration.Ntp.NtpServers[0]",
    } <= names
    assert all(f["Message"] for f in response["Fields"])


def test_validation_of_snow_union_and_targets(authority_server):
    snow = authority_server.client("snow-device-management", validate=False)
    target = snow.list_devices()["devices"][0]["managedDeviceId"]
    with pytest.raises(ClientError) as exc:
        snow.create_task(targets=[target], command={"reboot": {}, "unlock": {}})
    assert error_of(exc)[:2] == (400, "ValidationException")
    with pytest.raises(ClientError) as exc:
        snow.create_task(targets=[], command={"reboot": {}})
    assert error_of(exc)[:2] == (400, "ValidationException")


def _raw(server, method: str, path: str, body: bytes = b"", service: str = "panorama", headers: dict | None = None):
    """A signed request with a body boto3 would never send."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = server.endpoint_url + path
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(server.access_key_id, server.secret_access_key), service, REGION).add_auth(request)
    req = urllib.request.Request(url, data=body or None, headers=dict(request.headers.items()), method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def test_malformed_json_is_cannot_parse(authority_server):
    status, headers, body = _raw(authority_server, "POST", "/devices", b"{not json")
    assert status == 400 and headers["x-amzn-ErrorType"] == "ValidationException"
    assert body["Reason"] == "CANNOT_PARSE" and body["message"] == body["Message"]
    status, _, body = _raw(authority_server, "POST", "/devices", b"[1, 2]")
    assert status == 400 and body["Reason"] == "CANNOT_PARSE"


def test_non_integer_query_parameter_is_400(authority_server):
    status, headers, body = _raw(authority_server, "GET", "/devices?MaxResults=ten")
    assert status == 400 and headers["x-amzn-ErrorType"] == "ValidationException"
    assert body["Fields"][0]["Name"] == "MaxResults"
    status, _, body = _raw(authority_server, "GET", "/devices?MaxResults=26")
    assert status == 400 and body["Fields"][0]["Name"] == "MaxResults"


def test_unknown_route_is_404_with_a_clear_message(authority_server):
    status, headers, body = _raw(authority_server, "GET", "/no/such/thing")
    assert status == 404 and headers["x-amzn-ErrorType"] == "UnknownOperationException"
    assert "GET /no/such/thing" in body["message"]
    status, _, body = _raw(authority_server, "PUT", "/devices")
    assert status == 404 and "GET" in body["message"] and "POST" in body["message"]


def test_not_found_errors_carry_resource_fields(authority_server):
    pan = authority_server.client()
    for call, kwargs, missing in [
        (pan.describe_device, {"DeviceId": "device-doesnotexist"}, "device-doesnotexist"),
        (pan.delete_device, {"DeviceId": "device-doesnotexist"}, "device-doesnotexist"),
        (pan.describe_device_job, {"JobId": "job-doesnotexist"}, "job-doesnotexist"),
        (pan.list_devices_jobs, {"DeviceId": "device-doesnotexist"}, "device-doesnotexist"),
        (pan.describe_package_import_job, {"JobId": "job-doesnotexist"}, "job-doesnotexist"),
        (
            pan.create_job_for_devices,
            {"DeviceIds": ["device-doesnotexist"], "JobType": "REBOOT"},
            "device-doesnotexist",
        ),
    ]:
        with pytest.raises(ClientError) as exc:
            call(**kwargs)
        status, code, response = error_of(exc)
        assert (status, code) == (404, "ResourceNotFoundException"), call
        assert response["ResourceId"] == missing and response["ResourceType"]
    snow = authority_server.client("snow-device-management")
    for call, kwargs in [
        (snow.describe_task, {"taskId": "st-nope"}),
        (snow.cancel_task, {"taskId": "st-nope"}),
        (snow.list_executions, {"taskId": "st-nope"}),
        (snow.create_task, {"targets": ["smd-nope"], "command": {"reboot": {}}}),
    ]:
        with pytest.raises(ClientError) as exc:
            call(**kwargs)
        assert error_of(exc)[:2] == (404, "ResourceNotFoundException")


def test_duplicate_name_is_409_naming_the_existing_device(authority_server):
    pan = authority_server.client()
    name = unique()
    first = pan.provision_device(Name=name)["DeviceId"]
    with pytest.raises(ClientError) as exc:
        pan.provision_device(Name=name)
    status, code, response = error_of(exc)
    assert (status, code) == (409, "ConflictException")
    assert response["ResourceId"] == first and response["ResourceType"] == "device"
    # once the first is being deleted the name is free again
    pan.delete_device(DeviceId=first)
    assert pan.provision_device(Name=name)["DeviceId"] != first


def test_job_on_unprovisioned_device_is_409_naming_its_state(authority_server):
    pan = authority_server.client()
    device = pan.provision_device(Name=unique())["DeviceId"]
    with pytest.raises(ClientError) as exc:
        pan.create_job_for_devices(DeviceIds=[device], JobType="REBOOT")
    status, code, response = error_of(exc)
    assert (status, code) == (409, "ConflictException")
    assert "AWAITING_PROVISIONING" in response["Error"]["Message"]


def test_quota_is_402_and_unique_names_can_be_off(fresh_authority):
    server = fresh_authority(env={"PANOSTAGE_AUTHORITY_DEVICE_QUOTA": "2", "PANOSTAGE_AUTHORITY_UNIQUE_NAMES": "false"})
    pan = server.client()
    first = pan.provision_device(Name="same")["DeviceId"]
    pan.provision_device(Name="same")  # unique_names off: allowed
    with pytest.raises(ClientError) as exc:
        pan.provision_device(Name="third")
    status, code, response = error_of(exc)
    assert (status, code) == (402, "ServiceQuotaExceededException")
    assert response["QuotaCode"] and response["ServiceCode"] == "panorama"
    pan.delete_device(DeviceId=first)  # a deleting device no longer counts
    pan.provision_device(Name="third")


def test_unpaired_surrogates_are_refused_but_real_unicode_is_kept(authority_server):
    status, _, body = _raw(authority_server, "POST", "/devices", b'{"Name": "s1", "Description": "\\ud800"}')
    assert status == 400 and body["Reason"] == "CANNOT_PARSE" and "surrogate" in body["message"]
    name = unique("uni")
    status, _, body = _raw(
        authority_server, "POST", "/devices", json.dumps({"Name": name, "Description": "caf\u00e9 \U0001f4f7"}).encode()
    )
    assert status == 200
    assert authority_server.client().describe_device(DeviceId=body["DeviceId"])["Description"] == "caf\u00e9 \U0001f4f7"


def test_concurrent_provisions_of_one_name_make_one_device(authority_server):
    from concurrent.futures import ThreadPoolExecutor

    name = unique("race")
    pan = authority_server.client()

    def attempt(_: int) -> str:
        try:
            return pan.provision_device(Name=name)["DeviceId"]
        except ClientError as exc:
            return exc.response["Error"]["Code"]

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(8)))
    created = [o for o in outcomes if o.startswith("device-")]
    assert len(created) == 1 and outcomes.count("ConflictException") == 7
    assert [d["DeviceId"] for d in pan.list_devices(NameFilter=name)["Devices"]] == created


def test_the_waiting_devices_page_from_the_store_in_creation_order(fresh_authority):
    """AWAITING_PROVISIONING by creation time (the follow-up's listing) reads one page of rows per call: the
    same devices, in the same order, as the generic listing, in both directions; claimed and deleted ones out."""
    from tests.authority.test_claim import authority_now, provision  # it imports this module

    server = fresh_authority(args=["--job-step-seconds", "0"])
    pan = server.client()
    ids = [pan.provision_device(Name=f"wait-{i:02d}")["DeviceId"] for i in range(8)]
    claimed, cert, key = provision(server, name="wait-claimed")
    post_claim(server.endpoint_url, build_claim(claimed, cert, key, authority_now(server)))
    pan.delete_device(DeviceId=ids[3])
    waiting = ids[:3] + ids[4:]

    def listed(**kwargs):
        seen, token, pages = [], None, 0
        while True:
            page = pan.list_devices(
                DeviceAggregatedStatusFilter="AWAITING_PROVISIONING",
                MaxResults=3,
                **kwargs,
                **({"NextToken": token} if token else {}),
            )
            pages += 1
            assert all(d["DeviceAggregatedStatus"] == "AWAITING_PROVISIONING" for d in page["Devices"])
            seen += [d["DeviceId"] for d in page["Devices"]]
            token = page.get("NextToken")
            if not token:
                return seen, pages

    assert listed() == (waiting, 3)
    assert listed(SortOrder="DESCENDING") == (waiting[::-1], 3)
    assert listed(NameFilter="wait-")[0] == waiting  # the generic path agrees
    first = pan.list_devices(NameFilter="wait-", DeviceAggregatedStatusFilter="AWAITING_PROVISIONING", MaxResults=3)
    with pytest.raises(ClientError) as exc:  # a token of the generic path is not one of this query
        pan.list_devices(
            DeviceAggregatedStatusFilter="AWAITING_PROVISIONING", MaxResults=3, NextToken=first["NextToken"]
        )
    assert error_of(exc)[:2] == (400, "ValidationException")
    scope = ["ListDevices", "CREATED_TIME", "ASCENDING", None, "AWAITING_PROVISIONING"]
    for last in (
        "x",
        [10**30, "x"],
        [-(10**19), "x"],
        [0, "\ud800"],
        [float("nan"), "x"],
        [float("inf"), "x"],
        [True, "x"],
        [1.5, 7],
    ):
        forged = base64.b64encode(json.dumps({"k": last, "s": scope}).encode()).decode()
        with pytest.raises(ClientError) as exc:  # a client error, never the server's 500 (which botocore retries)
            pan.list_devices(DeviceAggregatedStatusFilter="AWAITING_PROVISIONING", NextToken=forged)
        assert error_of(exc)[:2] == (400, "ValidationException"), last
