"""``panostage config show|data-path``."""

from __future__ import annotations

import click

from agent.cli.app import App, command_options, pass_app
from agent.cli.output import render_table


@click.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command()
@command_options
@pass_app
def show(app: App) -> None:
    """Every key, its effective value and where it came from (default, file, env, flag); and the
    PANOSTAGE_* variables set that are not configuration, ignored."""
    from agent import paths

    rows = app.loaded.rows()
    resolved = {
        "state_dir": str(paths.state_dir(app.settings)),
        "runtime_dir": str(paths.runtime_dir(app.settings)),
    }
    ignored = app.loaded.ignored_env
    data = {"files": app.loaded.files, "settings": rows, "resolved": resolved, "ignored_env": ignored}

    def human() -> str:
        head = "files read: " + (", ".join(app.loaded.files) or "none")
        table = render_table(rows, ["key", "value", "source"], ["KEY", "VALUE", "SOURCE"])
        lines = "\n".join(f"{k}: {v}" for k, v in resolved.items())
        if ignored:  # names only: their values are another tool's business
            lines += "\nnot configuration, ignored: " + ", ".join(ignored)
        return f"{head}\n{table}\n{lines}"

    app.out.data(data, human)


@config.command("data-path")
@command_options
@pass_app
def data_path(app: App) -> None:
    """The directory holding panostage's Panorama service definition (for AWS_DATA_PATH)."""
    from agent.aws.model import DATA_DIR

    app.out.data({"data_path": str(DATA_DIR)}, str(DATA_DIR))
