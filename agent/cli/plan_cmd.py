"""``panostage plan add|import|list|remove|retry``: the queue of devices the daemon stages."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from agent.cli.app import App, command_options, pass_app
from agent.cli.inputs import provision_options, request_from_options
from agent.cli.output import render_table
from agent.state.schema import PLAN_STATUSES

if TYPE_CHECKING:
    from agent.state import StateDB

#: Statuses `plan retry` puts back in the queue.  (Not "failed": that is a hand-off state; a plan
#: entry whose hand-off failed goes back to pending, or to attention after too many tries.)
RETRYABLE = ("attention", "pending")


@click.group()
def plan() -> None:
    """The plan: devices to provision, one per stick, in order."""


def _db(app: App) -> StateDB:
    from agent import paths
    from agent.state import StateDB

    return StateDB(paths.state_dir(app.settings))


def _view(entry: dict[str, Any], position: int | None = None) -> dict[str, Any]:
    """An entry as shown (``--json``): the stored row, with its rank in the queue."""
    from agent.staging.plan import describe_actions

    view = {
        "id": entry["id"],
        "position": position,
        "name": entry["name"],
        "status": entry["status"],
        "attempts": entry["attempts"],
        "device_id": entry["device_id"],
        "handoff_id": entry["handoff_id"],
        "last_error": entry["last_error"],
        "actions": entry["actions"],
        "actions_text": describe_actions(entry["actions"]),
        "request": entry["request"],
        "created_at": entry["created_at"],
        "updated_at": entry["updated_at"],
    }
    if position is None:
        del view["position"]
    return view


def _short(text: str | None, width: int = 60) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@plan.command()
@provision_options
@click.option(
    "--ota", "ota_version", metavar="VERSION", help="Once the device is ONLINE, run an OTA to this image version."
)
@click.option("--allow-major", is_flag=True, help="The OTA may cross a major version (with --ota).")
@click.option("--reboot", is_flag=True, help="Once the device is ONLINE (and after the OTA), reboot it.")
@command_options
@pass_app
def add(app: App, /, ota_version: str | None, allow_major: bool, reboot: bool, **inputs: Any) -> None:
    """Append one device to the plan (the same inputs as `device provision`)."""
    from agent.archive.verify import staged_name_violations
    from agent.aws import validation
    from agent.errors import InputValidationError
    from agent.provision_request import flag_violations, given_inputs
    from agent.staging.plan import build_actions, check_actions

    given, from_file = given_inputs(inputs), bool(inputs.get("input_json"))
    request = request_from_options(inputs)
    actions = build_actions(ota_version, allow_major, reboot)
    violations = flag_violations(validation.check("ProvisionDevice", request), given, from_file=from_file)
    violations += check_actions(
        actions,
        {"ota": "--ota", "ota.image_version": "--ota", "ota.allow_major": "--allow-major", "reboot": "--reboot"},
    )
    if not any(v.path in ("Name", "--name") for v in violations):
        violations += staged_name_violations(request["Name"], "--name")
    if violations:
        raise InputValidationError(violations, subject="plan entry")
    db = _db(app)
    _warn_fat_clashes(app, [request["Name"]], [entry["name"] for entry in db.plan()])
    (entry_id,) = db.add_entries([(request["Name"], request, actions)])
    entry = db.entry(entry_id)
    position = len(db.plan())
    app.out.data(
        _view(entry, position),
        f"added {entry['name']} to the plan (id {entry_id}, position {position})"
        + (f"; then: {_view(entry)['actions_text']}" if actions else ""),
    )


@plan.command("import")
@click.argument("file", type=click.Path(dir_okay=True, allow_dash=True), metavar="FILE")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "toml", "json"], case_sensitive=False),
    help="The file's format (default: from its extension; required for -).",
)
@click.option("--dry-run", is_flag=True, help="Check every entry and show what would be added; change nothing.")
@command_options
@pass_app
def import_(app: App, file: str, fmt: str | None, dry_run: bool) -> None:
    """Append every device of a plan file (CSV, TOML or JSON), all or none.

    Every entry is checked against every documented rule first; one bad entry and
    nothing is imported (each problem is listed with its line).
    """
    from agent.staging.plan import describe_actions, read_plan_file

    db = _db(app)
    existing = {entry["name"] for entry in db.plan()}
    entries = read_plan_file(file, fmt, existing=existing)
    source = "<stdin>" if file == "-" else file
    _warn_fat_clashes(app, [e.name for e in entries], sorted(existing))
    shown = [
        {"line": e.line, "name": e.name, "network": _network_text(e.request), "actions": describe_actions(e.actions)}
        for e in entries
    ]
    if dry_run:
        data = {"source": source, "dry_run": True, "count": len(entries), "entries": [e.to_dict() for e in entries]}
        app.out.data(
            data,
            lambda: (
                render_table(shown, ["line", "name", "network", "actions"])
                + f"\nwould add {len(entries)} {'entry' if len(entries) == 1 else 'entries'} (dry run: nothing changed)"
            ),
        )
        return
    ids = db.add_entries([entry.as_tuple() for entry in entries])
    total = len(db.plan())
    data = {
        "source": source,
        "dry_run": False,
        "count": len(ids),
        "entries": [{"id": entry_id, **entry.to_dict()} for entry_id, entry in zip(ids, entries)],
    }
    first = total - len(ids) + 1
    app.out.data(
        data,
        f"imported {len(ids)} {'entry' if len(ids) == 1 else 'entries'} from {source} "
        f"(positions {first}–{total} of the plan)"
        if len(ids) > 1
        else f"imported {entries[0].name} from {source} (position {total} of the plan)",
    )


def _warn_fat_clashes(app: App, new: list[str], existing: list[str]) -> None:
    """Names whose archives are one name on a FAT stick (cam-1 / CAM-1): allowed, but worth knowing."""
    from agent.stick.names import clashes

    for name, other in clashes(new, existing):
        app.out.warn(
            f"{name} and {other} have the same archive name on a FAT stick "
            f"(certificates-omni_{name}.zip): one stick cannot hold both; staging one onto a stick that "
            "holds the other's live archive is refused"
        )


def _network_text(request: dict[str, Any]) -> str:
    network = request.get("NetworkingConfiguration") or {}
    parts = []
    for port, key in (("eth0", "Ethernet0"), ("eth1", "Ethernet1")):
        eth = network.get(key)
        if eth:
            info = eth.get("StaticIpConnectionInfo") or {}
            parts.append(f"{port} {info['IpAddress']}" if eth.get("ConnectionType") == "STATIC_IP" else f"{port} dhcp")
    if network.get("Ntp"):
        parts.append(f"ntp ×{len(network['Ntp'].get('NtpServers') or [])}")
    return ", ".join(parts) or "defaults"


@plan.command("list")
@click.option(
    "--status",
    type=click.Choice(PLAN_STATUSES),
    help="Only entries with this status.",
)
@command_options
@pass_app
def list_(app: App, status: str | None) -> None:
    """Show the plan in queue order."""
    db = _db(app)
    ranked = [
        (position, entry)
        for position, entry in enumerate(db.plan(), start=1)
        if status is None or entry["status"] == status
    ]
    views = [_view(entry, position) for position, entry in ranked]

    def human() -> str:
        if not views:
            return f"no {status} entries in the plan" if status else "the plan is empty"
        rows = [{**v, "actions": v["actions_text"], "last_error": _short(v["last_error"])} for v in views]
        counts = db.plan_counts()
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return (
            render_table(
                rows,
                ["position", "id", "name", "status", "attempts", "device_id", "actions", "last_error"],
                ["POS", "ID", "NAME", "STATUS", "TRIES", "DEVICE ID", "ACTIONS", "LAST ERROR"],
            )
            + f"\n({summary})"
        )

    app.out.data(views, human)


@plan.command()
@click.argument("ref", metavar="REF")
@command_options
@pass_app
def remove(app: App, ref: str) -> None:
    """Remove an entry (by ID or name); refused while it is being staged."""
    entry = _db(app).remove_entry(ref)
    app.out.data(_view(entry), f"removed {entry['name']} (id {entry['id']}, was {entry['status']})")


@plan.command()
@click.argument("ref", metavar="REF")
@command_options
@pass_app
def retry(app: App, ref: str) -> None:
    """Put an entry that needs attention back in the queue, its attempts reset."""
    failed: list[str] = []
    # judged inside the change's transaction: a claim or a hand-off cannot slip in between
    entry = _db(app).change_entry(ref, lambda entry: _retried(entry, failed))
    if failed:
        app.out.data(
            _view(entry), f"{entry['name']}: {' and '.join(failed)} will run again on device {entry['device_id']}"
        )
    else:
        app.out.data(_view(entry), f"{entry['name']} is pending again (id {entry['id']}, attempts reset)")


def _retried(entry: dict[str, Any], failed: list[str]) -> dict[str, Any]:
    """The columns that put ``entry`` back to work (``failed`` gets the actions run again), or refuse.

    An entry whose hand-off went through (staged, provisioned, done) is refused; one that needs
    attention only because its OTA or reboot failed keeps its device and runs that action again;
    any other retryable entry goes back in the queue with its attempts reset.
    """
    if entry["status"] not in RETRYABLE:
        from agent.state import StateError

        raise StateError(
            f"{entry['name']} is {entry['status']}: only an entry that needs attention goes back in the queue",
            hint="to provision it once more, `panostage plan remove` it and add it again",
            details={"id": entry["id"], "status": entry["status"]},
        )
    failed[:] = _failed_actions(entry) if entry["status"] == "attention" else []
    if not failed:
        return {"status": "pending", "attempts": 0, "last_error": None, "handoff_id": None}
    # the device is provisioned; only its action failed: run that again, on the same device
    actions = dict(entry["actions"])
    progress = actions.get("progress") or {}
    actions["progress"] = {
        k: v for k, v in progress.items() if k not in failed and k not in [f"{x}_job" for x in failed]
    }
    return {"status": "provisioned", "actions": json.dumps(actions), "last_error": None}


def _failed_actions(entry: dict[str, Any]) -> list[str]:
    """The actions (ota, reboot) whose job failed after the device was provisioned."""
    progress = (entry.get("actions") or {}).get("progress") or {}
    return [kind for kind in ("ota", "reboot") if progress.get(kind) == "FAILED"]
