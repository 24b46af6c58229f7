"""``panostage device provision|list|describe|delete``."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import click

from agent.cli.app import App, command_options, narrator, pass_app
from agent.cli.completion import complete_path
from agent.cli.inputs import provision_options, request_from_options, wait_options
from agent.cli.output import render_mapping, render_table, strip_metadata

ARCHIVE_NAME = "certificates-omni_{name}.zip"


@click.group()
def device() -> None:
    """Provision, list, describe and delete devices."""


@device.command()
@provision_options
@click.option(
    "--out",
    metavar="FILE|DIR|-",
    shell_complete=complete_path,
    help="Write the configuration archive here (a directory gets certificates-omni_<name>.zip; - is stdout).",
)
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@command_options
@pass_app
def provision(app: App, /, out: str | None, force: bool, **inputs: Any) -> None:
    """Create a device (ProvisionDevice) and receive its configuration archive.

    The archive holds a certificate valid for 5 minutes: to put it on a stick
    with every check, use `panostage stage` instead.
    """
    from agent.aws.provisioning import provision_device
    from agent.provision_request import given_inputs, validate_typed

    given, from_file = given_inputs(inputs), bool(inputs.get("input_json"))
    request = request_from_options(inputs)
    validate_typed(request, given, from_file=from_file)
    backend = app.backend()
    result = provision_device(backend, request, clock=app.get_clock(), on_event=narrator(app))
    archive = result.archive
    data: dict[str, Any] = {
        **result.summary(),
        "Name": request["Name"],
        "archive": {"sha256": hashlib.sha256(archive).hexdigest(), "size": len(archive)},
    }
    if out == "-":
        sys.stdout.buffer.write(archive)
        sys.stdout.flush()
        app.out.json = False
        app.out.say(f"provisioned {request['Name']} ({result.device_id}); archive written to stdout")
        return
    if out:
        target = Path(out)
        if target.is_dir():
            target = target / ARCHIVE_NAME.format(name=request["Name"])
        from agent.fileio import write_file_atomic

        write_file_atomic(target, archive, overwrite=force)
        data["archive"]["file"] = str(target)
    app.out.data(data, lambda: _provision_text(data))
    if not out:
        app.out.say("the archive was not saved (no --out); this device cannot be provisioned without it")


def _provision_text(data: dict[str, Any]) -> str:
    archive = data["archive"]
    lines = [
        f"device     {data['Name']} ({data['DeviceId']})",
        f"status     {data['Status']}",
        f"arn        {data['Arn']}",
        f"archive    {archive['size']} bytes, sha256 {archive['sha256']}",
    ]
    if archive.get("file"):
        lines.append(f"written to {archive['file']}")
    if data.get("orphans_deleted"):
        lines.append(
            "deleted    " + ", ".join(data["orphans_deleted"]) + " (created by an attempt whose answer was lost)"
        )
    return "\n".join(lines)


@device.command("list")
@click.option("--name", "name_prefix", metavar="PREFIX", help="Only devices whose name starts with PREFIX.")
@click.option(
    "--status", "aggregated", metavar="STATUS", help="Only devices with this aggregated status (e.g. ONLINE)."
)
@click.option("--sort-by", type=click.Choice(["DEVICE_ID", "CREATED_TIME", "NAME", "DEVICE_AGGREGATED_STATUS"]))
@click.option("--order", type=click.Choice(["ASCENDING", "DESCENDING"]))
@command_options
@pass_app
def list_(app: App, name_prefix: str | None, aggregated: str | None, sort_by: str | None, order: str | None) -> None:
    """List devices (every page)."""
    from agent.aws import validation
    from agent.aws.paging import pages

    params: dict[str, Any] = {"MaxResults": 25}
    for key, value in (
        ("NameFilter", name_prefix),
        ("DeviceAggregatedStatusFilter", aggregated),
        ("SortBy", sort_by),
        ("SortOrder", order),
    ):
        if value:
            params[key] = value
    validation.validate("ListDevices", params)
    devices = list(pages(app.backend().panorama().list_devices, "Devices", **params))
    app.out.data(
        devices,
        lambda: (
            render_table(
                devices,
                ["Name", "DeviceId", "ProvisioningStatus", "DeviceAggregatedStatus", "CreatedTime"],
                ["NAME", "DEVICE ID", "PROVISIONING", "STATUS", "CREATED"],
            )
            or "no devices"
        ),
    )


PROVISIONING = {"ok": ("SUCCEEDED",), "failed": ("FAILED", "ERROR")}


@device.command()
@click.argument("device_ref", metavar="DEVICE")
@wait_options
@command_options
@pass_app
def describe(app: App, device_ref: str, wait: bool, timeout: float | None, interval: float | None) -> None:
    """Show a device (by ID or exact name); --wait until its provisioning ends."""
    from agent.aws.provisioning import resolve_device_id
    from agent.aws.waiting import Terminal
    from agent.errors import OperationFailed

    client = app.backend().panorama()
    device_id = resolve_device_id(client, device_ref)

    def fetch() -> dict[str, Any]:
        return strip_metadata(client.describe_device(DeviceId=device_id))

    try:
        info = (
            app.wait(
                fetch,
                lambda r: r.get("ProvisioningStatus"),
                Terminal.of(*PROVISIONING.values()),
                what=f"device {device_ref}",
                timeout=timeout,
                interval=interval,
                check_with=f"panostage device describe {device_id}",
            )
            if wait
            else fetch()
        )
    except OperationFailed as exc:
        exc.hint = (
            "the appliance could not claim it: `panostage stick collect TARGET` copies the appliance's logs from its "
            "stick, which say why; stage the device again"
        )
        raise
    app.out.data(info, lambda: render_mapping(info))


@device.command()
@click.argument("device_ref", metavar="DEVICE")
@wait_options
@command_options
@pass_app
def delete(app: App, device_ref: str, wait: bool, timeout: float | None, interval: float | None) -> None:
    """Delete a device (by ID or exact name), in any state; --wait until it is gone."""
    from botocore.exceptions import ClientError

    from agent.aws.errors import error_code
    from agent.aws.provisioning import resolve_device_id
    from agent.aws.waiting import Terminal

    client = app.backend().panorama()
    device_id = resolve_device_id(client, device_ref)
    response = strip_metadata(client.delete_device(DeviceId=device_id))
    if wait:

        def fetch() -> dict[str, Any]:
            try:
                return strip_metadata(client.describe_device(DeviceId=device_id))
            except ClientError as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return {"ProvisioningStatus": "DELETED"}
                raise

        app.wait(
            fetch,
            lambda r: r.get("ProvisioningStatus"),
            Terminal.of({"DELETED"}, set()),
            what=f"deleting {device_ref}",
            timeout=timeout,
            interval=interval,
            check_with=f"panostage device describe {device_id}",
        )
        response["Deleted"] = True
    app.out.data(response, lambda: f"deleted {device_ref} ({device_id})" + ("" if wait else "; it is DELETING"))
