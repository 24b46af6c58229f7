"""``panostage job ota|reboot|describe|list`` (CreateJobForDevices and friends)."""

from __future__ import annotations

from typing import Any

import click

from agent.cli.app import App, command_options, pass_app
from agent.cli.inputs import wait_options
from agent.cli.output import render_mapping, render_table, strip_metadata

JOB_TERMINAL = {"ok": ("COMPLETED",), "failed": ("FAILED",)}


@click.group()
def job() -> None:
    """Run OTA updates and reboots on provisioned devices."""


@job.command()
@click.argument("device_ref", metavar="DEVICE")
@click.option("--image-version", required=True, help="Target device software version.")
@click.option("--allow-major", is_flag=True, help="Apply it even if it is a major version change.")
@wait_options
@command_options
@pass_app
def ota(
    app: App,
    device_ref: str,
    image_version: str,
    allow_major: bool,
    wait: bool,
    timeout: float | None,
    interval: float | None,
) -> None:
    """Update a device's software over the air."""
    config = {"OTAJobConfig": {"ImageVersion": image_version, "AllowMajorVersionUpdate": allow_major}}
    _create(app, device_ref, "OTA", config, wait, timeout, interval)


@job.command()
@click.argument("device_ref", metavar="DEVICE")
@wait_options
@command_options
@pass_app
def reboot(app: App, device_ref: str, wait: bool, timeout: float | None, interval: float | None) -> None:
    """Reboot a device."""
    _create(app, device_ref, "REBOOT", None, wait, timeout, interval)


def _create(
    app: App,
    device_ref: str,
    job_type: str,
    config: dict[str, Any] | None,
    wait: bool,
    timeout: float | None,
    interval: float | None,
) -> None:
    from agent.aws import validation
    from agent.aws.provisioning import resolve_device_id
    from agent.errors import InputValidationError, Violation

    # Check the request first (with the reference as given), so bad input never costs a call.
    request: dict[str, Any] = {"DeviceIds": [device_ref], "JobType": job_type}
    if config:
        request["DeviceJobConfig"] = config
    violations = validation.check("CreateJobForDevices", request)
    if violations:  # named by what was typed: DEVICE, --image-version
        typed = {"DeviceIds": "DEVICE", "DeviceJobConfig.OTAJobConfig.ImageVersion": "--image-version"}
        raise InputValidationError(
            [Violation(next((f for p, f in typed.items() if v.path.startswith(p)), v.path), v.value, v.rule)
             for v in violations],
            subject="job",
        )  # fmt: skip
    client = app.backend().panorama()
    request["DeviceIds"] = [resolve_device_id(client, device_ref)]
    ota = (config or {}).get("OTAJobConfig") or {}
    if job_type == "OTA" and not ota.get("AllowMajorVersionUpdate"):
        _refuse_major_update(client, device_ref, request["DeviceIds"][0], ota["ImageVersion"])
    created = strip_metadata(client.create_job_for_devices(**request))
    job_id = created["Jobs"][0]["JobId"]
    result = _wait_job(app, client, job_id, timeout, interval) if wait else {"JobId": job_id, **created["Jobs"][0]}
    app.out.data(
        result, lambda: render_mapping(result) if wait else f"{job_type} job {job_id} created for {device_ref}"
    )


def _refuse_major_update(client: Any, device_ref: str, device_id: str, image_version: str) -> None:
    """Refuse, before any job is made, an OTA that crosses a major version without ``--allow-major``: the
    service would accept the job and fail it, without saying why."""
    from agent.aws.ota import major_update
    from agent.errors import ExitCode, PanostageError, Violation

    update = major_update(client.describe_device(DeviceId=device_id).get("CurrentSoftware"), image_version)
    if update is None:
        return
    current, have, want = update.current, update.have, update.want
    rule = f"a major version update from the device's current software {current} ({have}.x to {want}.x): needs --allow-major"
    raise PanostageError(
        f"{device_ref} runs {current}; --image-version {image_version} is a major version update ({have}.x to "
        f"{want}.x), which the service fails unless it is allowed: no job was made",
        exit_code=ExitCode.VALIDATION,
        reason="major-version-update",
        hint=f"add --allow-major to update it to {image_version} anyway, or give a {have}.x --image-version",
        details={
            "violations": [Violation("--image-version", image_version, rule).to_dict()],
            "device_id": device_id,
            "current_software": current,
            "image_version": image_version,
            "flag": "--allow-major",
        },
    )


def _wait_job(app: App, client: Any, job_id: str, timeout: float | None, interval: float | None) -> dict[str, Any]:
    from agent.aws.waiting import Terminal
    from agent.errors import OperationFailed

    try:
        return app.wait(
            lambda: strip_metadata(client.describe_device_job(JobId=job_id)),
            lambda r: r.get("Status"),
            Terminal.of(*JOB_TERMINAL.values()),
            what=f"job {job_id}",
            timeout=timeout,
            interval=interval,
            check_with=f"panostage job describe {job_id}",
        )
    except OperationFailed as exc:
        job = exc.details.get("response") or {"JobId": job_id}
        failure = failure_facts(client, job)
        raise OperationFailed(
            f"job {job_id} ({_job_words(job)}) ended {job.get('Status', 'FAILED')}: {failure['Known']}",
            details={**exc.details, "failure": failure},
            hint=failure.get("Hint") or f"`panostage job describe {job_id}` shows the job and its device",
        ) from None


def _job_words(job: dict[str, Any]) -> str:
    """``OTA 5.0.0 on cam-1 (device-…)``."""
    what = " ".join(str(job[k]) for k in ("JobType", "ImageVersion") if job.get(k))
    on = job.get("DeviceName") or job.get("DeviceId")
    return f"{what or 'job'} on {on}" + (
        f" ({job['DeviceId']})" if job.get("DeviceName") and job.get("DeviceId") else ""
    )


def failure_facts(client: Any, job: dict[str, Any]) -> dict[str, Any]:
    """What is known about a failed job: DescribeDeviceJob gives no reason, so the job's device is asked how
    it stands (its statuses, its software, its latest job), and a known cause is named."""
    from botocore.exceptions import ClientError

    from agent.aws.errors import error_code
    from agent.aws.ota import major_update

    facts: dict[str, Any] = {}
    device: dict[str, Any] = {}
    try:
        device = strip_metadata(client.describe_device(DeviceId=job.get("DeviceId", "")))
    except ClientError as exc:
        facts["DeviceError"] = error_code(exc)
    for key in ("ProvisioningStatus", "DeviceConnectionStatus", "DeviceAggregatedStatus", "CurrentSoftware"):
        if device.get(key):
            facts[key] = device[key]
    if device.get("LatestDeviceJob"):
        facts["LatestDeviceJob"] = device["LatestDeviceJob"]
    known = ["the service gives no reason for a failed job"]
    if device:
        known.append(
            "the device is "
            + ", ".join(
                f"{label} {device[key]}"
                for key, label in (
                    ("ProvisioningStatus", "provisioning"),
                    ("DeviceConnectionStatus", "connection"),
                    ("DeviceAggregatedStatus", "status"),
                    ("CurrentSoftware", "software"),
                )
                if device.get(key)
            )
        )
    elif facts.get("DeviceError") == "ResourceNotFoundException":
        known.append("the device no longer exists")
    elif facts.get("DeviceError"):
        known.append(f"the device could not be described ({facts['DeviceError']})")
    image = job.get("ImageVersion")
    update = major_update(device.get("CurrentSoftware"), image) if image else None
    if job.get("JobType") == "OTA" and update is not None:
        known.append(f"{image} is {update.words}, which the service fails unless the job allows it")
        facts["Hint"] = (
            f"run it again with --allow-major: `panostage job ota {job.get('DeviceId')} --image-version {image} --allow-major`"
        )
    elif device and device.get("DeviceConnectionStatus") not in (None, "ONLINE"):
        known.append("a job needs the device ONLINE")
    facts["Known"] = "; ".join(known)
    return facts


@job.command()
@click.argument("job_id")
@wait_options
@command_options
@pass_app
def describe(app: App, job_id: str, wait: bool, timeout: float | None, interval: float | None) -> None:
    """Show a job; --wait until it completes or fails."""
    from agent.aws import validation

    validation.validate("DescribeDeviceJob", {"JobId": job_id})
    client = app.backend().panorama()
    info = (
        _wait_job(app, client, job_id, timeout, interval)
        if wait
        else strip_metadata(client.describe_device_job(JobId=job_id))
    )
    if info.get("Status") == "FAILED":
        info["Failure"] = failure_facts(client, info)
    app.out.data(info, lambda: render_mapping(info))


@job.command("list")
@click.option("--device", "device_ref", metavar="DEVICE", help="Only jobs of this device (ID or name).")
@command_options
@pass_app
def list_(app: App, device_ref: str | None) -> None:
    """List jobs (ListDevicesJobs; items carry no status: describe one for it)."""
    from agent.aws.paging import pages
    from agent.aws.provisioning import resolve_device_id

    client = app.backend().panorama()
    params: dict[str, Any] = {"MaxResults": 25}
    if device_ref:
        params["DeviceId"] = resolve_device_id(client, device_ref)
    jobs = list(pages(client.list_devices_jobs, "DeviceJobs", **params))
    app.out.data(
        jobs,
        lambda: (
            render_table(
                jobs,
                ["JobId", "JobType", "DeviceName", "DeviceId", "CreatedTime"],
                ["JOB ID", "TYPE", "DEVICE", "DEVICE ID", "CREATED"],
            )
            or "no jobs"
        ),
    )
