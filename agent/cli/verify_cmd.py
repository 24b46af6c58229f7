"""``panostage verify TARGET``: check an archive file, or the archive on a stick."""

from __future__ import annotations

import errno
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import click

from agent.cli.app import App, command_options, pass_app
from agent.cli.completion import complete_target
from agent.cli.stage_cmd import format_left
from agent.errors import PanostageError

if TYPE_CHECKING:
    from agent.archive import ArchiveReport, Limits


class Checks(TypedDict):
    """What every archive is verified against (keywords of :func:`agent.archive.verify_archive`)."""

    now: datetime
    skew_seconds: float
    margin_seconds: float
    limits: Limits
    device_name: str | None


#: What a stick itself can be wrong about (beyond each archive's own checks), and the outcome it forces.
STICK_PROBLEMS = {
    "no_archive": "unverifiable",
    "several_archives": "corrupt",
    "archive_not_a_file": "corrupt",
    "stick_damaged": "corrupt",
    "stick_unclean": "ok",
    "archive_unreadable": "corrupt",
}
SEVERITY = ["ok", "expiring", "expired", "unverifiable", "corrupt"]


def looks_like_archive_file(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix.lower() == ".zip":
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except PermissionError as exc:
        raise _not_readable(path, exc.errno) from exc
    return head[:2] == b"PK" or len(head) < 4  # an empty or tiny file is judged as an archive


def _not_readable(path: Path, code: int | None, *, subject: str | None = None) -> PanostageError:
    """This user may not read ``path``: a permission to fix, never a verdict on the archive."""
    from agent.stick.checks import permission_denied

    return permission_denied(path, want="read", block=path.is_block_device(), code=code, subject=subject)


@click.command()
@click.argument("target_spec", metavar="TARGET", shell_complete=complete_target)
@click.option("--device", "device_name", metavar="NAME", help="The device the archive must be for.")
@click.option(
    "--margin",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Report EXPIRING when less validity than this is left (default [stage] margin_seconds).",
)
@click.option(
    "--skew",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Tolerated clock difference: a certificate starting up to this far ahead is not judged not yet "
    "valid (default [stage] skew_seconds); expiry is judged on this clock, without tolerance.",
)
@command_options
@pass_app
def verify(app: App, target_spec: str, device_name: str | None, margin: float | None, skew: float | None) -> int:
    """Verify an archive file, a stick directory, a FAT image or a block device.

    Exit codes: 0 ok, 20 expiring within the margin, 21 expired, 22 corrupt, 23 unverifiable.
    """
    from agent.errors import ExitCode
    from agent.staging.factory import verify_limits

    stage = app.settings.stage
    checks: Checks = {
        "now": app.get_clock().now(),
        "skew_seconds": stage.skew_seconds if skew is None else skew,
        "margin_seconds": stage.margin_seconds if margin is None else margin,
        "limits": verify_limits(app.settings),
        "device_name": device_name,
    }
    path = Path(target_spec)
    stick_problems: list[dict[str, str]] = []
    if looks_like_archive_file(path):
        kind, reports = "archive", [_verify_file(path, checks)]
    else:
        kind = "stick"
        reports, stick_problems = _verify_stick(app, target_spec, checks)
    outcomes = [r.outcome.value for r in reports] + [STICK_PROBLEMS[p["code"]] for p in stick_problems]
    worst = max(outcomes, key=SEVERITY.index) if outcomes else "unverifiable"
    data = {
        "target": target_spec,
        "kind": kind,
        "outcome": worst,
        "problems": stick_problems,
        "archives": [r.to_dict() for r in reports],
    }
    app.out.data(data, lambda: _human(data))
    return {
        "ok": ExitCode.OK,
        "expiring": ExitCode.VERIFY_EXPIRING,
        "expired": ExitCode.VERIFY_EXPIRED,
        "corrupt": ExitCode.VERIFY_CORRUPT,
        "unverifiable": ExitCode.VERIFY_UNVERIFIABLE,
    }[worst]


def _verify_stick(app: App, spec: str, checks: Checks) -> tuple[list[ArchiveReport], list[dict[str, str]]]:
    from agent import paths
    from agent.errors import PanostageError
    from agent.stick import archives, open_target
    from agent.stick.checks import archive_report
    from agent.stick.errors import StickDamaged, StickIOError

    problems: list[dict[str, str]] = []
    reports: list[ArchiveReport] = []
    with open_target(spec, allow_non_fat=True, runtime_dir=paths.runtime_dir(app.settings)) as target:
        try:
            problems += [{"code": "stick_unclean", "message": f"the stick: {w}"} for w in target.check_sound()]
        except StickDamaged as exc:
            problems.append({"code": "stick_damaged", "message": exc.message.replace(": nothing was written", "")})
        found = archives(target)
        if not found:
            problems.append({"code": "no_archive", "message": "no certificates-omni_*.zip at the root of the stick"})
        elif len(found) > 1:
            problems.append(
                {
                    "code": "several_archives",
                    "message": f"{len(found)} archives at the root "
                    f"({', '.join(e.name for e in found)}): the appliance must meet exactly one",
                }
            )
        for entry in found:
            if entry.kind != "file":
                problems.append({"code": "archive_not_a_file", "message": f"{entry.name} is a {entry.kind}"})
                continue
            try:  # judged by its size first: one larger than any archive is reported, never read
                reports.append(archive_report(target, entry, file_name=entry.name, **checks))
            except StickIOError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM):
                    problems.append({"code": "archive_unreadable", "message": f"{entry.name}: {exc.message}"})
                    continue
                raise _not_readable(Path(spec) / entry.name, exc.errno, subject=f"{entry.name} on {spec}") from exc
            except PanostageError as exc:  # its chain is the damage, or the stick failed: a finding, not the end
                problems.append({"code": "archive_unreadable", "message": f"{entry.name}: {exc.message}"})
    return reports, problems


def _verify_file(path: Path, checks: Checks) -> ArchiveReport:
    """An archive file, judged by its size before a byte is read (a 3 GB file is refused, not loaded)."""
    from agent.archive import too_large, verify_archive
    from agent.errors import LocalIOError

    limit = checks["limits"].max_file_bytes
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                return too_large(
                    size,
                    now=checks["now"],
                    limits=checks["limits"],
                    file_name=path.name,
                    device_name=checks["device_name"],
                )
            data = handle.read(limit + 1)
    except PermissionError as exc:
        raise _not_readable(path, exc.errno) from exc
    except OSError as exc:
        raise LocalIOError(
            f"cannot read {path}: {exc.strerror or exc}", hint="check the path and its permissions"
        ) from exc
    if len(data) > limit:  # it grew while we looked
        return too_large(
            len(data),
            now=checks["now"],
            limits=checks["limits"],
            file_name=path.name,
            device_name=checks["device_name"],
        )
    return verify_archive(data, file_name=path.name, **checks)


def _human(data: dict[str, Any]) -> str:
    lines = [f"{data['target']}: {data['outcome'].upper()}"]
    lines += [f"  ! {p['message']}" for p in data["problems"]]
    for report in data["archives"]:
        lines.append(f"{report.get('file_name') or 'archive'}: {report['outcome'].upper()}")
        digest = f"sha256 {report['sha256'][:16]}…" if report["sha256"] else "not read"
        lines.append(f"  archive   {report['size']} bytes, {len(report['members'])} members, {digest}")
        cert = report.get("device_certificate")
        if cert:
            lines.append(f"  cert      {cert['subject']}  serial {cert['serial']}")
            lines.append(f"            sha256 {cert['sha256']}")
            lines.append(f"  valid     {cert['not_before']} → {cert['not_after']} ({_time_left(cert['seconds_left'])})")
            chained = {
                True: "chains to the CA in the archive",
                False: "does NOT chain to the CA",
                None: "no CA certificate included",
            }
            lines.append(f"  chain     {chained[cert['chained_to_ca']]}")
            lines.append(
                f"  key       {'matches the certificate' if cert['key_member'] else 'no matching private key'}"
            )
        if report.get("network") is not None:
            lines.append(f"  network   network.json parses ({', '.join(report['network']) or 'empty'})")
        for problem in report["problems"]:
            lines.append(f"  {'!' if problem['severity'] == 'error' else '~'} {problem['message']}")
    return "\n".join(lines)


def _time_left(seconds: float) -> str:
    """``4m12s left``, or ``expired 12 s ago`` once the time is past (never "expired left")."""
    if seconds > 0:
        return f"{format_left(seconds)} left"
    from datetime import timedelta

    from agent.archive.certcheck import seconds_ago

    return f"expired {seconds_ago(timedelta(seconds=-seconds))} ago" if seconds < 0 else "expires now"
