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

    # Check the request first (with the reference as given), so bad input never costs a call.
    request: dict[str, Any] = {"DeviceIds": [device_ref], "JobType": job_type}
    if config:
        request["DeviceJobConfig"] = config
    validation.validate("CreateJobForDevices", request)
    client = app.backend().panorama()
    request["DeviceIds"] = [resolve_device_id(client, device_ref)]
    created = strip_metadata(client.create_job_for_devices(**request))
    job_id = created["Jobs"][0]["JobId"]
    result = _wait_job(app, client, job_id, timeout, interval) if wait else {"JobId": job_id, **created["Jobs"][0]}
    app.out.data(
        result, lambda: render_mapping(result) if wait else f"{job_type} job {job_id} created for {device_ref}"
    )


def _wait_job(app: App, client: Any, job_id: str, timeout: float | None, interval: float | None) -> dict[str, Any]:
    from agent.aws.waiting import Terminal

    return app.wait(
        lambda: strip_metadata(client.describe_device_job(JobId=job_id)),
        lambda r: r.get("Status"),
        Terminal.of(*JOB_TERMINAL.values()),
        what=f"job {job_id}",
        timeout=timeout,
        interval=interval,
    )


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
