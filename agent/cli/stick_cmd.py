"""``panostage stick collect|wipe``: the stick's return trip."""

from __future__ import annotations

import socket

import click

from agent.cli.app import App, command_options, pass_app


@click.group()
def stick() -> None:
    """Work with provisioning sticks."""


def _open(app: App, spec: str):
    from agent import paths
    from agent.stick import open_target

    return open_target(spec, allow_non_fat=app.settings.stage.allow_non_fat, runtime_dir=paths.runtime_dir(app.settings))


@stick.command()
@click.argument("target_spec", metavar="TARGET")
@click.option("--wipe", "then_wipe", is_flag=True, help="Wipe the stick afterwards.")
@command_options
@pass_app
def collect(app: App, target_spec: str, then_wipe: bool) -> None:
    """Copy the appliance's /panorama/*.log into the hand-off folder, check the device, log the outcome."""
    from agent import paths
    from agent.staging import returns
    from agent.staging.factory import handoff_log, operator_name

    log = handoff_log(app.settings)
    with _open(app, target_spec) as target:
        result = returns.collect(target, app.backend(), log, app.get_clock(), paths.state_dir(app.settings),
                                 socket.gethostname(), operator_name(app.settings))
        data = result.to_dict()
        if then_wipe:
            data["wipe"] = returns.wipe(target, log, app.get_clock(), socket.gethostname(), operator_name(app.settings))
    device = result.device.get("name") or "unknown device"
    app.out.data(data, f"{device}: {result.outcome} (status {result.provisioning_status or 'unknown'}); "
                       f"{len(result.logs)} log(s)" + (f" saved in {result.folder}" if result.folder else ""))


@stick.command()
@click.argument("target_spec", metavar="TARGET")
@click.option("--format", "reformat", is_flag=True, help="Reformat the FAT filesystem instead (keeps the label).")
@click.option("--label", help="With --format: the new label.")
@command_options
@pass_app
def wipe(app: App, target_spec: str, reformat: bool, label: str | None) -> None:
    """Remove archives and appliance logs from the stick, overwriting the archives first."""
    from agent.staging import returns
    from agent.staging.factory import handoff_log, operator_name

    with _open(app, target_spec) as target:
        data = returns.wipe(target, handoff_log(app.settings), app.get_clock(), socket.gethostname(),
                            operator_name(app.settings), reformat=reformat, label=label)
    app.out.data(data, "wiped: " + (", ".join(data["removed"]) or "nothing to remove"))
