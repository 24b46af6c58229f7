"""``panostage stick ...``: the return trip (collect, wipe), enrollment (enroll, list, revoke), policy
(check) and preparing new sticks (prepare)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from agent.cli.app import App, command_options, pass_app
from agent.cli.completion import complete_target

if TYPE_CHECKING:
    from agent.state import StateDB
    from agent.stick import StickTarget
    from agent.udev import StickInfo


@click.group()
def stick() -> None:
    """Work with provisioning sticks."""


def _open(app: App, spec: str) -> StickTarget:
    from agent import paths
    from agent.stick import open_target

    return open_target(
        spec, allow_non_fat=app.settings.stage.allow_non_fat, runtime_dir=paths.runtime_dir(app.settings)
    )


@stick.command()
@click.argument("target_spec", metavar="TARGET", shell_complete=complete_target)
@click.option("--wipe", "then_wipe", is_flag=True, help="Wipe the stick afterwards.")
@command_options
@pass_app
def collect(app: App, target_spec: str, then_wipe: bool) -> None:
    """Copy the appliance's /panorama/*.log into the hand-off folder, check the device, log the outcome."""
    from agent import paths
    from agent.staging import returns
    from agent.staging.factory import handoff_log, operator_name, station_name, verify_limits

    log = handoff_log(app.settings)
    with _open(app, target_spec) as target:
        result = returns.collect(
            target,
            app.backend(),
            log,
            app.get_clock(),
            paths.state_dir(app.settings),
            station_name(app.settings),
            operator_name(app.settings),
            verify_limits(app.settings),
        )
        data = result.to_dict()
        if then_wipe:
            data["wipe"] = returns.wipe(
                target, log, app.get_clock(), station_name(app.settings), operator_name(app.settings)
            )
    device = result.device.get("name") or "unknown device"
    for refused in result.refused:
        app.out.warn(f"{refused['name']} in /panorama not collected: {refused['reason']}")
    app.out.data(
        data,
        f"{device}: {result.outcome} (status {result.provisioning_status or 'unknown'}); "
        f"{len(result.logs)} log(s)" + (f" saved in {result.folder}" if result.folder else ""),
    )


@stick.command()
@click.argument("target_spec", metavar="TARGET", shell_complete=complete_target)
@click.option("--format", "reformat", is_flag=True, help="Reformat the FAT filesystem instead (keeps the label).")
@click.option("--label", help="With --format: the new label.")
@command_options
@pass_app
def wipe(app: App, target_spec: str, reformat: bool, label: str | None) -> None:
    """Remove archives and appliance logs from the stick, overwriting the archives first."""
    from agent.staging import returns
    from agent.staging.factory import handoff_log, operator_name, station_name

    with _open(app, target_spec) as target:
        data = returns.wipe(
            target,
            handoff_log(app.settings),
            app.get_clock(),
            station_name(app.settings),
            operator_name(app.settings),
            reformat=reformat,
            label=label,
        )
    app.out.data(data, "wiped: " + (", ".join(data["removed"]) or "nothing to remove"))


# ---------------------------------------------------------------- enrollment and policy

#: What a technician can do about each reason ``decide`` gives (matched by prefix).
REASON_HINTS = (
    ("not enrolled", "enroll it: panostage stick enroll {devnode}"),
    ("not USB mass storage", "only USB sticks are used; for lab or loop devices set sticks.allow_non_usb = true"),
    ("no filesystem (partition table", "check its partitions: panostage stick check on each"),
    ("no filesystem", "format it: panostage stick prepare {disk} (erases it)"),
    ("not FAT", "format it: panostage stick prepare {disk} (erases it)"),
    ("label", "relabel it (fatlabel {devnode} NAME) or change sticks.label"),
    ("no label", "label it (fatlabel {devnode} NAME) or change sticks.label"),
)


def _db(app: App) -> StateDB:
    from agent import paths
    from agent.state import StateDB

    return StateDB(paths.state_dir(app.settings))


def _udev_view(path: str) -> tuple[StickInfo, list[StickInfo], list[str]]:
    """(StickInfo of ``path``, StickInfos of its partitions, warnings), errors as PanostageErrors."""
    import pyudev

    from agent.errors import ExitCode, PanostageError
    from agent.stick.errors import StickIOError, StickRefused
    from agent.udev import device_for_path, partitions_of, stick_info

    try:
        device = device_for_path(path)
    except ValueError as exc:
        raise StickRefused(str(exc), reason="stick-not-block", hint="pass a block device such as /dev/sdb") from None
    except OSError as exc:
        raise StickIOError.from_os("open", f"looking up {path}", exc) from None
    except pyudev.DeviceNotFoundError as exc:
        raise StickRefused(f"udev does not know {path}: {exc}", reason="stick-unknown") from None
    warnings = []
    if not device.is_initialized:
        warnings.append(
            f"udev has no record of {path} (is systemd-udevd running?): filesystem, serial and USB facts may be missing"
        )
    try:
        return stick_info(device), [stick_info(p) for p in partitions_of(device)], warnings
    except Exception as exc:  # noqa: BLE001 - an undecodable device is a finding, not a crash
        raise PanostageError(
            f"cannot read udev's description of {path}: {type(exc).__name__}: {exc}",
            exit_code=ExitCode.IO,
            reason="udev",
        ) from None


def _hint(reason: str, info: StickInfo) -> str | None:
    for prefix, hint in REASON_HINTS:
        if reason.startswith(prefix):
            disk = info.disk_syspath.rsplit("/", 1)[1] if info.disk_syspath else None
            return hint.format(devnode=info.devnode or info.syspath, disk=f"/dev/{disk}" if disk else info.devnode)
    return None


@stick.command()
@click.argument("device", shell_complete=complete_target)
@command_options
@pass_app
def check(app: App, device: str) -> int:
    """Would the daemon write to DEVICE? Admitted, or why not (a disk: its partitions too).

    Exit codes: 0 admitted, 15 ignored by the policy.
    """
    from agent.errors import ExitCode
    from agent.udev import decide

    info, parts, warnings = _udev_view(device)
    db = _db(app)
    decisions = [decide(i, app.settings.sticks, db.is_enrolled) for i in [info, *parts]]
    rows = []
    for decision in decisions:
        row = decision.to_dict()
        row["hint"] = None if decision.admitted else _hint(decision.reason, decision.info)
        rows.append(row)
    admitted = any(d.admitted for d in decisions)
    for warning in warnings:
        app.out.warn(warning)

    def human() -> str:
        lines = []
        for row, decision in zip(rows, decisions):
            what = decision.info.devnode or decision.info.syspath
            if decision.admitted:
                lines.append(f"{what}: admitted ({row['identity']}, FAT label {decision.info.fs_label or '-'})")
            else:
                lines.append(f"{what}: ignored: {decision.reason}")
                if row["hint"]:
                    lines.append(f"  hint: {row['hint']}")
        return "\n".join(lines)

    app.out.data({"device": device, "admitted": admitted, "decisions": rows, "warnings": warnings}, human)
    return ExitCode.OK if admitted else ExitCode.STICK_REFUSED


@stick.command()
@click.argument("device", required=False, shell_complete=complete_target)
@click.option("--identity", "identity_text", metavar="ID", help="usb:<serial> or fs:<UUID>, instead of a DEVICE.")
@click.option("--label", help="A name for the stick (default: its FAT label).")
@click.option("--note", help="Free text kept with the enrollment.")
@command_options
@pass_app
def enroll(app: App, device: str | None, identity_text: str | None, label: str | None, note: str | None) -> None:
    """Allow a stick: by DEVICE (identity read from udev) or by --identity."""
    from agent.errors import UsageError
    from agent.udev import normalize_identity

    warnings: list[str] = []
    if identity_text and not device:
        try:
            identity = normalize_identity(identity_text)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif device and not identity_text:
        chosen, identity, warnings = _enrollable(app, device)
        label = label or chosen.fs_label
    else:
        raise UsageError("give either a DEVICE or --identity", hint="panostage stick enroll /dev/sdb")
    db = _db(app)
    db.enroll(identity, label=label, note=note)
    record = next(r for r in db.enrolled() if r["identity"] == identity)
    for warning in warnings:
        app.out.warn(warning)
    app.out.data(
        {**record, "device": device, "warnings": warnings}, f"enrolled {identity}" + (f" ({label})" if label else "")
    )


def _enrollable(app: App, device: str) -> tuple[StickInfo, str, list[str]]:
    """What names ``device`` (the disk, else its one filesystem), its identity, and warnings: udev's, and
    the policy's should it still ignore the stick once enrolled."""
    import dataclasses

    from agent.errors import PanostageError
    from agent.udev import decide

    info, parts, warnings = _udev_view(device)
    named = {info.identity: info} if info.identity else {p.identity: p for p in parts if p.identity}
    if len(named) != 1:
        raise PanostageError(
            f"{device} has no identity: no USB serial and "
            + ("no filesystem UUID" if not named else f"{len(named)} filesystems ({', '.join(named)})"),
            reason="stick-no-identity",
            hint="format it (panostage stick prepare), or enroll one --identity",
        )
    ((identity, chosen),) = named.items()
    relaxed = dataclasses.replace(app.settings.sticks, require_enrollment=False)
    verdict = decide(chosen, relaxed, lambda _identity: True)
    if not verdict.admitted:
        warnings.append(f"enrolled, but the policy still ignores it: {verdict.reason}")
    return chosen, identity, warnings


@stick.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include revoked sticks.")
@command_options
@pass_app
def list_sticks(app: App, show_all: bool) -> None:
    """The enrolled sticks."""
    from agent.cli.output import render_table

    rows = _db(app).enrolled(include_revoked=show_all)
    columns = ["identity", "label", "note", "enrolled_at"] + (["revoked_at"] if show_all else [])
    app.out.data(rows, lambda: render_table(rows, columns) or "no enrolled sticks")


@stick.command()
@click.argument("identity_text", metavar="IDENTITY")
@command_options
@pass_app
def revoke(app: App, identity_text: str) -> None:
    """Withdraw a stick's enrollment (it stays listed with --all)."""
    from agent.errors import UsageError
    from agent.udev import normalize_identity

    try:
        identity = normalize_identity(identity_text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _db(app).revoke(identity)
    app.out.data({"identity": identity, "revoked": True}, f"revoked {identity}")


@stick.command()
@click.argument("device", shell_complete=complete_target)
@click.option("--label", help="FAT volume label (default: sticks.label if it is no glob, else PANOSTAGE).")
@click.option("--force", is_flag=True, help="Also format a device that does not report removable media.")
@click.option("--note", help="Free text kept with the enrollment.")
@command_options
@pass_app
def prepare(app: App, device: str, label: str | None, force: bool, note: str | None) -> None:
    """ERASE DEVICE: one FAT32 filesystem over the whole stick, then enroll it.

    Refuses a partition, a device mounted anywhere (itself or a partition) and, without --force,
    one that is not removable.  Below 64 MiB it makes FAT16 (tests only) and says so.
    """
    from agent.stick.prepare import DEFAULT_LABEL, LabelError, fat_label
    from agent.stick.prepare import prepare as format_device
    from agent.udev import label_matches

    pattern = app.settings.sticks.label
    if label is None:
        label = pattern if pattern and not any(c in pattern for c in "*?[") else DEFAULT_LABEL
    label = fat_label(label)
    if pattern and not label_matches(label, pattern):
        raise LabelError(
            f"label {label!r} would not match sticks.label {pattern!r}: the daemon would ignore the stick",
            hint="pass a --label that matches",
        )
    info, _parts, warnings = _udev_view(device)  # before formatting: the USB serial does not change, the rest does
    db = _db(app)
    enrolled: dict[str, object] = {}

    def enroll_first(fs_uuid: str) -> None:
        # before mkfs.fat: a running daemon admits the stick as soon as udev announces the new filesystem
        identity = info.identity_with(fs_uuid)
        assert identity is not None  # mkfs.fat always gives the filesystem a volume ID
        enrolled.update(identity=identity, new=not db.is_enrolled(identity))
        db.enroll(identity, label=label, note=note)

    try:
        result = format_device(device, label=label, force=force, before_format=enroll_first)
    except BaseException:
        if enrolled.get("new"):
            db.revoke(str(enrolled["identity"]))  # it was enrolled for this attempt only
        raise
    identity = str(enrolled["identity"])
    warnings += result.warnings
    for warning in warnings:
        app.out.warn(warning)
    data = {**result.to_dict(), "warnings": warnings, "identity": identity, "is_usb": info.is_usb, "enrolled": True}
    app.out.data(data, f"{device}: FAT{result.fat_bits} '{label}' ({result.fs_uuid}); enrolled {identity}")
