"""Wire a Stager from settings (shared by `stage` and the daemon)."""

from __future__ import annotations

import getpass
import socket
from typing import TYPE_CHECKING, Any

from agent import paths
from agent.archive import Limits
from agent.clock import Clock
from agent.config import Settings, check_operator
from agent.handoff_log import HandoffLog, Journal
from agent.staging.stage import StageOptions, Stager

if TYPE_CHECKING:
    from agent.aws.backend import ServiceBackend
    from agent.errors import PanostageError


def handoff_log(settings: Settings) -> HandoffLog:
    """The hand-off log in the state directory, copied to journald when running under systemd."""
    journal = Journal() if Journal.under_systemd() else None
    return HandoffLog(paths.ensure_private_dir(paths.state_dir(settings)), journal=journal)


def station_name(settings: Settings) -> str:
    """This station's name: ``stage.station``, else the host name."""
    return settings.stage.station or socket.gethostname()


def operator_name(settings: Settings) -> str:
    """Who stages: ``stage.operator`` (checked when the configuration loads), else the login name, checked alike."""
    if settings.stage.operator:
        return settings.stage.operator
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
    return check_operator(user, "the login name ($USER, $LOGNAME)")


def verify_limits(settings: Settings) -> Limits:
    v = settings.verify
    return Limits(
        max_members=v.max_members,
        max_member_bytes=v.max_member_bytes,
        max_total_bytes=v.max_total_bytes,
        max_ratio=v.max_ratio,
    )


def log_unopened_stick(settings: Settings, clock: Clock, name: str, spec: str, error: PanostageError) -> None:
    """Log a hand-off that failed at its first step: the stick was refused (not FAT ...) or could not be opened.

    A log that cannot take the record is named after the stick's error (:meth:`PanostageError.also`), never
    instead of it."""
    from agent.error_mapping import to_error

    try:
        handoff_log(settings).append(
            "handoff",
            time=clock.now(),
            outcome="failed",
            station=station_name(settings),
            operator=operator_name(settings),
            device={"name": name},
            stick={"path": str(spec)},
            failed_step="open_stick",
            error={"reason": error.reason, "message": error.message[:500]},
            durations_ms={},
        )
    except Exception as exc:  # noqa: BLE001 - the stick's error comes first
        error.also(f"the hand-off log could not record this: {to_error(exc).message}")


def make_stager(
    settings: Settings,
    backend: ServiceBackend,
    clock: Clock,
    *,
    log: HandoffLog | None = None,
    station: str | None = None,
    operator: str | None = None,
    limits: Limits | None = None,
    **overrides: Any,
) -> Stager:
    """A Stager with options from [stage], overridden by ``overrides`` (command-line flags, and the ``on_event``
    and ``checkpoint`` hooks).  What the caller already holds - the hand-off log, the station's and the
    operator's names, the verification limits (the daemon, per stick) - is used as given, else made from
    ``settings``."""
    hooks = {k: overrides.pop(k) for k in ("on_event", "checkpoint") if k in overrides}
    s = settings.stage
    lifetime = settings.authority.cert_validity_seconds if backend.kind == "local" else s.certificate_seconds
    options = StageOptions(
        margin_seconds=s.margin_seconds, skew_seconds=s.skew_seconds, restarts=s.restarts, certificate_seconds=lifetime
    )
    options = StageOptions(**{**options.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    return Stager(
        backend,
        clock=clock,
        log=log if log is not None else handoff_log(settings),
        options=options,
        station=station if station is not None else station_name(settings),
        operator=operator if operator is not None else operator_name(settings),
        verify_limits=limits if limits is not None else verify_limits(settings),
        **hooks,
    )
