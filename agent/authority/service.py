"""The operation handlers: a parsed request in, a response dict out (datetimes and bytes
left for the wire layer to encode), or an :class:`ApiError` raised.

Panorama: ProvisionDevice, DescribeDevice, ListDevices, DeleteDevice, CreateJobForDevices,
DescribeDeviceJob, ListDevicesJobs, CreatePackageImportJob, DescribePackageImportJob.
Snow Device Management: CreateTask, DescribeTask, DescribeExecution, ListTasks,
ListExecutions, CancelTask, ListDevices.  Plus the appliance's claim (not an AWS API).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.authority import lifecycle as lc
from agent.authority.apierror import (
    ApiError, access_denied, cannot_parse, conflict, invalid_request, not_found, quota_exceeded, validation_error,
)
from agent.authority.bundle import ZIP_DEFECTS, ArchiveContent, build_archive
from agent.authority.ca import CertificateAuthority, fingerprint, new_key, private_key_pem, public_key_pem
from agent.authority.store import Store, dumps, random_id
from agent.aws.validation import check
from agent.clock import Clock, iso
from agent.config import AuthoritySettings
from agent.errors import Violation

PANORAMA = "panorama"
SNOW = "snow-device-management"
CLAIM_MAX_AGE = 300.0
CLAIM_PREFIX = "panostage-claim"
DEVICE_TYPE = "PANORAMA_APPLIANCE"
DEVICE_BRAND = "AWS_PANORAMA"
PANORAMA_PAGE = 25
SNOW_PAGE = 100


def claim_message(device_id: str, timestamp: int) -> bytes:
    """The bytes a claim signs: ``panostage-claim:{DeviceId}:{Timestamp}``."""
    return f"{CLAIM_PREFIX}:{device_id}:{timestamp}".encode()


@dataclass(frozen=True)
class RequestContext:
    """Who asked: the region of the signature's scope (used in ARNs), service and operation."""

    region: str
    service: str
    operation: str
    access_key_id: str = ""


class AuthorityService:
    """All operations over one store, CA and clock."""

    def __init__(
        self, settings: AuthoritySettings, store: Store, ca: CertificateAuthority, clock: lc.ShiftableClock
    ) -> None:
        self.settings = settings
        self.store = store
        self.ca = ca
        self.clock = clock
        self.account_id = store.account_id
        self.operations: dict[tuple[str, str], Callable[[RequestContext, dict[str, Any], str | None], dict[str, Any]]] = {
            (PANORAMA, "ProvisionDevice"): self.provision_device,
            (PANORAMA, "DescribeDevice"): self.describe_device,
            (PANORAMA, "ListDevices"): self.list_devices,
            (PANORAMA, "DeleteDevice"): self.delete_device,
            (PANORAMA, "CreateJobForDevices"): self.create_job_for_devices,
            (PANORAMA, "DescribeDeviceJob"): self.describe_device_job,
            (PANORAMA, "ListDevicesJobs"): self.list_devices_jobs,
            (PANORAMA, "CreatePackageImportJob"): self.create_package_import_job,
            (PANORAMA, "DescribePackageImportJob"): self.describe_package_import_job,
            (SNOW, "CreateTask"): self.create_task,
            (SNOW, "DescribeTask"): self.describe_task,
            (SNOW, "DescribeExecution"): self.describe_execution,
            (SNOW, "ListTasks"): self.list_tasks,
            (SNOW, "ListExecutions"): self.list_executions,
            (SNOW, "CancelTask"): self.cancel_task,
            (SNOW, "ListDevices"): self.snow_list_devices,
        }

    @classmethod
    def open(cls, settings: AuthoritySettings, state_dir: Path, clock: Clock | None = None) -> "AuthorityService":
        """The service over the state in ``state_dir`` (CA and database created on first use)."""
        shiftable = clock if isinstance(clock, lc.ShiftableClock) else lc.ShiftableClock(clock)
        ca = CertificateAuthority.load_or_create(state_dir, shiftable.now())
        return cls(settings, Store(state_dir, now=shiftable.timestamp()), ca, shiftable)

    @property
    def step(self) -> float:
        return float(self.settings.job_step_seconds)

    def handle(self, ctx: RequestContext, params: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        """Validate ``params`` against every documented constraint, then run the operation."""
        handler = self.operations.get((ctx.service, ctx.operation))
        if handler is None:
            raise ApiError(404, "UnknownOperationException", f"{ctx.service} has no operation {ctx.operation}")
        violations = check(ctx.operation, params, service=ctx.service)
        if violations:
            raise invalid_request(violations)
        return handler(ctx, params, defect)

    def _arn(self, service: str, region: str, resource: str) -> str:
        return f"arn:aws:{service}:{region}:{self.account_id}:{resource}"

    # ============================================================ Panorama: devices

    def provision_device(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        now = self.clock.now()
        validity = timedelta(seconds=self.settings.cert_validity_seconds)
        device_id = random_id("device-")
        thing_name = f"panorama-{device_id[len('device-'):]}"
        key = new_key()
        ca = self.ca
        not_before, not_after = now, now + validity
        if defect == "expired_cert":
            not_before, not_after = now - 2 * validity - timedelta(seconds=1), now - validity - timedelta(seconds=1)
        elif defect == "wrong_ca":
            ca = _rogue_ca()
        issued = ca.issue(thing_name, key.public_key(), not_before, not_after)
        name = p["Name"]

        def check(conn: Any) -> None:
            if self.settings.unique_names:
                taken = Store.live_name_taken(conn, name)
                if taken:
                    raise conflict("device", taken, f"a device named {name!r} already exists: {taken}")
            quota = self.settings.device_quota
            if quota > 0 and Store.live_device_count(conn) >= quota:
                raise quota_exceeded(f"this authority holds at most {quota} devices; delete one first")

        network = p.get("NetworkingConfiguration")
        self.store.insert_device(
            {
                "device_id": device_id, "name": name, "description": p.get("Description"),
                "tags": dumps(p.get("Tags") or {}), "network": None if network is None else dumps(network),
                "region": ctx.region, "thing_name": thing_name, "created": now.timestamp(),
                "cert_serial": issued.serial_hex, "cert_fingerprint": issued.fingerprint,
                "cert_not_after": issued.not_after.timestamp(),
                "public_key": public_key_pem(issued.certificate.public_key()),  # type: ignore[arg-type]
            },
            check,
        )
        archive_key = new_key() if defect == "key_mismatch" else key
        archive = build_archive(
            ArchiveContent(
                device_id=device_id, device_name=name, thing_name=thing_name, cert_pem=issued.pem,
                key_pem=private_key_pem(archive_key), ca_pem=self.ca.cert_pem, network=network or {},
                created=now, not_after=issued.not_after,
            ),
            defect if defect in ZIP_DEFECTS else None,
        )
        return {
            "Arn": self._arn(PANORAMA, ctx.region, f"device/{device_id}"),
            "Status": "AWAITING_PROVISIONING",
            "Certificates": archive,
            "DeviceId": device_id,
            "IotThingName": thing_name,
        }

    def _live_device(self, device_id: str) -> tuple[Any, list[Any], lc.DeviceState]:
        row = self.store.device(device_id)
        if row is not None:
            jobs = self.store.jobs_of(device_id)
            state = lc.device_state(row, jobs, self.clock.timestamp(), self.step)
            if not state.gone:
                return row, jobs, state
        raise not_found("device", device_id, f"device {device_id} not found")

    def _device_view(self, row: Any, jobs: Sequence[Any], state: lc.DeviceState, full: bool) -> dict[str, Any]:
        now = self.clock.timestamp()
        view: dict[str, Any] = {
            "Brand": DEVICE_BRAND,
            "CreatedTime": lc.to_datetime(row["created"]),
            "DeviceAggregatedStatus": state.aggregated,
            "DeviceId": row["device_id"],
            "LastUpdatedTime": lc.to_datetime(state.last_updated),
            "Name": row["name"],
            "ProvisioningStatus": state.provisioning,
            "Tags": json.loads(row["tags"]),
            "Type": DEVICE_TYPE,
        }
        if row["description"] is not None:
            view["Description"] = row["description"]
        claimed = row["claim_status"] == "SUCCEEDED"
        if claimed:
            current = lc.current_software(jobs, now, self.step)
            view["CurrentSoftware"] = current
            view["LeaseExpirationTime"] = lc.to_datetime(row["claimed_at"] + lc.LEASE.total_seconds())
        if jobs:
            latest = jobs[-1]
            view["LatestDeviceJob"] = {"JobType": latest["job_type"], "Status": lc.job_phase(latest, now, self.step).state}
            if latest["image_version"]:
                view["LatestDeviceJob"]["ImageVersion"] = latest["image_version"]
        if not full:
            return view
        view.pop("LastUpdatedTime")
        view["Arn"] = self._arn(PANORAMA, row["region"], f"device/{row['device_id']}")
        view["DeviceConnectionStatus"] = state.connection
        if row["network"] is not None:
            view["NetworkingConfiguration"] = json.loads(row["network"])
        if claimed:
            view["LatestSoftware"] = lc.latest_software(view["CurrentSoftware"])
            view["CurrentNetworkingStatus"] = _network_status(row)
            if row["serial_number"]:
                view["SerialNumber"] = row["serial_number"]
        return view

    def describe_device(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        row, jobs, state = self._live_device(p["DeviceId"])
        return self._device_view(row, jobs, state, full=True)

    def list_devices(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        now = self.clock.timestamp()
        name_prefix = p.get("NameFilter")
        status_filter = p.get("DeviceAggregatedStatusFilter")
        if status_filter == "AWAITING_PROVISIONING" and (p.get("SortBy") or "CREATED_TIME") == "CREATED_TIME" \
                and not name_prefix:
            return self._awaiting_page(p, now)
        rows = self.store.devices(STATUS_ROWS.get(status_filter, "1"))  # what may have that status; the state decides
        jobs_by_device: dict[str, list[Any]] = {}
        if status_filter not in UNCLAIMED_STATUSES:  # an unclaimed device's status does not depend on jobs
            for job in self.store.all_jobs():
                jobs_by_device.setdefault(job["device_id"], []).append(job)
        items = []  # what sorting and filtering need; the full view is built for the page only
        for row in rows:
            if name_prefix and not row["name"].startswith(name_prefix):
                continue
            jobs = jobs_by_device.get(row["device_id"], [])
            state = lc.device_state(row, jobs, now, self.step)
            if state.gone or (status_filter and state.aggregated != status_filter):
                continue
            items.append({"DeviceId": row["device_id"], "CreatedTime": row["created"], "Name": row["name"],
                          "DeviceAggregatedStatus": state.aggregated, "view": (row, jobs, state)})
        sort_by = p.get("SortBy") or "CREATED_TIME"
        sort_key = {
            "DEVICE_ID": lambda d: [d["DeviceId"]],
            "CREATED_TIME": lambda d: [d["CreatedTime"], d["DeviceId"]],
            "NAME": lambda d: [d["Name"], d["DeviceId"]],
            "DEVICE_AGGREGATED_STATUS": lambda d: [d["DeviceAggregatedStatus"], d["DeviceId"]],
        }[sort_by]
        scope = ["ListDevices", sort_by, p.get("SortOrder") or "ASCENDING", name_prefix, status_filter]
        page, token = paginate(
            items, sort_key, scope, p.get("NextToken"), p.get("MaxResults") or PANORAMA_PAGE,
            descending=p.get("SortOrder") == "DESCENDING",
        )
        page = [self._device_view(*item["view"], full=False) for item in page]
        return _with_token({"Devices": page}, "NextToken", token)

    def _awaiting_page(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        """The devices waiting to be claimed, by creation time: one page read from the store, not every device
        (the follow-up of a station with a thousand staged devices lists them all, every pass)."""
        descending = p.get("SortOrder") == "DESCENDING"
        scope = ["ListDevices", "CREATED_TIME", p.get("SortOrder") or "ASCENDING", None, "AWAITING_PROVISIONING"]
        limit = p.get("MaxResults") or PANORAMA_PAGE
        after = token_position(p.get("NextToken"), scope)
        if after is not None and not (isinstance(after, list) and len(after) == 2 and type(after[0]) in (int, float)
                                      and abs(after[0]) < 1e12 and isinstance(after[1], str) and after[1].isascii()):
            raise validation_error("NextToken is not a token this authority issued",
                                   [Violation("NextToken", p["NextToken"], "invalid token")])
        rows = self.store.devices_page(STATUS_ROWS["AWAITING_PROVISIONING"], after, descending=descending, limit=limit + 1)
        page = [self._device_view(row, [], lc.device_state(row, [], now, self.step), full=False) for row in rows[:limit]]
        token = make_token([rows[limit - 1]["created"], rows[limit - 1]["device_id"]], scope) if len(rows) > limit else None
        return _with_token({"Devices": page}, "NextToken", token)

    def delete_device(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        row, _, _ = self._live_device(p["DeviceId"])
        if row["deleted_at"] is None:
            self.store.mark_deleted(row["device_id"], self.clock.timestamp())
        return {"DeviceId": row["device_id"]}

    # ============================================================ Panorama: device jobs

    def create_job_for_devices(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        device_id = p["DeviceIds"][0]
        job_type = p["JobType"]
        ota = (p.get("DeviceJobConfig") or {}).get("OTAJobConfig") or {}
        image = ota.get("ImageVersion") if job_type == "OTA" else None
        allow_major = bool(ota.get("AllowMajorVersionUpdate"))
        now = self.clock.timestamp()

        def make(device: Any, jobs: list[Any]) -> dict[str, Any]:
            state = lc.device_state(device, jobs, now, self.step) if device is not None else None
            if state is None or state.gone:
                raise not_found("device", device_id, f"device {device_id} not found")
            if state.provisioning != "SUCCEEDED" or state.connection != "ONLINE":
                raise conflict(
                    "device", device_id,
                    f"device {device_id} is {state.provisioning} (connection {state.connection}); "
                    "jobs need a provisioned device that is ONLINE",
                )
            if jobs:
                phase = lc.job_phase(jobs[-1], now, self.step)
                if not phase.terminal:
                    raise conflict(
                        "device", device_id,
                        f"device {device_id} already has job {jobs[-1]['job_id']} in state {phase.state}; "
                        "wait for it to finish",
                    )
            outcome, reason = lc.job_outcome(job_type, image, allow_major, lc.current_software(jobs, now, self.step))
            return {
                "job_id": random_id("job-"), "device_id": device_id, "job_type": job_type, "image_version": image,
                "allow_major": int(allow_major), "created": now, "outcome": outcome, "reason": reason,
            }

        row = self.store.insert_job(device_id, make)
        return {"Jobs": [{"DeviceId": device_id, "JobId": row["job_id"]}]}

    def describe_device_job(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        job = self.store.job(p["JobId"])
        if job is None:
            raise not_found("job", p["JobId"], f"job {p['JobId']} not found")
        device = self.store.device(job["device_id"])
        out = {
            "CreatedTime": lc.to_datetime(job["created"]),
            "DeviceArn": self._arn(PANORAMA, device["region"], f"device/{job['device_id']}"),
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

    def list_devices_jobs(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        device_id = p.get("DeviceId")
        if device_id:
            self._live_device(device_id)
            jobs = self.store.jobs_of(device_id)
        else:
            jobs = self.store.all_jobs()
        names = {row["device_id"]: row["name"] for row in self.store.devices()}
        items = [
            {"CreatedTime": lc.to_datetime(j["created"]), "DeviceId": j["device_id"],
             "DeviceName": names.get(j["device_id"], ""), "JobId": j["job_id"], "JobType": j["job_type"]}
            for j in jobs
        ]
        page, token = paginate(
            items, lambda j: [j["CreatedTime"].timestamp(), j["JobId"]], ["ListDevicesJobs", device_id],
            p.get("NextToken"), p.get("MaxResults") or PANORAMA_PAGE,
        )
        return _with_token({"DeviceJobs": page}, "NextToken", token)

    # ============================================================ Panorama: package import jobs

    def create_package_import_job(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        request = {k: v for k, v in p.items() if k != "ClientToken"}
        digest = hashlib.sha256(dumps(request).encode()).hexdigest()
        job_id = random_id("job-")
        row = self.store.insert_import_job(
            {"job_id": job_id, "client_token": p["ClientToken"], "request_hash": digest, "request": dumps(request),
             "region": ctx.region, "created": self.clock.timestamp()}
        )
        if row["job_id"] != job_id and row["request_hash"] != digest:
            raise conflict(
                "package-import-job", row["job_id"],
                f"ClientToken {p['ClientToken']!r} was already used for a different request (job {row['job_id']})",
            )
        return {"JobId": row["job_id"]}

    def describe_package_import_job(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        job = self.store.import_job(p["JobId"])
        if job is None:
            raise not_found("package-import-job", p["JobId"], f"package import job {p['JobId']} not found")
        request = json.loads(job["request"])
        phase = lc.import_phase(job, self.clock.timestamp(), self.step)
        out: dict[str, Any] = {
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

    # ============================================================ Snow Device Management

    def _managed_ids(self) -> list[str]:
        return [row["device_id"] for row in self.store.managed_devices()]

    def create_task(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        targets = p["targets"]
        commands = [name for name in ("reboot", "unlock") if p["command"].get(name) is not None]
        if len(commands) != 1:
            raise validation_error("command must set exactly one of reboot | unlock")
        known = set(self._managed_ids())
        unknown = [t for t in targets if t not in known]
        if unknown:
            raise ApiError(404, "ResourceNotFoundException", f"managed device(s) not found: {', '.join(unknown)}")
        if len(set(targets)) != len(targets):
            raise validation_error("targets must not repeat a device")
        request = {k: v for k, v in p.items() if k != "clientToken"}
        digest = hashlib.sha256(dumps(request).encode()).hexdigest()
        task_id = random_id("st-", 16)
        row = self.store.insert_task(
            {
                "task_id": task_id, "client_token": p.get("clientToken"), "request_hash": digest,
                "command": commands[0], "description": p.get("description"), "tags": dumps(p.get("tags") or {}),
                "targets": json.dumps(targets), "region": ctx.region, "created": self.clock.timestamp(),
            },
            lambda conn: None,
        )
        if row["task_id"] != task_id and row["request_hash"] != digest:
            raise conflict(
                "task", row["task_id"],
                f"clientToken {p.get('clientToken')!r} was already used for a different request (task {row['task_id']})",
            )
        return {"taskId": row["task_id"], "taskArn": self._task_arn(row)}

    def _task_arn(self, task: Any) -> str:
        return self._arn(SNOW, task["region"], f"task/{task['task_id']}")

    def _task(self, task_id: str) -> Any:
        task = self.store.task(task_id)
        if task is None:
            raise ApiError(404, "ResourceNotFoundException", f"task {task_id} not found")
        return task

    def _phases(self, device_ids: list[str]) -> dict[tuple[str, str], lc.ExecutionPhase]:
        if not device_ids:
            return {}
        return lc.execution_timeline(self.store.executions_on(device_ids), self.clock.timestamp(), self.step)

    def _task_summary(self, task: Any, phases: Mapping[tuple[str, str], lc.ExecutionPhase]) -> tuple[str, float | None, float]:
        targets = json.loads(task["targets"])
        own = [phases[(task["task_id"], d)] for d in targets]
        return lc.task_state(task, own, self.clock.timestamp())

    def describe_task(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        task = self._task(p["taskId"])
        targets = json.loads(task["targets"])
        state, completed, updated = self._task_summary(task, self._phases(targets))
        out: dict[str, Any] = {
            "createdAt": lc.to_datetime(task["created"]),
            "lastUpdatedAt": lc.to_datetime(updated),
            "state": state,
            "tags": json.loads(task["tags"]),
            "targets": targets,
            "taskArn": self._task_arn(task),
            "taskId": task["task_id"],
        }
        if completed is not None:
            out["completedAt"] = lc.to_datetime(completed)
        if task["description"] is not None:
            out["description"] = task["description"]
        return out

    def describe_execution(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        task = self._task(p["taskId"])
        device_id = p["managedDeviceId"]
        if device_id not in json.loads(task["targets"]):
            raise ApiError(404, "ResourceNotFoundException", f"task {task['task_id']} has no execution on {device_id}")
        phase = self._phases([device_id])[(task["task_id"], device_id)]
        execution = next(e for e in self.store.executions_of(task["task_id"]) if e["device_id"] == device_id)
        out: dict[str, Any] = {
            "executionId": execution["execution_id"],
            "lastUpdatedAt": lc.to_datetime(phase.last_updated),
            "managedDeviceId": device_id,
            "state": phase.state,
            "taskId": task["task_id"],
        }
        if phase.started is not None:
            out["startedAt"] = lc.to_datetime(phase.started)
        return out

    def list_tasks(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        phases = self._phases(self._managed_ids())
        items = []
        for task in self.store.tasks():
            state, _, _ = self._task_summary(task, phases)
            if p.get("state") and state != p["state"]:
                continue
            items.append({"state": state, "tags": json.loads(task["tags"]), "taskArn": self._task_arn(task),
                          "taskId": task["task_id"], "_key": [task["created"], task["task_id"]]})
        page, token = paginate(items, lambda t: t["_key"], ["ListTasks", p.get("state")], p.get("nextToken"),
                               p.get("maxResults") or SNOW_PAGE)
        for item in page:
            item.pop("_key")
        return _with_token({"tasks": page}, "nextToken", token)

    def list_executions(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        task = self._task(p["taskId"])
        targets = json.loads(task["targets"])
        phases = self._phases(targets)
        items = []
        for index, execution in enumerate(self.store.executions_of(task["task_id"])):
            state = phases[(task["task_id"], execution["device_id"])].state
            if p.get("state") and state != p["state"]:
                continue
            items.append({"executionId": execution["execution_id"], "managedDeviceId": execution["device_id"],
                          "state": state, "taskId": task["task_id"], "_key": [index]})
        page, token = paginate(items, lambda e: e["_key"], ["ListExecutions", task["task_id"], p.get("state")],
                               p.get("nextToken"), p.get("maxResults") or SNOW_PAGE)
        for item in page:
            item.pop("_key")
        return _with_token({"executions": page}, "nextToken", token)

    def cancel_task(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        task = self._task(p["taskId"])
        state, _, _ = self._task_summary(task, self._phases(json.loads(task["targets"])))
        if state == "IN_PROGRESS":
            self.store.cancel_task(task["task_id"], self.clock.timestamp())
        return {"taskId": task["task_id"]}

    def snow_list_devices(self, ctx: RequestContext, p: dict[str, Any], defect: str | None = None) -> dict[str, Any]:
        items = [
            {"associatedWithJob": row["job_id"],
             "managedDeviceArn": self._arn(SNOW, ctx.region, f"managed-device/{row['device_id']}"),
             "managedDeviceId": row["device_id"], "tags": json.loads(row["tags"])}
            for row in self.store.managed_devices()
            if not p.get("jobId") or row["job_id"] == p["jobId"]
        ]
        page, token = paginate(items, lambda d: [d["managedDeviceId"]], ["SnowListDevices", p.get("jobId")],
                               p.get("nextToken"), p.get("maxResults") or SNOW_PAGE)
        return _with_token({"devices": page}, "nextToken", token)

    # ============================================================ the appliance's claim

    def claim(self, body: Any) -> dict[str, Any]:
        """Register a device with the certificate from its archive (``POST /_local/claim``)."""
        device_id, cert, timestamp, signature, serial_number = _parse_claim(body)
        row, _, state = self._live_device(device_id)
        if state.provisioning != "AWAITING_PROVISIONING":
            raise conflict(
                "device", device_id,
                f"device {device_id} is {state.provisioning}; a device is claimed once "
                "(delete it and provision a new one to start over)",
            )
        now = self.clock.now()
        if abs(now.timestamp() - timestamp) > CLAIM_MAX_AGE:
            raise access_denied(
                f"claim timestamp {timestamp} is more than {int(CLAIM_MAX_AGE)} s from the authority's time "
                f"{int(now.timestamp())} (stale or replayed claim)"
            )
        public_key = cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise access_denied("the claim certificate does not carry an EC public key")
        try:
            public_key.verify(signature, claim_message(device_id, body["Timestamp"]), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise access_denied(
                "claim signature does not verify with the certificate's public key "
                "(is the private key the one that belongs to the certificate?)"
            ) from None
        reason = None
        if not self.ca.issued(cert):
            reason = "the certificate was not issued by this authority's CA"
        elif format(cert.serial_number, "x") != row["cert_serial"] or fingerprint(cert) != row["cert_fingerprint"]:
            reason = f"the certificate (serial {cert.serial_number:x}) was not issued to device {device_id}"
        elif now >= cert.not_valid_after_utc:
            reason = f"the certificate expired at {iso(cert.not_valid_after_utc)}"
        elif now < cert.not_valid_before_utc:
            reason = f"the certificate is not valid before {iso(cert.not_valid_before_utc)}"
        status = "FAILED" if reason else "SUCCEEDED"
        if not self.store.record_claim(device_id, status, now.timestamp(), reason, serial_number):
            raise conflict("device", device_id, f"device {device_id} was claimed or deleted meanwhile")
        if reason:
            raise ApiError(
                403, "AccessDeniedException", f"claim refused: {reason}; device {device_id} is now FAILED",
                DeviceId=device_id, ProvisioningStatus="FAILED",
            )
        return {"DeviceId": device_id, "ProvisioningStatus": "SUCCEEDED", "DeviceConnectionStatus": "ONLINE"}


# ---------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=1)
def _rogue_ca() -> CertificateAuthority:
    """Another CA, for the ``wrong_ca`` archive fault."""
    from datetime import timezone

    return CertificateAuthority.generate(datetime.now(timezone.utc), label="panostage rogue authority")


def _parse_claim(body: Any) -> tuple[str, x509.Certificate, float, bytes, str | None]:
    if not isinstance(body, dict):
        raise cannot_parse("the claim must be a JSON object")
    problems = []
    device_id, cert_pem, timestamp, signature = (body.get(k) for k in ("DeviceId", "Certificate", "Timestamp", "Signature"))
    serial = body.get("SerialNumber")
    if not isinstance(device_id, str) or not device_id:
        problems.append(Violation("DeviceId", device_id, "required: the device ID"))
    if not isinstance(cert_pem, str) or not cert_pem:
        problems.append(Violation("Certificate", None, "required: the certificate PEM from the archive"))
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        problems.append(Violation("Timestamp", timestamp, "required: whole epoch seconds (an integer)"))
    if not isinstance(signature, str) or not signature:
        problems.append(Violation("Signature", None, "required: base64 ECDSA-SHA256 signature"))
    if serial is not None and (not isinstance(serial, str) or not re.fullmatch(r"[0-9]{1,20}", serial)):
        problems.append(Violation("SerialNumber", serial, "must be 1-20 digits"))
    if problems:
        raise invalid_request(problems)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise validation_error("Certificate is not a PEM X.509 certificate", [Violation("Certificate", None, "not a PEM certificate")]) from None
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise validation_error("Signature is not base64", [Violation("Signature", signature, "not base64")]) from None
    return device_id, cert, float(timestamp), raw_signature, serial


def _network_status(row: Any) -> dict[str, Any]:
    """What a claimed device reports about its network (from its configuration)."""
    network = json.loads(row["network"]) if row["network"] else {}
    digest = hashlib.sha256(row["device_id"].encode()).digest()
    status: dict[str, Any] = {"LastUpdatedTime": lc.to_datetime(row["claimed_at"])}
    for index, port in enumerate(("Ethernet0", "Ethernet1")):
        config = network.get(port)
        if config is None and index == 1:
            status["Ethernet1Status"] = {"ConnectionStatus": "NOT_CONNECTED"}
            continue
        static = (config or {}).get("StaticIpConnectionInfo") or {}
        address = static.get("IpAddress") or f"10.{digest[0]}.{digest[1]}.{max(digest[2], 2) - index}"
        status[f"{port}Status"] = {
            "ConnectionStatus": "CONNECTED",
            "IpAddress": address,
            "HwAddress": ":".join(f"{b:02x}" for b in (0x02, digest[3], digest[4], digest[5], digest[6], index)),
        }
    servers = (network.get("Ntp") or {}).get("NtpServers") or []
    status["NtpStatus"] = {"ConnectionStatus": "CONNECTED", "NtpServerName": servers[0] if servers else "pool.ntp.org"}
    return status


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().lower().rstrip("=")[:26]


def _with_token(out: dict[str, Any], name: str, token: str | None) -> dict[str, Any]:
    if token:
        out[name] = token
    return out


#: Aggregated statuses whose devices are never claimed, and the rows that can have each status (a necessary
#: condition: lifecycle.device_state decides) - so a filtered listing reads only those rows.
UNCLAIMED_STATUSES = frozenset({"AWAITING_PROVISIONING", "PENDING", "FAILED", "ERROR"})
STATUS_ROWS = {
    "AWAITING_PROVISIONING": "claim_status IS NULL AND deleted_at IS NULL",
    "PENDING": "claim_status IS NULL AND deleted_at IS NULL",
    "FAILED": "claim_status = 'FAILED' AND deleted_at IS NULL",
    "DELETING": "deleted_at IS NOT NULL",
    **{status: "claim_status = 'SUCCEEDED' AND deleted_at IS NULL"
       for status in ("ONLINE", "OFFLINE", "REBOOTING", "UPDATE_NEEDED", "LEASE_EXPIRED")},
}


def paginate(
    items: list[dict[str, Any]],
    key: Callable[[dict[str, Any]], list[Any]],
    scope: list[Any],
    next_token: str | None,
    limit: int,
    descending: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of ``items`` in ``key`` order after the position ``next_token`` names.

    The token (base64 JSON) holds the last key returned and the query it belongs to, so
    pages stay consistent when items are added or removed between calls.
    """
    ordered = sorted(items, key=key, reverse=descending)
    start = 0
    last = token_position(next_token, scope)
    if last is not None:
        start = len(ordered)
        for index, item in enumerate(ordered):
            k = key(item)
            if (k < last) if descending else (k > last):
                start = index
                break
    page = ordered[start : start + limit]
    token = None
    if start + limit < len(ordered) and page:
        token = make_token(key(page[-1]), scope)
    return page, token


def token_position(next_token: str | None, scope: list[Any]) -> Any:
    """The last key a NextToken names (None without one); a token of another query is refused."""
    if not next_token:
        return None
    try:
        data = json.loads(base64.b64decode(next_token, validate=True))
        last, token_scope = data["k"], data["s"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise validation_error(
            "NextToken is not a token this authority issued", [Violation("NextToken", next_token, "invalid token")]
        ) from None
    if token_scope != scope:
        raise validation_error(
            "NextToken belongs to a different query (filters and sort must stay the same while paging)",
            [Violation("NextToken", next_token, "issued for a different query")],
        )
    return last


def make_token(last: Any, scope: list[Any]) -> str:
    return base64.b64encode(json.dumps({"k": last, "s": scope}).encode()).decode()
