"""Panorama's jobs: device jobs (CreateJobForDevices, DescribeDeviceJob, ListDevicesJobs: OTA
and reboot on a claimed, online device) and package import jobs (CreatePackageImportJob,
DescribePackageImportJob), each advancing with the authority's clock."""

from __future__ import annotations

import base64
import hashlib
import json

from agent.authority import lifecycle as lc
from agent.authority.apierror import conflict, not_found
from agent.authority.operation_base import IdempotentRequest, OperationGroup, Params, RequestContext, Response
from agent.authority.paging import PANORAMA_PAGE, paginate, with_token
from agent.authority.panorama_devices import DEVICE_TYPE
from agent.authority.store import Row, random_id
from agent.aws.operations import PANORAMA


class PanoramaJobOperations(OperationGroup):
    """Panorama: device jobs and package import jobs."""

    SERVICE = PANORAMA
    OPERATIONS = (
        "CreateJobForDevices",
        "DescribeDeviceJob",
        "ListDevicesJobs",
        "CreatePackageImportJob",
        "DescribePackageImportJob",
    )

    # ------------------------------------------------------------ device jobs

    def create_job_for_devices(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        device_id = p["DeviceIds"][0]
        job_type = p["JobType"]
        ota = (p.get("DeviceJobConfig") or {}).get("OTAJobConfig") or {}
        image = ota.get("ImageVersion") if job_type == "OTA" else None
        allow_major = bool(ota.get("AllowMajorVersionUpdate"))
        now = self.clock.timestamp()

        def make(device: Row | None, jobs: list[Row]) -> Response:
            state = lc.device_state(device, jobs, now, self.step) if device is not None else None
            if state is None or state.gone:
                raise not_found("device", device_id, f"device {device_id} not found")
            if state.provisioning != "SUCCEEDED" or state.connection != "ONLINE":
                raise conflict(
                    "device",
                    device_id,
                    f"device {device_id} is {state.provisioning} (connection {state.connection}); "
                    "jobs need a provisioned device that is ONLINE",
                )
            if jobs:
                phase = lc.job_phase(jobs[-1], now, self.step)
                if not phase.terminal:
                    raise conflict(
                        "device",
                        device_id,
                        f"device {device_id} already has job {jobs[-1]['job_id']} in state {phase.state}; "
                        "wait for it to finish",
                    )
            outcome, reason = lc.job_outcome(job_type, image, allow_major, lc.current_software(jobs, now, self.step))
            return {
                "job_id": random_id("job-"),
                "device_id": device_id,
                "job_type": job_type,
                "image_version": image,
                "allow_major": int(allow_major),
                "created": now,
                "outcome": outcome,
                "reason": reason,
            }

        row = self.store.insert_job(device_id, make)
        return {"Jobs": [{"DeviceId": device_id, "JobId": row["job_id"]}]}

    def describe_device_job(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        job = self.store.job(p["JobId"])
        if job is None:
            raise not_found("job", p["JobId"], f"job {p['JobId']} not found")
        device = self.store.device_of_job(job)
        out: Response = {
            "CreatedTime": lc.to_datetime(job["created"]),
            "DeviceArn": self.arn(PANORAMA, device["region"], f"device/{job['device_id']}"),
            "DeviceId": job["device_id"],
            "DeviceName": device["name"],
            "DeviceType": DEVICE_TYPE,
            "JobId": job["job_id"],
            "JobType": job["job_type"],
            "Status": lc.job_phase(job, self.clock.timestamp(), self.step).state,
        }
        if job["image_version"]:
            out["ImageVersion"] = job["image_version"]
        return out

    def list_devices_jobs(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        device_id = p.get("DeviceId")
        if device_id:
            self.live_device(device_id)
            jobs = self.store.jobs_of(device_id)
        else:
            jobs = self.store.all_jobs()
        names = {row["device_id"]: row["name"] for row in self.store.devices()}
        items = [
            {
                "CreatedTime": lc.to_datetime(j["created"]),
                "DeviceId": j["device_id"],
                "DeviceName": names.get(j["device_id"], ""),
                "JobId": j["job_id"],
                "JobType": j["job_type"],
            }
            for j in jobs
        ]
        page, token = paginate(
            items,
            lambda j: [j["CreatedTime"].timestamp(), j["JobId"]],
            ["ListDevicesJobs", device_id],
            p.get("NextToken"),
            p.get("MaxResults") or PANORAMA_PAGE,
        )
        return with_token({"DeviceJobs": page}, "NextToken", token)

    # ------------------------------------------------------------ package import jobs

    def create_package_import_job(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        idempotent = IdempotentRequest.of(p, "ClientToken")
        job_id = random_id("job-")
        row = self.store.insert_import_job(
            {
                "job_id": job_id,
                "client_token": idempotent.token,
                "request_hash": idempotent.digest,
                "request": idempotent.request_json,
                "region": ctx.region,
                "created": self.clock.timestamp(),
            }
        )
        idempotent.check_stored(row, "job_id", job_id, "package-import-job", "job")
        return {"JobId": row["job_id"]}

    def describe_package_import_job(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        job = self.store.import_job(p["JobId"])
        if job is None:
            raise not_found("package-import-job", p["JobId"], f"package import job {p['JobId']} not found")
        request = json.loads(job["request"])
        phase = lc.import_phase(job, self.clock.timestamp(), self.step)
        out: Response = {
            "ClientToken": job["client_token"],
            "CreatedTime": lc.to_datetime(job["created"]),
            "InputConfig": request["InputConfig"],
            "JobId": job["job_id"],
            "JobType": request["JobType"],
            "LastUpdatedTime": lc.to_datetime(phase.since),
            "OutputConfig": request["OutputConfig"],
            "Status": phase.state,
            "StatusMessage": "Package import succeeded." if phase.terminal else "Package import is pending.",
        }
        if "JobTags" in request:
            out["JobTags"] = request["JobTags"]
        if phase.terminal:
            version_config = request["OutputConfig"]["PackageVersionOutputConfig"]
            package = version_config["PackageName"]
            package_id = "packageId-" + _b32(hashlib.sha256(f"{self.account_id}/{package}".encode()).digest())
            patch = hashlib.sha256(job["job_id"].encode()).hexdigest()
            out["Output"] = {
                "PackageId": package_id,
                "PackageVersion": version_config["PackageVersion"],
                "PatchVersion": patch,
                "OutputS3Location": {
                    "BucketName": f"panostage-packages-{self.account_id}-{job['region']}",
                    "ObjectKey": f"{self.account_id}/nodePackages/{package}/binaries/{version_config['PackageVersion']}/{patch}.json",
                },
            }
        return out


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().lower().rstrip("=")[:26]
