"""The settings: one frozen dataclass per ``[section]`` of the file, a field per key.

Each key is declared with :func:`_opt`: its default, a one-line doc (shown by ``config show`` and
written into the installed configuration file) and its rules (choices, min, max, a check function
from :mod:`agent.config.rules`).  :func:`iter_keys` walks every key in declaration order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypedDict, TypeVar, Unpack

from agent.config.rules import OPERATOR_MAX, URL_RULE, endpoint_url_problem, operator_problem, regions_problem

#: A configuration value, as the fields below declare them.
Value: TypeAlias = str | int | float | bool | tuple[str, ...]
#: ``section -> key -> dataclass field``.
Fields: TypeAlias = dict[str, dict[str, dataclasses.Field[Any]]]
_T = TypeVar("_T")
_NAME_RULE = f"at most {OPERATOR_MAX} characters, no control characters, no key material"


class Rules(TypedDict, total=False):
    """What a key's value must keep beyond its type (kept in the field's metadata)."""

    choices: tuple[str, ...]
    min: float
    max: float
    check: Callable[[str], str | None] | Callable[[tuple[str, ...]], str | None]
    #: what ``check`` holds the value to, in a few words (the README's configuration table)
    rule: str


def _opt(default: _T, doc: str, **rules: Unpack[Rules]) -> _T:
    """A configuration key: its default, a one-line doc, and rules (choices, min, max, check).

    ``check`` is a function of the value returning the rule it breaks, or None; ``rule`` says what it
    holds the value to (required with ``check``: the README's table shows it).
    """
    if "check" in rules and "rule" not in rules:
        raise TypeError(f"{doc!r}: a key with a check needs its rule in words")
    return field(default=default, metadata={"doc": doc, **rules})


@dataclass(frozen=True)
class BackendSettings:
    name: str = _opt(
        "local",
        "which authority to talk to: local (embedded; the daemon's in a child process) or aws",
        choices=("local", "aws"),
    )
    endpoint_url: str = _opt(
        "",
        "an authority that speaks the protocol, as an http:// or https:// URL; overrides name",
        check=endpoint_url_problem,
        rule="empty, or " + URL_RULE.removeprefix("must be "),
    )
    region: str = _opt("us-east-1", "region for signing and for the aws endpoints")
    profile: str = _opt("", "AWS profile for the aws and endpoint backends (empty: default chain)")
    connect_timeout: float = _opt(5.0, "seconds to wait for a connection", min=0.1)
    read_timeout: float = _opt(30.0, "seconds to wait for a response", min=0.1)
    max_attempts: int = _opt(4, "attempts per call, first one included (botocore standard retry mode)", min=1, max=20)


@dataclass(frozen=True)
class AuthoritySettings:
    host: str = _opt("127.0.0.1", "address `authority serve` listens on (loopback by default)")
    port: int = _opt(0, "port `authority serve` listens on (0: pick a free one)", min=0, max=65535)
    cert_validity_seconds: int = _opt(300, "validity of the provisioning certificates it issues", min=1)
    device_quota: int = _opt(0, "devices it will hold before answering 402 (0: no limit)", min=0)
    unique_names: bool = _opt(True, "answer 409 to ProvisionDevice for a name already in use")
    job_step_seconds: float = _opt(2.0, "seconds each job, import or task state lasts", min=0.0)
    regions: tuple[str, ...] = _opt(
        (),
        "regions a request's credential scope may name, others are refused (403 "
        "InvalidSignatureException); empty: backend.region only; in the environment "
        "comma-separated",
        check=regions_problem,
        rule="region names (letters, digits and -)",
    )
    access_key_id: str = _opt("", "access key it accepts (empty: generated into its state dir)")
    secret_access_key: str = _opt("", "secret for access_key_id (prefer the environment to the file)")


@dataclass(frozen=True)
class PathSettings:
    state_dir: str = _opt(
        "",
        "state: SQLite database, hand-off log, local authority (empty: $STATE_DIRECTORY, else "
        "/var/lib/panostage as root, else $XDG_STATE_HOME/panostage or ~/.local/state/panostage)",
    )
    runtime_dir: str = _opt(
        "",
        "tmpfs scratch for archives in flight (empty: $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/panostage, "
        "/run/panostage as root, else /dev/shm/panostage-UID)",
    )


@dataclass(frozen=True)
class WaitSettings:
    timeout_seconds: float = _opt(600.0, "how long --wait polls before giving up", min=0.0)
    interval_seconds: float = _opt(2.0, "seconds between polls of --wait", min=0.01)


@dataclass(frozen=True)
class StageSettings:
    margin_seconds: float = _opt(60.0, "do not write when less validity than this is left; start over instead", min=0.0)
    skew_seconds: float = _opt(30.0, "tolerated difference between our clock and the certificate's issuer", min=0.0)
    restarts: int = _opt(1, "times to start over when a fresh archive is already inside the margin", min=0, max=5)
    certificate_seconds: int = _opt(
        300,
        "how long the service's certificates live (documented: 5 minutes): a device "
        "awaiting provisioning younger than this (plus stage.skew_seconds) may be on another station's stick (the "
        "local backend uses authority.cert_validity_seconds)",
        min=1,
    )
    station: str = _opt(
        "",
        "this station's name, in the hand-off log and on the devices it provisions (tag panostage:station; "
        "empty: the host name); give each station sharing one service its own",
        check=operator_problem,
        rule=_NAME_RULE,
    )
    operator: str = _opt(
        "",
        f"who stages (recorded in the hand-off log; empty: $USER, held to the same rules); at most {OPERATOR_MAX} "
        "characters, no control characters",
        check=operator_problem,
        rule=_NAME_RULE,
    )
    allow_non_fat: bool = _opt(False, "accept a directory on a non-FAT filesystem as a stick (lab use)")


@dataclass(frozen=True)
class VerifySettings:
    max_members: int = _opt(64, "an archive with more members is refused", min=1)
    max_member_bytes: int = _opt(1 << 20, "declared size above which one member is refused", min=1)
    max_total_bytes: int = _opt(8 << 20, "declared total size above which an archive is refused", min=1)
    max_ratio: float = _opt(200.0, "compression ratio above which a member is refused (zip bomb)", min=1.0)


@dataclass(frozen=True)
class StickSettings:
    require_enrollment: bool = _opt(True, "only enrolled sticks (USB serial, or FS UUID without one) are written to")
    allow_non_usb: bool = _opt(False, "admit block devices without a USB parent, e.g. loop devices (lab and tests)")
    label: str = _opt("", "only sticks whose FAT label matches this glob (empty: any)")


@dataclass(frozen=True)
class DaemonSettings:
    max_attempts: int = _opt(3, "hand-offs tried per plan entry before it needs attention", min=1)
    expired_return: str = _opt(
        "restage", "a stick back with an expired archive of a device not yet provisioned", choices=("restage", "leave")
    )
    returned_logs: str = _opt(
        "collect-wipe", "a stick back with appliance logs", choices=("collect-wipe", "collect", "leave")
    )
    poll_seconds: float = _opt(
        10.0,
        "follow-up: first wait before asking the service about staged devices and running jobs again (after a change)",
        min=0.1,
    )
    poll_max_seconds: float = _opt(600.0, "follow-up: the wait doubles while nothing changes, up to this", min=0.1)
    followup_hours: float = _opt(
        72.0,
        "follow-up: a staged device not online, or a job not finished, this long "
        "after its last change needs attention (no more asking)",
        min=0.01,
    )
    notify: str = _opt(
        "auto", "desktop notification, terminal bell, or none", choices=("auto", "desktop", "bell", "none")
    )
    shutdown_grace_seconds: float = _opt(20.0, "on SIGTERM, how long in-flight hand-offs may take to finish", min=0.0)
    receive_buffer_bytes: int = _opt(128 << 20, "udev monitor socket buffer (raised where permitted)", min=0)


@dataclass(frozen=True)
class Settings:
    backend: BackendSettings = field(default_factory=BackendSettings)
    authority: AuthoritySettings = field(default_factory=AuthoritySettings)
    paths: PathSettings = field(default_factory=PathSettings)
    wait: WaitSettings = field(default_factory=WaitSettings)
    stage: StageSettings = field(default_factory=StageSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    sticks: StickSettings = field(default_factory=StickSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)


def _section_classes() -> dict[str, type[Any]]:
    """``section -> its dataclass``, in declaration order."""
    defaults = Settings()
    return {sec.name: type(getattr(defaults, sec.name)) for sec in dataclasses.fields(Settings)}


def iter_keys() -> Iterator[tuple[str, str, dataclasses.Field[Any]]]:
    """Yield ``(section, key, dataclass field)`` for every configuration key."""
    for section, cls in _section_classes().items():
        for fld in dataclasses.fields(cls):
            yield section, fld.name, fld


def section_fields() -> Fields:
    """Every key's field, by section and key, in declaration order."""
    out: Fields = {}
    for section, key, fld in iter_keys():
        out.setdefault(section, {})[key] = fld
    return out


def build_settings(values: Mapping[str, Mapping[str, Value]]) -> Settings:
    """Settings from ``section -> key -> value`` (a key left out keeps its default)."""
    classes = _section_classes()
    return Settings(**{section: classes[section](**section_values) for section, section_values in values.items()})


def type_of(fld: dataclasses.Field[Any]) -> type:
    """The Python type a key's value has (``tuple`` for a list of strings)."""
    return {"str": str, "int": int, "float": float, "bool": bool, "tuple[str, ...]": tuple}[str(fld.type)]


def type_name(fld: dataclasses.Field[Any]) -> str:
    """A key's type as the user reads it (``config show``, messages)."""
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "tuple": "list of strings"}[
        type_of(fld).__name__
    ]
