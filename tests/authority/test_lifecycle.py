"""Lifecycles derived from time, walked by shifting the authority's clock (job_step_seconds=10)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from agent.authority.claim import build_claim, post_claim
from tests.authority.test_claim import authority_now, provision

STEP = 10


@pytest.fixture
def server(fresh_authority):
    return fresh_authority(args=["--job-step-seconds", str(STEP)])


def online_device(server, name: str = "cam") -> str:
    device, cert, key = provision(server, name=name)
    post_claim(server.endpoint_url, build_claim(device, cert, key, authority_now(server)))
    return device


def step(server, n: int = 1) -> None:
    server.admin.advance_clock(STEP * n)


def test_deleting_lasts_one_step_then_the_device_is_gone(server):
    pan = server.client()
    device = online_device(server)
    pan.delete_device(DeviceId=device)
    assert pan.describe_device(DeviceId=device)["ProvisioningStatus"] == "DELETING"
    assert [d["DeviceId"] for d in pan.list_devices()["Devices"]] == [device]
    step(server)
    with pytest.raises(ClientError) as exc:
        pan.describe_device(DeviceId=device)
    assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert pan.list_devices()["Devices"] == []
    with pytest.raises(ClientError):
        pan.delete_device(DeviceId=device)


def test_ota_walks_every_state_and_updates_the_software(server):
    pan = server.client()
    device = online_device(server)
    before = pan.describe_device(DeviceId=device)["CurrentSoftware"]
    job = pan.create_job_for_devices(
        DeviceIds=[device], JobType="OTA", DeviceJobConfig={"OTAJobConfig": {"ImageVersion": "4.4.0"}}
    )["Jobs"][0]["JobId"]
    seen = []
    for _ in range(6):
        described = pan.describe_device_job(JobId=job)
        seen.append(described["Status"])
        if described["Status"] == "REBOOTING":
            assert pan.describe_device(DeviceId=device)["DeviceAggregatedStatus"] == "REBOOTING"
        if described["Status"] == "IN_PROGRESS":
            with pytest.raises(ClientError) as exc:  # one unfinished job per device
                pan.create_job_for_devices(DeviceIds=[device], JobType="REBOOT")
            assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
            assert job in exc.value.response["Error"]["Message"]
            assert pan.describe_device(DeviceId=device)["CurrentSoftware"] == before
        step(server)
    assert seen == ["PENDING", "DOWNLOADING", "VERIFYING", "IN_PROGRESS", "REBOOTING", "COMPLETED"]
    assert described["JobType"] == "OTA" and described["ImageVersion"] == "4.4.0"
    assert described["DeviceId"] == device and described["DeviceName"] == "cam"
    assert described["DeviceArn"].endswith(device) and described["DeviceType"]
    after = pan.describe_device(DeviceId=device)
    assert after["CurrentSoftware"] == "4.4.0" and after["LatestSoftware"] == "4.4.0"
    assert after["LatestDeviceJob"] == {"ImageVersion": "4.4.0", "JobType": "OTA", "Status": "COMPLETED"}
    assert after["DeviceAggregatedStatus"] == "ONLINE"
    jobs = pan.list_devices_jobs(DeviceId=device)["DeviceJobs"]
    assert [j["JobId"] for j in jobs] == [job]
    assert "Status" not in jobs[0] and jobs[0]["DeviceName"] == "cam" and jobs[0]["JobType"] == "OTA"


def test_major_update_needs_permission(server):
    pan = server.client()
    device = online_device(server)
    job = pan.create_job_for_devices(
        DeviceIds=[device], JobType="OTA", DeviceJobConfig={"OTAJobConfig": {"ImageVersion": "5.0.0"}}
    )["Jobs"][0]["JobId"]
    step(server, 3)
    assert pan.describe_device_job(JobId=job)["Status"] == "FAILED"
    assert pan.describe_device(DeviceId=device)["CurrentSoftware"] == "4.3.93"
    job = pan.create_job_for_devices(
        DeviceIds=[device],
        JobType="OTA",
        DeviceJobConfig={"OTAJobConfig": {"ImageVersion": "5.0.0", "AllowMajorVersionUpdate": True}},
    )["Jobs"][0]["JobId"]
    step(server, 5)
    assert pan.describe_device_job(JobId=job)["Status"] == "COMPLETED"
    assert pan.describe_device(DeviceId=device)["CurrentSoftware"] == "5.0.0"


def test_reboot_job(server):
    pan = server.client()
    device = online_device(server)
    job = pan.create_job_for_devices(DeviceIds=[device], JobType="REBOOT")["Jobs"][0]["JobId"]
    states = []
    for _ in range(3):
        states.append(pan.describe_device_job(JobId=job)["Status"])
        step(server)
    assert states == ["PENDING", "REBOOTING", "COMPLETED"]
    assert "ImageVersion" not in pan.describe_device_job(JobId=job)


def test_list_devices_jobs_pages_and_filters(server):
    pan = server.client()
    a, b = online_device(server, "a"), online_device(server, "b")
    made = []
    for _ in range(3):
        for device in (a, b):
            made.append(pan.create_job_for_devices(DeviceIds=[device], JobType="REBOOT")["Jobs"][0]["JobId"])
        step(server, 2)
    assert [j["JobId"] for j in pan.list_devices_jobs(DeviceId=a)["DeviceJobs"]] == made[0::2]
    seen, token = [], None
    while True:
        page = pan.list_devices_jobs(MaxResults=4, **({"NextToken": token} if token else {}))
        seen += [j["JobId"] for j in page["DeviceJobs"]]
        token = page.get("NextToken")
        if not token:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 6


def test_package_import_succeeds_after_one_step(server):
    pan = server.client()
    job = pan.create_package_import_job(
        ClientToken="tok-1",
        JobType="NODE_PACKAGE_VERSION",
        InputConfig={"PackageVersionInputConfig": {"S3Location": {"BucketName": "b", "ObjectKey": "k"}}},
        OutputConfig={"PackageVersionOutputConfig": {"PackageName": "counter", "PackageVersion": "2.1"}},
    )["JobId"]
    pending = pan.describe_package_import_job(JobId=job)
    assert pending["Status"] == "PENDING" and "Output" not in pending
    step(server)
    done = pan.describe_package_import_job(JobId=job)
    assert done["Status"] == "SUCCEEDED"
    assert done["LastUpdatedTime"] > done["CreatedTime"]
    output = done["Output"]
    assert output["PackageVersion"] == "2.1" and output["PackageId"] and output["PatchVersion"].isalnum()
    assert output["OutputS3Location"]["BucketName"] and output["OutputS3Location"]["ObjectKey"]


# ---------------------------------------------------------------- snow device management


def _states(snow, task: str, device: str) -> str:
    return snow.describe_execution(taskId=task, managedDeviceId=device)["state"]


def test_snow_tasks_are_serialised_per_device(server):
    snow = server.client("snow-device-management")
    d1, d2, _ = [d["managedDeviceId"] for d in snow.list_devices()["devices"]]
    t1 = snow.create_task(targets=[d1], command={"reboot": {}})["taskId"]
    t2 = snow.create_task(targets=[d1, d2], command={"unlock": {}})["taskId"]
    assert (_states(snow, t1, d1), _states(snow, t2, d1), _states(snow, t2, d2)) == ("QUEUED", "QUEUED", "QUEUED")
    step(server)
    # t1 runs on d1; t2 runs on d2 but waits on d1
    assert (_states(snow, t1, d1), _states(snow, t2, d1), _states(snow, t2, d2)) == (
        "IN_PROGRESS",
        "QUEUED",
        "IN_PROGRESS",
    )
    assert "startedAt" not in snow.describe_execution(taskId=t2, managedDeviceId=d1)
    step(server)
    assert (_states(snow, t1, d1), _states(snow, t2, d1), _states(snow, t2, d2)) == (
        "SUCCEEDED",
        "IN_PROGRESS",
        "SUCCEEDED",
    )
    assert snow.describe_task(taskId=t1)["state"] == "COMPLETED"
    assert snow.describe_task(taskId=t2)["state"] == "IN_PROGRESS"
    assert [e["managedDeviceId"] for e in snow.list_executions(taskId=t2, state="SUCCEEDED")["executions"]] == [d2]
    step(server)
    task = snow.describe_task(taskId=t2)
    assert task["state"] == "COMPLETED" and task["completedAt"] >= task["createdAt"]
    assert {t["taskId"] for t in snow.list_tasks(state="COMPLETED")["tasks"]} == {t1, t2}


def test_cancel_ends_unfinished_executions_and_frees_the_device(server):
    snow = server.client("snow-device-management")
    d1 = snow.list_devices()["devices"][0]["managedDeviceId"]
    t1 = snow.create_task(targets=[d1], command={"reboot": {}})["taskId"]
    t2 = snow.create_task(targets=[d1], command={"reboot": {}})["taskId"]
    t3 = snow.create_task(targets=[d1], command={"reboot": {}})["taskId"]
    step(server)
    assert _states(snow, t1, d1) == "IN_PROGRESS"
    snow.cancel_task(taskId=t1)
    assert snow.describe_task(taskId=t1)["state"] == "CANCELED"
    assert _states(snow, t1, d1) == "CANCELED"
    snow.cancel_task(taskId=t2)  # still queued: canceled before it ran
    assert _states(snow, t2, d1) == "CANCELED"
    assert _states(snow, t3, d1) == "IN_PROGRESS"  # the cancellations freed the device at once
    step(server)
    assert _states(snow, t3, d1) == "SUCCEEDED"
    snow.cancel_task(taskId=t3)  # a completed task stays completed
    assert snow.describe_task(taskId=t3)["state"] == "COMPLETED"


def test_snow_list_tasks_pages(server):
    snow = server.client("snow-device-management")
    d = snow.list_devices()["devices"][2]["managedDeviceId"]
    made = [snow.create_task(targets=[d], command={"reboot": {}})["taskId"] for _ in range(5)]
    seen, token = [], None
    while True:
        page = snow.list_tasks(maxResults=2, **({"nextToken": token} if token else {}))
        assert len(page["tasks"]) <= 2
        seen += [t["taskId"] for t in page["tasks"]]
        token = page.get("nextToken")
        if not token:
            break
    assert seen == made
