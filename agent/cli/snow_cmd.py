"""``panostage snow reboot|unlock|describe|executions|cancel|list|devices`` (Snow Device Management)."""

from __future__ import annotations

from typing import Any

import click

from agent.cli.app import App, command_options, pass_app
from agent.cli.inputs import wait_options
from agent.cli.output import render_mapping, render_table, strip_metadata
from agent.errors import OperationFailed
from agent.provision_request import parse_tags

TASK_TERMINAL = {"ok": ("COMPLETED", "CANCELED"), "failed": ()}
EXECUTION_FAILED = {"FAILED", "REJECTED", "TIMED_OUT", "CANCELED"}


@click.group()
def snow() -> None:
    """Reboot or unlock managed Snow devices (CreateTask) and follow the tasks."""


def _task_command(command: str) -> click.Command:
    @click.argument("targets", nargs=-1, required=True, metavar="MANAGED_DEVICE_ID...")
    @click.option("--description", help="What the task is for (letters, digits, space and _.,!#).")
    @click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag for the task (repeatable).")
    @click.option("--client-token", help="Idempotency token (default: a fresh one, as the SDK does).")
    @wait_options
    @command_options
    @pass_app
    def run(
        app: App,
        targets: tuple[str, ...],
        description: str | None,
        tags: tuple[str, ...],
        client_token: str | None,
        wait: bool,
        timeout: float | None,
        interval: float | None,
    ) -> None:
        from agent.aws import validation

        request: dict[str, Any] = {"targets": list(targets), "command": {command: {}}}
        if description is not None:
            request["description"] = description
        tag_map = parse_tags(tags)
        if tag_map:
            request["tags"] = tag_map
        if client_token:
            request["clientToken"] = client_token
        validation.validate("CreateTask", request)
        client = app.backend().snow()
        created = strip_metadata(client.create_task(**request))
        if not wait:
            app.out.data(created, f"{command} task {created['taskId']} created for {len(targets)} device(s)")
            return
        _finish(app, client, created["taskId"], timeout, interval)

    run.__doc__ = f"{command.capitalize()} one to ten managed devices."
    return snow.command(command)(run)


reboot = _task_command("reboot")
unlock = _task_command("unlock")


def _finish(app: App, client: Any, task_id: str, timeout: float | None, interval: float | None) -> None:
    """Wait for the task, then report it with its executions; a failed execution fails the command."""
    from agent.aws.waiting import Terminal

    task = app.wait(
        lambda: strip_metadata(client.describe_task(taskId=task_id)),
        lambda r: r.get("state"),
        Terminal.of(*TASK_TERMINAL.values()),
        what=f"task {task_id}",
        timeout=timeout,
        interval=interval,
        check_with=f"panostage snow describe {task_id}",
    )
    executions = _executions(client, task_id, None)
    result = {**task, "executions": executions}
    app.out.data(result, lambda: render_mapping(task) + "\n" + _execution_table(executions))
    bad = [e for e in executions if e.get("state") in EXECUTION_FAILED]
    if bad and task.get("state") != "CANCELED":
        raise OperationFailed(
            f"task {task_id}: {len(bad)} of {len(executions)} executions did not succeed: "
            + ", ".join(f"{e['managedDeviceId']} {e['state']}" for e in bad),
            details={"executions": bad},
            hint=f"`panostage snow executions {task_id} --device MANAGED_DEVICE_ID` shows one execution",
        )


def _executions(client: Any, task_id: str, state: str | None) -> list[dict[str, Any]]:
    from agent.aws.paging import pages

    params: dict[str, Any] = {"taskId": task_id}
    if state:
        params["state"] = state
    return list(pages(client.list_executions, "executions", token_key="nextToken", **params))


def _execution_table(executions: list[dict[str, Any]]) -> str:
    return (
        render_table(executions, ["managedDeviceId", "state", "executionId"], ["DEVICE", "STATE", "EXECUTION"])
        or "no executions"
    )


@snow.command()
@click.argument("task_id")
@wait_options
@command_options
@pass_app
def describe(app: App, task_id: str, wait: bool, timeout: float | None, interval: float | None) -> None:
    """Show a task; --wait until it completes (or is canceled)."""
    from agent.aws import validation

    validation.validate("DescribeTask", {"taskId": task_id})
    client = app.backend().snow()
    if wait:
        _finish(app, client, task_id, timeout, interval)
        return
    info = strip_metadata(client.describe_task(taskId=task_id))
    app.out.data(info, lambda: render_mapping(info))


@snow.command()
@click.argument("task_id")
@click.option("--device", "device_id", metavar="MANAGED_DEVICE_ID", help="Describe this device's execution only.")
@click.option(
    "--state", type=click.Choice(["QUEUED", "IN_PROGRESS", "CANCELED", "FAILED", "SUCCEEDED", "REJECTED", "TIMED_OUT"])
)
@command_options
@pass_app
def executions(app: App, task_id: str, device_id: str | None, state: str | None) -> None:
    """The task's executions, one per target device."""
    from agent.aws import validation

    client = app.backend().snow()
    if device_id:
        validation.validate("DescribeExecution", {"taskId": task_id, "managedDeviceId": device_id})
        info = strip_metadata(client.describe_execution(taskId=task_id, managedDeviceId=device_id))
        app.out.data(info, lambda: render_mapping(info))
        return
    validation.validate("ListExecutions", {"taskId": task_id, **({"state": state} if state else {})})
    rows = _executions(client, task_id, state)
    app.out.data(rows, lambda: _execution_table(rows))


@snow.command()
@click.argument("task_id")
@command_options
@pass_app
def cancel(app: App, task_id: str) -> None:
    """Cancel a task: executions not yet finished are canceled."""
    from agent.aws import validation

    validation.validate("CancelTask", {"taskId": task_id})
    info = strip_metadata(app.backend().snow().cancel_task(taskId=task_id))
    app.out.data(info, f"task {task_id} canceled")


@snow.command("list")
@click.option("--state", type=click.Choice(["IN_PROGRESS", "CANCELED", "COMPLETED"]))
@command_options
@pass_app
def list_(app: App, state: str | None) -> None:
    """List tasks."""
    from agent.aws.paging import pages

    params = {"state": state} if state else {}
    rows = list(pages(app.backend().snow().list_tasks, "tasks", token_key="nextToken", **params))
    app.out.data(
        rows, lambda: render_table(rows, ["taskId", "state", "taskArn"], ["TASK", "STATE", "ARN"]) or "no tasks"
    )


@snow.command()
@command_options
@pass_app
def devices(app: App) -> None:
    """List the managed devices tasks can target."""
    from agent.aws.paging import pages

    rows = list(pages(app.backend().snow().list_devices, "devices", token_key="nextToken"))
    app.out.data(
        rows, lambda: render_table(rows, ["managedDeviceId", "managedDeviceArn"], ["DEVICE", "ARN"]) or "no devices"
    )
