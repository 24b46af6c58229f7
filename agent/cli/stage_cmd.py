"""``panostage stage``: provision a device and put its archive on a stick, verified and logged."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from agent.cli.app import App, command_options, narrator, pass_app
from agent.cli.completion import complete_target
from agent.cli.inputs import provision_options, request_from_options


def format_left(seconds: float) -> str:
    """``4m41s`` (or ``expired``)."""
    if seconds <= 0:
        return "expired"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@click.command()
@provision_options
@click.option(
    "--to",
    "target_spec",
    required=True,
    metavar="TARGET",
    shell_complete=complete_target,
    help="The stick: a mounted directory, a FAT image file (IMAGE[@@OFFSET]) or a block device.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Replace what blocks the write: another device's live archive, a read-only file, "
    "a symlink or an empty directory at the name.",
)
@click.option("--replace-device", is_flag=True, help="Delete an existing device of this name and provision anew.")
@click.option(
    "--margin",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Do not write with less validity left than this (default [stage] margin_seconds).",
)
@click.option("--allow-non-fat", is_flag=True, default=None, help="Accept a directory that is not on FAT (lab use).")
@command_options
@pass_app
def stage(
    app: App,
    /,
    target_spec: str,
    replace: bool,
    replace_device: bool,
    margin: float | None,
    allow_non_fat: bool | None,
    **inputs: Any,
) -> None:
    """Provision a device and write its archive to the stick's root as certificates-omni_<name>.zip.

    The archive is verified as received and again as read back from the stick;
    the hand-off is logged; the certificate's deadline is printed.
    """
    from agent import paths
    from agent.archive.verify import staged_name_violations
    from agent.errors import InputValidationError, LocalIOError, PanostageError
    from agent.provision_request import given_inputs, validate_typed
    from agent.staging.factory import log_unopened_stick, make_stager
    from agent.stick import open_target

    given, from_file = given_inputs(inputs), bool(inputs.get("input_json"))
    request = request_from_options(inputs)
    validate_typed(request, given, from_file=from_file)  # named by the flags typed
    too_long = staged_name_violations(request["Name"], "--name")  # its archive's name must fit FAT
    if too_long:
        raise InputValidationError(too_long, subject="stage request")
    allow = app.settings.stage.allow_non_fat if allow_non_fat is None else allow_non_fat
    try:
        opened = open_target(target_spec, allow_non_fat=allow, runtime_dir=paths.runtime_dir(app.settings))
    except PanostageError as exc:  # refused or unreadable: a hand-off that failed at its first step
        log_unopened_stick(app.settings, app.get_clock(), request["Name"], target_spec, exc)
        raise
    with opened as target:
        stager = make_stager(
            app.settings,
            app.backend(),
            app.get_clock(),
            replace=replace,
            replace_device=replace_device,
            margin_seconds=margin,
            on_event=narrator(app),
        )
        result = stager.stage(request, target)
    data = result.to_dict()
    app.out.data(data, lambda: stage_summary(data, result.deadline))
    for warning in result.stick_warnings:
        app.out.warn(f"the stick: {warning}; its FAT checks out, so it was written (`fsck.fat -a` clears the flag)")
    if result.log_error:
        raise LocalIOError(
            f"{result.device['name']} is staged and verified on the stick (take it to the appliance), but "
            f"the hand-off log could not record it: {result.log_error}",
            reason="log-append-failed",
            hint="free space in, or repair, the state directory; `panostage log verify` checks the log",
        )


def stage_summary(data: dict[str, Any], deadline: datetime) -> str:
    stick = data["stick"]
    where = stick.get("path")
    label = " ".join(str(x) for x in (stick.get("label"), stick.get("fs_uuid")) if x)
    steps = " · ".join(f"{k} {v:.0f}ms" for k, v in data["durations_ms"].items() if v >= 0.5)
    local = deadline.astimezone().strftime("%H:%M:%S %Z")
    lines = [
        f"staged {data['device']['name']} ({data['device']['id']}) onto {where}" + (f" [{label}]" if label else ""),
        f"  archive   {data['archive']['file']}  {data['archive']['size']} bytes  sha256 {data['archive']['sha256'][:16]}…",
        f"  cert      serial {data['certificate']['serial']}  valid until {local}",
        "  verified  as received and as read back from the stick",
        f"  steps     {steps}",
        f"TIME LEFT {format_left(data['seconds_left'])} — plug the stick into the appliance now",
    ]
    if data.get("removed_from_stick"):
        lines.insert(2, "  removed   " + ", ".join(data["removed_from_stick"]))
    return "\n".join(lines)
