"""``panostage authority``: run the local provisioning authority, and steer a running one
(faults, clock).  Heavy imports (boto3, cryptography) happen inside the commands."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agent.cli.app import App, command_options, pass_app
from agent.cli.output import dumps, render_table
from agent.errors import ConfigError, ExitCode, PanostageError, UsageError

if TYPE_CHECKING:
    from agent.authority.admin import AdminClient

_T = TypeVar("_T")


@click.group()
def authority() -> None:
    """Run the local provisioning authority, or steer a running one."""


@authority.command()
@click.option("--host", help="Address to listen on (default: authority.host, 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), help="Port to listen on; 0 picks a free one (default: authority.port)."
)
@click.option(
    "--state-dir", "authority_dir", metavar="DIR", help="The authority's own state (default: <state dir>/authority)."
)
@click.option(
    "--fault",
    "fault_specs",
    multiple=True,
    metavar="OP:KEY=VALUE,...",
    help="Inject a fault from the start, e.g. ProvisionDevice:error=500,rate=0.5 (repeatable).",
)
@click.option("--fault-seed", type=int, default=0, show_default=True, help="Seed of the fault dice.")
@click.option("--job-step-seconds", type=click.FloatRange(min=0.0), help="Seconds each job/task state lasts.")
@click.option("--cert-validity-seconds", type=click.IntRange(min=1), help="Validity of issued certificates.")
@click.option("--device-quota", type=click.IntRange(min=0), help="Devices held before 402 (0: no limit).")
@command_options
@pass_app
def serve(
    app: App,
    host: str | None,
    port: int | None,
    authority_dir: str | None,
    fault_specs: tuple[str, ...],
    fault_seed: int,
    job_step_seconds: float | None,
    cert_validity_seconds: int | None,
    device_quota: int | None,
) -> int:
    """Serve the Panorama and Snow Device Management APIs until SIGTERM/SIGINT.

    Prints one JSON line on stdout (endpoint_url, access_key_id, credentials_file,
    state_dir, pid, regions); never the secret.  Requests signed for a region other than
    authority.regions (empty: the backend region) are refused.
    """
    import logging
    import signal
    import threading

    from agent import paths
    from agent.authority.credentials import load_or_create_credentials
    from agent.authority.embedded import open_server
    from agent.authority.faults import FaultInjector, parse_spec
    from agent.sdnotify import notify

    configured = app.settings.authority
    settings = dataclasses.replace(
        configured,
        host=_given(host, configured.host),
        port=_given(port, configured.port),
        job_step_seconds=_given(job_step_seconds, configured.job_step_seconds),
        cert_validity_seconds=_given(cert_validity_seconds, configured.cert_validity_seconds),
        device_quota=_given(device_quota, configured.device_quota),
    )
    state_dir = Path(authority_dir) if authority_dir else paths.state_dir(app.settings) / "authority"
    faults = FaultInjector(seed=fault_seed)
    for spec in fault_specs:
        faults.set(*parse_spec(spec))

    if bool(settings.access_key_id) != bool(settings.secret_access_key):
        raise ConfigError(
            "authority.access_key_id and authority.secret_access_key must be set together",
            hint="set both (PANOSTAGE_AUTHORITY_ACCESS_KEY_ID / PANOSTAGE_AUTHORITY_SECRET_ACCESS_KEY), or neither",
        )
    credentials_file: Path | None = None
    if settings.access_key_id:
        access_key_id, secret = settings.access_key_id, settings.secret_access_key
    else:
        access_key_id, secret, credentials_file = load_or_create_credentials(state_dir)

    logging.basicConfig(
        level=logging.DEBUG if app.debug else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        server = open_server(
            settings,
            state_dir,
            {access_key_id: secret},
            host=settings.host,
            port=settings.port,
            faults=faults,
            region=app.settings.backend.region,
        )
    except OSError as exc:
        raise PanostageError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
            exit_code=ExitCode.IO,
            reason="listen",
            hint="pick another --port, or 0 for a free one",
        ) from None

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    regions = server.regions or ()  # open_server names them (None would be: any region)
    info = {
        "endpoint_url": server.endpoint_url,
        "access_key_id": access_key_id,
        "credentials_file": str(credentials_file) if credentials_file else None,
        "state_dir": str(state_dir),
        "pid": os.getpid(),
        "regions": list(regions),
    }
    app.out.stdout.write(dumps(info) + "\n")
    app.out.stdout.flush()
    app.out.say(
        f"authority listening on {server.endpoint_url} (state {state_dir}, access key {access_key_id}, "
        f"region {', '.join(regions)}); "
        "stop with Ctrl-C or SIGTERM"
    )
    notify("READY=1")
    try:
        while not stop.wait(1.0):
            pass
    finally:
        notify("STOPPING=1")
        server.stop()
    app.out.say("authority stopped")
    return ExitCode.OK


def _given(flag: _T | None, configured: _T) -> _T:
    """A flag's value when it was given, else the configured one."""
    return configured if flag is None else flag


# ---------------------------------------------------------------- steering a running authority


def _admin(app: App, credentials_file: str | None) -> AdminClient:
    from agent.authority.admin import AdminClient

    endpoint = app.settings.backend.endpoint_url
    if not endpoint:
        raise UsageError(
            "this command talks to a running authority: give its --endpoint-url",
            hint="panostage --endpoint-url http://127.0.0.1:PORT authority ... (serve prints the URL)",
        )
    region = app.settings.backend.region
    if credentials_file:
        import json

        try:
            data = json.loads(Path(credentials_file).read_text(encoding="utf-8"))
            return AdminClient(endpoint, data["access_key_id"], data["secret_access_key"], region=region)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(
                f"--credentials-file {credentials_file}: not a readable credentials file ({exc})"
            ) from None
    from agent.aws.model import new_botocore_session

    creds = new_botocore_session(profile=app.settings.backend.profile).get_credentials()
    frozen = creds.get_frozen_credentials() if creds is not None else None
    if frozen is None or frozen.access_key is None or frozen.secret_key is None:
        raise PanostageError(
            "no credentials for the authority's admin API",
            exit_code=ExitCode.ACCESS_DENIED,
            reason="no-credentials",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY to the authority's, or pass --credentials-file",
        )
    return AdminClient(endpoint, frozen.access_key, frozen.secret_key, region=region)


credentials_option = click.option(
    "--credentials-file",
    metavar="FILE",
    help="The authority's credentials.json (default: the normal AWS credential chain).",
)


def _render_faults(snapshot: dict[str, Any]) -> str:
    rules = snapshot.get("rules", {})
    if not rules:
        return f"no faults (seed {snapshot.get('seed')})"
    rows = [{"operation": op, "rule": ", ".join(f"{k}={v}" for k, v in rule.items())} for op, rule in rules.items()]
    return render_table(rows, ["operation", "rule"]) + f"\nseed {snapshot.get('seed')}"


@authority.group("fault")
def fault() -> None:
    """Inject faults into a running authority (--endpoint-url)."""


@fault.command("set")
@click.argument("operation")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--seed", type=int, help="Re-seed the fault dice.")
@click.option("--replace", is_flag=True, help="Clear every other rule first.")
@credentials_option
@command_options
@pass_app
def fault_set(
    app: App, operation: str, pairs: tuple[str, ...], seed: int | None, replace: bool, credentials_file: str | None
) -> None:
    """Set the fault for OPERATION, e.g. `ProvisionDevice error=500 rate=0.5 count=3`.

    Keys: latency_ms, error (500|429|409|402|403), rate (0-1), count, after_commit,
    drop_connection, archive (not_zip|bad_crc|expired_cert|key_mismatch|path_traversal|
    zip_bomb|no_certificate|duplicate_member|wrong_ca).
    """
    from agent.authority.faults import parse_pairs, rule_from_mapping

    values = parse_pairs(list(pairs))
    rule_from_mapping(operation, values)  # refuse a bad rule before calling out
    snapshot = _admin(app, credentials_file).set_faults({operation: values}, seed=seed, replace=replace)
    app.out.data(snapshot, human=lambda: _render_faults(snapshot))


@fault.command("clear")
@click.argument("operation", required=False)
@credentials_option
@command_options
@pass_app
def fault_clear(app: App, operation: str | None, credentials_file: str | None) -> None:
    """Clear the fault for OPERATION, or every fault."""
    snapshot = _admin(app, credentials_file).clear_faults(operation)
    app.out.data(snapshot, human=lambda: _render_faults(snapshot))


@fault.command("show")
@credentials_option
@command_options
@pass_app
def fault_show(app: App, credentials_file: str | None) -> None:
    """Show the faults in force."""
    snapshot = _admin(app, credentials_file).faults()
    app.out.data(snapshot, human=lambda: _render_faults(snapshot))


@authority.command("clock")
@click.option("--offset", type=float, metavar="SECONDS", help="Set the authority's clock to real time + SECONDS.")
@click.option("--advance", type=float, metavar="SECONDS", help="Move the authority's clock on by SECONDS.")
@credentials_option
@command_options
@pass_app
def clock(app: App, offset: float | None, advance: float | None, credentials_file: str | None) -> None:
    """Show or shift a running authority's clock (lifecycles and certificate expiry follow it), by at
    most ten years either way."""
    from agent.authority.lifecycle import MAX_OFFSET_SECONDS, offset_problem

    if offset is not None and advance is not None:
        raise UsageError("give --offset or --advance, not both")
    for flag, value in (("--offset", offset), ("--advance", advance)):
        if value is not None and offset_problem(value):
            raise UsageError(
                f"{flag} {value:g}: must be a finite number of seconds within ±{MAX_OFFSET_SECONDS:.0f} (ten years)",
                hint="the authority refuses a clock shifted further; `authority clock --offset 0` puts it back",
            )
    admin = _admin(app, credentials_file)
    if offset is not None:
        result = admin.set_clock_offset(offset)
    elif advance is not None:
        result = admin.advance_clock(advance)
    else:
        result = admin.clock()
    from datetime import datetime

    from agent.clock import iso

    result["now"] = iso(datetime.fromtimestamp(result["now"], UTC))
    app.out.data(result, human=lambda: f"authority time {result['now']} (offset {result['offset_seconds']:+g} s)")
