"""The ``panostage`` command: global options, lazy subcommands, and the one place
where exceptions become exit codes."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any, cast

import click

from agent import __version__
from agent.cli.app import App, command_options, config_option
from agent.cli.output import Output, dumps
from agent.error_mapping import to_error
from agent.errors import ExitCode, PanostageError
from agent.interrupts import Terminated  # SIGTERM as an exception (held while ProvisionDevice answers)
from agent.interrupts import on_sigterm as _on_sigterm

#: subcommand name -> ("module:attribute", one-line summary). Modules are imported only when the
#: command runs; the summaries let `panostage --help` list them without importing any (fast start-up).
#: tests/test_startup.py keeps each summary equal to its command's own short help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "authority": ("agent.cli.authority_cmd:authority", "Run the local provisioning authority, or steer a running one."),
    "config": ("agent.cli.config_cmd:config", "Inspect the effective configuration."),
    "device": ("agent.cli.device_cmd:device", "Provision, list, describe and delete devices."),
    "job": ("agent.cli.job_cmd:job", "Run OTA updates and reboots on provisioned devices."),
    "log": ("agent.cli.log_cmd:log_group", "The hand-off log (hash-chained JSON Lines in the state directory)."),
    "package": ("agent.cli.package_cmd:package", "Import node packages from S3."),
    "plan": ("agent.cli.plan_cmd:plan", "The plan: devices to provision, one per stick, in order."),
    "sim": ("agent.cli.sim_cmd:sim", "Simulators for tests and demonstrations."),
    "snow": ("agent.cli.snow_cmd:snow", "Reboot or unlock managed Snow devices (CreateTask) and follow the tasks."),
    "stage": (
        "agent.cli.stage_cmd:stage",
        "Provision a device and write its archive to the stick's root as certificates-omni_<name>.zip.",
    ),
    "status": (
        "agent.cli.daemon_cmd:status",
        "Plan counts, each stick in view with its state and time left, and the last errors.",
    ),
    "stick": ("agent.cli.stick_cmd:stick", "Work with provisioning sticks."),
    "verify": (
        "agent.cli.verify_cmd:verify",
        "Verify an archive file, a stick directory, a FAT image or a block device.",
    ),
    "watch": (
        "agent.cli.daemon_cmd:watch",
        "Watch udev for provisioning sticks and stage the plan onto them (the daemon).",
    ),
}


class LazyGroup(click.Group):
    """A group whose subcommands live in modules imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name][0].split(":")
            return cast(click.Command, getattr(importlib.import_module(module), attr))  # the registry names commands
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands from the registry's summaries, importing none of them."""
        summaries = {name: summary for name, (_, summary) in self.lazy.items()}
        summaries.update({name: cmd.get_short_help_str(1000) for name, cmd in self.commands.items()})
        if not summaries:
            return
        limit = formatter.width - 6 - max(len(name) for name in summaries)
        rows = [(name, _shortened(summaries[name], limit)) for name in sorted(summaries)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _shortened(summary: str, limit: int) -> str:
    """``summary`` cut to ``limit`` as click cuts a command's own help (its helper for it is deprecated)."""
    return click.Command(None, help=summary).get_short_help_str(limit)


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="panostage")
@config_option
@click.option("--backend", type=click.Choice(["local", "aws"]), help="local: the embedded authority (default); aws.")
@click.option("--endpoint-url", metavar="URL", help="Talk to this authority instead (any that speaks the protocol).")
@click.option("--region", help="Region used for signing and AWS endpoints.")
@click.option("--profile", help="AWS profile (aws and endpoint backends).")
@click.option("--state-dir", metavar="DIR", help="Where state lives (database, hand-off log, local authority).")
@command_options
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: str | None,
    backend: str | None,
    endpoint_url: str | None,
    region: str | None,
    profile: str | None,
    state_dir: str | None,
) -> None:
    """Provision devices and stage their configuration archives onto USB sticks."""
    from agent import config

    flags = {
        "backend.name": backend,
        "backend.endpoint_url": endpoint_url,
        "backend.region": region,
        "backend.profile": profile,
        "paths.state_dir": state_dir,
    }
    early = ctx.obj if isinstance(ctx.obj, dict) else {}
    loaded = config.load(config_file, flags=flags)
    ctx.obj = App(
        loaded=loaded,
        out=Output(json=early.get("json", False), quiet=early.get("quiet", False)),
        debug=early.get("debug", False),
    )


def _prescan(args: list[str]) -> dict[str, bool]:
    """Find --json/--debug/--quiet anywhere in argv (they must work even when parsing fails)."""
    seen = args[: args.index("--")] if "--" in args else args
    return {
        "json": "--json" in seen,
        "debug": "--debug" in seen or os.environ.get("PANOSTAGE_DEBUG") == "1",
        "quiet": "--quiet" in seen or "-q" in seen,
    }


def report(error: PanostageError, exc: BaseException, *, json_mode: bool, debug: bool) -> None:
    """Tell the user what failed, on stderr."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if json_mode:
        sys.stderr.write(dumps({"error": error.to_dict()}) + "\n")
        return
    sys.stderr.write(f"error: {error.message}\n")
    for also in error.details.get("also", []):
        sys.stderr.write(f"also: {also}\n")
    if error.hint:
        sys.stderr.write(f"hint: {error.hint}\n")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    import signal

    args = sys.argv[1:] if argv is None else list(argv)
    flags = _prescan(args)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)  # the daemon installs its own handler in `watch`
    try:
        result = cli.main(args=args, prog_name="panostage", standalone_mode=False, obj=flags)
        return int(result) if isinstance(result, int) else ExitCode.OK
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        sys.stderr.write("\ninterrupted\n")
        return ExitCode.INTERRUPTED
    except click.ClickException as exc:
        if flags["json"]:
            error = PanostageError(exc.format_message(), exit_code=ExitCode.USAGE, reason="usage")
            sys.stderr.write(dumps({"error": error.to_dict()}) + "\n")
        else:
            exc.show()
        return ExitCode.USAGE
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return ExitCode.INTERRUPTED
    except Terminated:
        sys.stderr.write("terminated: what was under way was undone\n")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - this is the boundary
        error = to_error(exc)
        report(error, exc, json_mode=flags["json"], debug=flags["debug"])
        return error.exit_code
