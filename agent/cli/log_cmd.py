"""``panostage log show|verify``: read and check the hand-off log."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from agent.cli.app import App, command_options, pass_app
from agent.cli.output import render_table
from agent.errors import ExitCode

if TYPE_CHECKING:
    from agent.handoff_log import HandoffLog


@click.group("log")
def log_group() -> None:
    """The hand-off log (hash-chained JSON Lines in the state directory)."""


def _open(app: App) -> HandoffLog:
    from agent.staging.factory import handoff_log

    return handoff_log(app.settings)


@log_group.command()
@click.option("--device", "device", metavar="NAME", help="Only records about this device (name or ID).")
@click.option("--last", type=click.IntRange(min=1), metavar="N", help="Only the last N records.")
@command_options
@pass_app
def show(app: App, device: str | None, last: int | None) -> None:
    """Print the records, oldest first."""
    records = list(_open(app).records())
    if device:
        records = [
            r for r in records if device in ((r.get("device") or {}).get("name"), (r.get("device") or {}).get("id"))
        ]
    if last:
        records = records[-last:]
    app.out.data(
        records,
        lambda: (
            render_table([_row(r) for r in records], ["seq", "time", "kind", "outcome", "device", "stick", "detail"])
            or "no records"
        ),
    )


def _row(record: dict[str, Any]) -> dict[str, Any]:
    device = record.get("device") or {}
    stick = record.get("stick") or {}
    detail = record.get("reason") or (record.get("error") or {}).get("message") or ""
    if record.get("archive"):
        detail = f"sha256 {record['archive'].get('sha256', '')[:16]}… until {(record.get('certificate') or {}).get('not_after', '')}"
    return {
        "seq": record.get("seq"),
        "time": record.get("time"),
        "kind": record.get("kind"),
        "outcome": record.get("outcome"),
        "device": device.get("name") or device.get("id"),
        "stick": stick.get("usb_serial") or stick.get("fs_uuid") or stick.get("path"),
        "detail": detail.replace("\n", " ")[:80],
    }


@log_group.command()
@command_options
@pass_app
def verify(app: App) -> int:
    """Check the hash chain; name every edited, deleted, inserted or reordered record."""
    report = _open(app).verify()
    app.out.data(
        report.to_dict(),
        lambda: (
            f"{report.path}: {report.records} records, chain intact"
            if report.ok
            else f"{report.path}: {report.records} records, {len(report.problems)} problem(s):\n"
            + "\n".join(f"  - {p['message']}" for p in report.problems)
        ),
    )
    return ExitCode.OK if report.ok else ExitCode.VERIFY_CORRUPT
