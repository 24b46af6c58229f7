"""The per-invocation context shared by every command, and the decorators that reach it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click

from agent.cli.completion import complete_path
from agent.cli.output import Output

if TYPE_CHECKING:  # heavy imports stay out of start-up (`panostage --help` loads none of these)
    from agent.aws.backend import Backend
    from agent.aws.waiting import Terminal
    from agent.clock import Clock
    from agent.config import LoadedConfig, Settings

_F = TypeVar("_F", bound=Callable[..., Any])
_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass
class App:
    """Configuration, output and (lazily) the backend for one command."""

    loaded: LoadedConfig
    out: Output
    debug: bool = False
    clock: Clock | None = None
    _backend: Backend | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    def backend(self) -> Backend:
        """The configured backend, opened once (the embedded authority starts here)."""
        if self._backend is None:
            from agent.aws.backend import open_backend

            self._backend = open_backend(self.settings)
            click.get_current_context().call_on_close(self._backend.close)
        return self._backend

    def wait(
        self,
        fetch: Callable[[], dict[str, Any]],
        state_of: Callable[[dict[str, Any]], str | None],
        terminal: Terminal,
        *,
        what: str,
        timeout: float | None,
        interval: float | None,
        check_with: str,
    ) -> dict[str, Any]:
        """Poll with ``--timeout``/``--interval`` (defaults from [wait]), progress on a tty; ``check_with`` is the
        command that describes it, for the hints."""
        from agent.aws.waiting import wait_for

        return wait_for(
            fetch,
            state_of,
            terminal,
            what=what,
            timeout=self.settings.wait.timeout_seconds if timeout is None else timeout,
            interval=self.settings.wait.interval_seconds if interval is None else interval,
            progress=self.out.progress,
            check_with=check_with,
        )

    def get_clock(self) -> Clock:
        if self.clock is None:
            from agent.clock import SystemClock

            self.clock = SystemClock()
        return self.clock


def narrator(app: App) -> Callable[..., None]:
    """Tell the person what the provisioning flow did on its way (stderr)."""

    def on_event(kind: str, **data: Any) -> None:
        if kind == "device-deleted":
            app.out.say(f"deleted device {data['name']} ({data['id']}): {data['reason']}")
        elif kind == "orphan-deleted":
            app.out.say(f"deleted device {data['device_id']}: created by an attempt whose answer was lost")
        elif kind == "start-over":
            app.out.say(f"starting over for {data['name']}: {data['reason']}")
        elif kind == "provision-attempt-failed":
            app.out.say(f"ProvisionDevice attempt {data['attempt']} failed: {data['error']}")
        elif kind == "cleanup-failed":
            app.out.warn(f"could not clean up {data['what']}: {data['error']}")
        elif kind == "waiting":
            app.out.say(f"waiting {data['seconds']:.0f} s for {data['reason']}")

    return on_event


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and isinstance(ctx.obj, App):
        ctx.obj.out.json = True


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and isinstance(ctx.obj, App):
        ctx.obj.debug = True


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and isinstance(ctx.obj, App):
        ctx.obj.out.quiet = True


json_option = click.option(
    "--json", "json_", is_flag=True, expose_value=False, callback=_set_json, help="Print data as JSON on stdout."
)
debug_option = click.option(
    "--debug", is_flag=True, expose_value=False, callback=_set_debug, help="Show tracebacks of failures."
)
#: The root group's ``--config FILE`` (completes file names).
config_option = click.option(
    "--config", "config_file", metavar="FILE", shell_complete=complete_path, help="Read only this configuration file."
)
quiet_option = click.option(
    "--quiet", "-q", is_flag=True, expose_value=False, callback=_set_quiet, help="No human messages on stderr."
)


def command_options(func: _F) -> _F:
    """The options every leaf command accepts (also accepted before the subcommand)."""
    return json_option(debug_option(quiet_option(func)))


def pass_app(func: Callable[Concatenate[App, _P], _R]) -> Callable[_P, _R]:
    """Hand the :class:`App` to a command as its first argument."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        app = click.get_current_context().find_object(App)
        if app is None:  # the root group makes the App: a command is never run without it
            raise RuntimeError(f"{func.__name__} runs under the panostage group, which makes its App")
        return func(app, *args, **kwargs)

    return wrapper
