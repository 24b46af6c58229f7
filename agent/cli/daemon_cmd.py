"""``panostage watch`` (the daemon) and ``panostage status`` (what it is doing)."""

from __future__ import annotations

import fcntl
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.cli.app import App, command_options, pass_app
from agent.cli.output import dumps, render_table
from agent.cli.stage_cmd import format_left
from agent.clock import parse_iso

if TYPE_CHECKING:
    from agent.state import StateDB


@click.command()
@command_options
@pass_app
def watch(app: App) -> int:
    """Watch udev for provisioning sticks and stage the plan onto them (the daemon).

    Runs in the foreground; under systemd it reports READY/STATUS/WATCHDOG. Stop it with SIGTERM.
    """
    from agent.daemon.supervisor import Daemon, configure_logging

    configure_logging(debug=app.debug)
    return Daemon(app.settings, clock=app.get_clock()).run()


def daemon_running(state_dir: Path) -> bool:
    """True while a daemon holds the state directory's lock."""
    lock = state_dir / "daemon.lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def snapshot(state: StateDB, state_dir: Path, now: datetime) -> dict[str, Any]:
    """Everything `status` shows, as data."""
    sticks = []
    for stick in state.sticks():
        handoff = state.handoff(stick["handoff_id"]) if stick.get("handoff_id") else None
        deadline = handoff.get("deadline") if handoff else None
        left = None
        if deadline and stick["state"] == "ready":
            left = (parse_iso(deadline) - now).total_seconds()
        sticks.append(
            {
                "devnode": stick["devnode"],
                "identity": stick["identity"],
                "state": stick["state"],
                "device": handoff.get("device_name") if handoff else None,
                "deadline": deadline,
                "seconds_left": None if left is None else round(left, 1),
                "note": stick["reason"],
            }
        )
    errors = [
        {"device": h["device_name"], "state": h["state"], "at": h["updated_at"], "error": h["error"]}
        for h in state.handoffs(limit=20)
        if h["state"] in ("failed", "abandoned", "recovered") and h["error"]
    ][:5]
    attention = [
        {"name": e["name"], "attempts": e["attempts"], "error": e["last_error"]} for e in state.plan("attention")
    ]
    facts = state.facts().get("daemon") or {}
    return {
        "daemon": {**facts, "running": daemon_running(state_dir)},
        "plan": state.plan_counts(),
        "sticks": sticks,
        "last_errors": errors,
        "needs_attention": attention,
        "at": now.isoformat(),
    }


def render(data: dict[str, Any]) -> str:
    daemon = data["daemon"]
    plan = data["plan"]
    head = f"daemon    {'running' if daemon['running'] else 'not running'}" + (
        f" (pid {daemon.get('pid')}, since {daemon.get('started', '?')[:19]})" if daemon["running"] else ""
    )
    lines = [
        head,
        (
            f"plan      {plan['pending']} pending · {plan['claimed']} staging · {plan['staged']} staged · "
            f"{plan['provisioned'] + plan['done']} provisioned · {plan['attention']} need attention"
        ),
    ]
    rows = [
        {**s, "left": format_left(s["seconds_left"]) if s["seconds_left"] is not None else ""} for s in data["sticks"]
    ]
    lines.append(
        render_table(
            rows, ["devnode", "state", "device", "left", "note"], ["STICK", "STATE", "DEVICE", "TIME LEFT", "NOTE"]
        )
        or "no sticks in view"
    )
    for entry in data["needs_attention"]:
        lines.append(
            f"attention {entry['name']}: {entry['error']} (after {entry['attempts']} tries; `panostage plan retry`)"
        )
    if data["last_errors"]:
        lines.append("last errors:")
        lines += [f"  {e['at'][:19]}  {e['device'] or '-'}  {e['error']}" for e in data["last_errors"]]
    return "\n".join(lines)


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep showing it, with a live countdown (Ctrl-C to stop).")
@click.option(
    "--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True, help="Refresh period with --follow."
)
@command_options
@pass_app
def status(app: App, follow: bool, interval: float) -> None:
    """Plan counts, each stick in view with its state and time left, and the last errors."""
    from agent import paths
    from agent.state import StateDB

    state_dir = paths.state_dir(app.settings)
    state = StateDB(state_dir)
    if not follow:
        data = snapshot(state, state_dir, datetime.now(UTC))
        app.out.data(data, lambda: render(data))
        return
    previous = None
    while True:
        data = snapshot(state, state_dir, datetime.now(UTC))
        if app.out.json:
            key = dumps({k: v for k, v in data.items() if k != "at"})
            if key != previous:
                app.out.data(data)
                previous = key
        elif app.out.stdout.isatty():
            app.out.stdout.write("\033[H\033[J" + render(data) + "\n")
            app.out.stdout.flush()
        else:
            text = render(data)
            if text != previous:
                app.out.data(data, text + "\n")
                previous = text
        time.sleep(interval)  # a display refresh, not synchronisation
