"""``panostage package import|describe`` (CreatePackageImportJob)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import click

from agent.cli.app import App, command_options, pass_app
from agent.cli.inputs import wait_options
from agent.cli.output import render_mapping, strip_metadata
from agent.provision_request import parse_tags

IMPORT_TERMINAL = {"ok": ("SUCCEEDED",), "failed": ("FAILED",)}


@click.group()
def package() -> None:
    """Import node packages from S3."""


def default_client_token(request: dict[str, Any]) -> str:
    """A token derived from the request: running the same import twice returns the same job."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return "ps-" + hashlib.sha256(canonical.encode()).hexdigest()[:61]


@package.command("import")
@click.option("--bucket", required=True, help="S3 bucket holding the package.")
@click.option("--key", "object_key", required=True, help="S3 object key of the package.")
@click.option("--bucket-region", help="The bucket's region.")
@click.option("--name", "package_name", required=True, help="Package name (letters, digits, - and _).")
@click.option("--version", "package_version", required=True, help="Package version, MAJOR.MINOR.")
@click.option("--mark-latest", is_flag=True, help="Mark this version as the latest.")
@click.option(
    "--type",
    "job_type",
    default="NODE_PACKAGE_VERSION",
    show_default=True,
    help="NODE_PACKAGE_VERSION or MARKETPLACE_NODE_PACKAGE_VERSION.",
)
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag for the package (repeatable).")
@click.option("--client-token", help="Idempotency token (default: derived from the request).")
@wait_options
@command_options
@pass_app
def import_(
    app: App,
    bucket: str,
    object_key: str,
    bucket_region: str | None,
    package_name: str,
    package_version: str,
    mark_latest: bool,
    job_type: str,
    tags: tuple[str, ...],
    client_token: str | None,
    wait: bool,
    timeout: float | None,
    interval: float | None,
) -> None:
    """Start a package import job."""
    from agent.aws import validation

    location: dict[str, Any] = {"BucketName": bucket, "ObjectKey": object_key}
    if bucket_region:
        location["Region"] = bucket_region
    request: dict[str, Any] = {
        "JobType": job_type,
        "InputConfig": {"PackageVersionInputConfig": {"S3Location": location}},
        "OutputConfig": {
            "PackageVersionOutputConfig": {
                "PackageName": package_name,
                "PackageVersion": package_version,
                "MarkLatest": mark_latest,
            }
        },
    }
    tag_map = parse_tags(tags)
    if tag_map:
        request["JobTags"] = [{"ResourceType": "PACKAGE", "Tags": tag_map}]
    request["ClientToken"] = client_token or default_client_token(request)
    validation.validate("CreatePackageImportJob", request)
    client = app.backend().panorama()
    job_id = client.create_package_import_job(**request)["JobId"]
    if wait:
        info = _wait(app, client, job_id, timeout, interval)
        app.out.data(info, lambda: render_mapping(info))
    else:
        app.out.data({"JobId": job_id, "ClientToken": request["ClientToken"]}, f"package import job {job_id} started")


def _wait(app: App, client: Any, job_id: str, timeout: float | None, interval: float | None) -> dict[str, Any]:
    from agent.aws.waiting import Terminal

    return app.wait(
        lambda: strip_metadata(client.describe_package_import_job(JobId=job_id)),
        lambda r: r.get("Status"),
        Terminal.of(*IMPORT_TERMINAL.values()),
        what=f"package import {job_id}",
        timeout=timeout,
        interval=interval,
        check_with=f"panostage package describe {job_id}",
    )


@package.command()
@click.argument("job_id")
@wait_options
@command_options
@pass_app
def describe(app: App, job_id: str, wait: bool, timeout: float | None, interval: float | None) -> None:
    """Show a package import job; --wait until it succeeds or fails."""
    from agent.aws import validation

    validation.validate("DescribePackageImportJob", {"JobId": job_id})
    client = app.backend().panorama()
    info = (
        _wait(app, client, job_id, timeout, interval)
        if wait
        else strip_metadata(client.describe_package_import_job(JobId=job_id))
    )
    app.out.data(info, lambda: render_mapping(info))
