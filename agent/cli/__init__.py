"""The ``panostage`` command: global options, lazy subcommands, and the one place
where exceptions become exit codes."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

import click

from agent import __version__
from agent.cli.app import App, command_options
from agent.cli.output import Output, dumps
from agent.errors import ExitCode, PanostageError, to_error
from agent.interrupts import Terminated  # SIGTERM as an exception (held while ProvisionDevice answers)
from agent.interrupts import on_sigterm as _on_sigterm

#: subcommand name -> "module:attribute"; imported only when used (keeps start-up fast).
SUBCOMMANDS = {
    "authority": "agent.cli.authority_cmd:authority",
    "config": "agent.cli.config_cmd:config",
    "device": "agent.cli.device_cmd:device",
    "job": "agent.cli.job_cmd:job",
    "log": "agent.cli.log_cmd:log_group",
    "package": "agent.cli.package_cmd:package",
    "plan": "agent.cli.plan_cmd:plan",
    "sim": "agent.cli.sim_cmd:sim",
    "snow": "agent.cli.snow_cmd:snow",
    "stage": "agent.cli.stage_cmd:stage",
    "status": "agent.cli.daemon_cmd:status",
    "stick": "agent.cli.stick_cmd:stick",
    "verify": "agent.cli.verify_cmd:verify",
    "watch": "agent.cli.daemon_cmd:watch",
}


class LazyGroup(click.Group):
    """A group whose subcommands live in modules imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="panostage")
@click.option("--config", "config_file", metavar="FILE", help="Read only this configuration file.")
@click.option("--backend", type=click.Choice(["local", "aws"]), help="local: the embedded authority (default); aws.")
@click.option("--endpoint-url", metavar="URL", help="Talk to this authority instead (any that speaks the protocol).")
@click.option("--region", help="Region used for signing and AWS endpoints.")
@click.option("--profile", help="AWS profile (aws and endpoint backends).")
@click.option("--state-dir", metavar="DIR", help="Where state lives (database, hand-off log, local authority).")
@command_options
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, backend: str | None, endpoint_url: str | None,
        region: str | None, profile: str | None, state_dir: str | None) -> None:
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
