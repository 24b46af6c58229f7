"""``panostage sim appliance``: consume a stick the way the appliance does."""

from __future__ import annotations

import click

from agent.cli.app import App, command_options, pass_app
from agent.cli.completion import complete_target
from agent.errors import ExitCode, PanostageError


@click.group()
def sim() -> None:
    """Simulators for tests and demonstrations."""


@sim.command()
@click.argument("target_spec", metavar="TARGET", shell_complete=complete_target)
@click.option("--endpoint-url", metavar="URL", help="The authority to register with (default: the configured backend).")
@click.option(
    "--serial",
    "serial_number",
    default="100000000001",
    show_default=True,
    help="The appliance's serial number (1-20 digits).",
)
@command_options
@pass_app
def appliance(app: App, target_spec: str, endpoint_url: str | None, serial_number: str) -> int:
    """Read the stick's root archive, register its device, write /panorama/*.log back.

    Exit 0 when the device registered; 13 when registration failed.
    """
    from agent import paths
    from agent.appliance import Appliance
    from agent.stick import open_target

    if endpoint_url is None:
        backend = app.backend()
        if backend.kind == "aws" or backend.endpoint_url is None:  # only the aws backend has no endpoint URL
            raise PanostageError(
                "the appliance simulator registers with a local authority, not AWS",
                exit_code=ExitCode.USAGE,
                reason="usage",
                hint="give --endpoint-url of a panostage authority",
            )
        endpoint_url = backend.endpoint_url
    with open_target(target_spec, allow_non_fat=True, runtime_dir=paths.runtime_dir(app.settings)) as target:
        run = Appliance(endpoint_url, app.get_clock(), serial_number=serial_number).consume(target)
    app.out.data(run.to_dict(), f"appliance: {run.outcome} ({run.reason}); logs written to {', '.join(run.logs)}")
    return ExitCode.OK if run.outcome == "provisioned" else ExitCode.OPERATION_FAILED
