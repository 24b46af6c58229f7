"""Effective configuration: defaults < TOML file(s) < PANOSTAGE_* environment < flags.

Files: ``/etc/panostage/config.toml`` then ``$XDG_CONFIG_HOME/panostage/config.toml``
(later wins), or only the file named by ``--config`` / ``PANOSTAGE_CONFIG``.
Environment: ``PANOSTAGE_<SECTION>_<KEY>`` (``PANOSTAGE_BACKEND_REGION=eu-west-1``).
Every value remembers where it came from, for ``panostage config show``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/panostage/config.toml")
#: Environment variables with a meaning of their own (not PANOSTAGE_<SECTION>_<KEY>).
RESERVED_ENV = {"PANOSTAGE_CONFIG", "PANOSTAGE_SYSTEM_CONFIG", "PANOSTAGE_DEBUG", "PANOSTAGE_DEBUG_HOLD_AT"}


def _opt(default: Any, doc: str, **rules: Any) -> Any:
    """A configuration key: its default, a one-line doc, and rules (choices, min, max, check).

    ``check`` is a function of the value returning the rule it breaks, or None.
    """
    return field(default=default, metadata={"doc": doc, **rules})


#: Markers of PEM key material: never a configuration value that ends up in the hand-off log.
KEY_MARKERS = ("PRIVATE KEY", "-----BEGIN")
OPERATOR_MAX = 128
_HOST_LABELS = re.compile(r"^((?!-)[a-z\d-]{1,63}(?<!-)\.)*((?!-)[a-z\d-]{1,63}(?<!-))\.?$", re.IGNORECASE)
URL_RULE = "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8750"


def _looks_like_key(value: str) -> bool:
    return any(marker in value for marker in KEY_MARKERS)


def _control_chars(value: str) -> list[str]:
    """Control, format and line/paragraph separator characters in ``value`` (as U+XXXX)."""
    return sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")})


def endpoint_url_problem(value: str) -> str | None:
    """The rule an endpoint URL breaks (None when it is empty or a usable http(s) URL)."""
    if not value:
        return None
    if _control_chars(value) or any(c.isspace() for c in value):
        return URL_RULE + " (no spaces or control characters)"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        return f"{URL_RULE} ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return URL_RULE + (f" (scheme {parts.scheme!r} is not http or https)" if parts.scheme else " (no scheme)")
    host = parts.hostname or ""
    if not host:
        return URL_RULE + " (no host)"
    if parts.netloc.rsplit("@", 1)[-1].startswith("["):
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return URL_RULE + f" ({host!r} is not an IPv6 address)"
    elif len(host) > 253 or not _HOST_LABELS.match(host):
        return URL_RULE + f" ({host!r} is not a host name or address)"
    return None


def operator_problem(value: str) -> str | None:
    """The rule an operator name breaks (None when it is fine; empty means: use $USER)."""
    if _looks_like_key(value):
        return "must be a person's or an account's name, not key material (it holds '-----BEGIN' or 'PRIVATE KEY')"
    if len(value) > OPERATOR_MAX:
        return f"must be at most {OPERATOR_MAX} characters (it has {len(value)})"
    bad = _control_chars(value)
    if bad:
        return f"must not contain control characters (it holds {', '.join(bad[:5])})"
    return None


#: A region name as botocore accepts one for signing (``us-east-1``, ``eu-central-1``, a lab's ``zz-lab-1``).
_REGION_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")


def regions_problem(value: tuple[str, ...]) -> str | None:
    """The rule a list of region names breaks (None when every entry is a region name)."""
    for region in value:
        if not _REGION_NAME.match(region):
            return f"must hold region names such as us-east-1 (letters, digits and '-'); {_shown(region)} is not one"
    return None


def check_operator(value: str, source: str) -> str:
    """``value`` if it is a fine operator name for the hand-off log, else a :class:`ConfigError`.

    ``source`` names where the value came from (``"environment USER"``, ``"login name"``) for the
    message; the same rules hold for ``stage.operator`` and for the fallback to the login name.
    """
    problem = operator_problem(value)
    if problem:
        raise ConfigError(
            f"{source}: the operator name {_shown(value)} {problem}",
            hint="set stage.operator (PANOSTAGE_STAGE_OPERATOR) to the name to record in the hand-off log",
            details={"source": source, "key": "stage.operator", "value": _shown(value), "rule": problem},
        )
    return value


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` fit for a message: shortened, and never echoing key material."""
    if isinstance(value, str) and _looks_like_key(value):
        return f"<{len(value)} characters withheld: they look like key material>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


@dataclass(frozen=True)
class BackendSettings:
    name: str = _opt("local", "which authority to talk to: local (embedded) or aws", choices=("local", "aws"))
    endpoint_url: str = _opt(
        "",
        "an authority that speaks the protocol, as an http:// or https:// URL; overrides name",
        check=endpoint_url_problem,
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
    )
    access_key_id: str = _opt("", "access key it accepts (empty: generated into its state dir)")
    secret_access_key: str = _opt("", "secret for access_key_id (prefer the environment to the file)")


@dataclass(frozen=True)
class PathSettings:
    state_dir: str = _opt("", "state: SQLite database, hand-off log, local authority (empty: standard place)")
    runtime_dir: str = _opt("", "tmpfs scratch for archives in flight (empty: $XDG_RUNTIME_DIR or /run)")


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
        "awaiting provisioning younger than this may be on another station's stick (the "
        "local backend uses authority.cert_validity_seconds)",
        min=1,
    )
    station: str = _opt(
        "",
        "this station's name, in the hand-off log and on the devices it provisions (empty: the "
        "host name); give each station sharing one service its own",
        check=operator_problem,
    )
    operator: str = _opt(
        "",
        f"who stages (recorded in the hand-off log; empty: $USER); at most {OPERATOR_MAX} "
        "characters, no control characters",
        check=operator_problem,
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


@dataclass(frozen=True)
class LoadedConfig:
    """Settings plus where each value came from (``"section.key" -> source``)."""

    settings: Settings
    sources: dict[str, str]
    files: list[str]

    def rows(self) -> list[dict[str, Any]]:
        """Every key with its value, type, source and doc, in declaration order."""
        out = []
        for section, key, fld in iter_keys():
            value = getattr(getattr(self.settings, section), key)
            value = list(value) if isinstance(value, tuple) else value
            secret = "secret" in key
            out.append(
                {
                    "key": f"{section}.{key}",
                    "value": "***" if secret and value else value,
                    "type": _type_name(fld),
                    "source": self.sources.get(f"{section}.{key}", "default"),
                    "doc": fld.metadata["doc"],
                }
            )
        return out


def iter_keys():
    """Yield ``(section, key, dataclass field)`` for every configuration key."""
    for sec in dataclasses.fields(Settings):
        for fld in dataclasses.fields(sec.default_factory):  # type: ignore[arg-type]
            yield sec.name, fld.name, fld


def _section_fields() -> dict[str, dict[str, dataclasses.Field]]:
    out: dict[str, dict[str, dataclasses.Field]] = {}
    for section, key, fld in iter_keys():
        out.setdefault(section, {})[key] = fld
    return out


def _type_name(fld: dataclasses.Field) -> str:
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "tuple": "list of strings"}[
        _type_of(fld).__name__
    ]


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _type_of(fld: dataclasses.Field) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool, "tuple[str, ...]": tuple}[str(fld.type)]


def _coerce(fld: dataclasses.Field, value: Any, where: str, key: str) -> Any:
    """Check a value from a file (already typed by TOML) against the field's type and rules."""
    want = _type_of(fld)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is tuple:  # a TOML array of strings
        fits = isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)
        value = tuple(value) if fits else value
    else:
        fits = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if not fits:
        raise ConfigError(
            f"{where}: {key} must be {_a(_type_name(fld))}, got {type(value).__name__} {value!r}",
            hint=f"{key}: {fld.metadata['doc']}",
            details={"source": where, "key": key, "expected": _type_name(fld), "got": repr(value)},
        )
    _check_rules(fld, value, where, key)
    return value


def _parse_env(fld: dataclasses.Field, raw: str, var: str, key: str) -> Any:
    """Turn an environment string into the field's type."""
    want = _type_of(fld)
    try:
        if want is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                value: Any = True
            elif low in ("0", "false", "no", "off"):
                value = False
            else:
                raise ValueError(raw)
        elif want is tuple:  # a comma-separated list
            value = tuple(item.strip() for item in raw.split(",") if item.strip())
        else:
            value = want(raw.strip()) if want is not str else raw
    except ValueError:
        raise ConfigError(
            f"environment {var}: {key} must be {_a(_type_name(fld))}, got {raw!r}",
            hint=f"{key}: {fld.metadata['doc']}",
            details={"source": f"env {var}", "key": key, "expected": _type_name(fld), "got": raw},
        ) from None
    _check_rules(fld, value, f"environment {var}", key)
    return value


def _check_rules(fld: dataclasses.Field, value: Any, where: str, key: str) -> None:
    meta = fld.metadata
    problem = None
    if isinstance(value, float) and not math.isfinite(value):  # nan passes every min/max comparison
        problem = "must be a finite number"
    elif "choices" in meta and value not in meta["choices"]:
        problem = f"must be one of {', '.join(meta['choices'])}"
    elif "min" in meta and value < meta["min"]:
        problem = f"must be at least {meta['min']}"
    elif "max" in meta and value > meta["max"]:
        problem = f"must be at most {meta['max']}"
    elif "check" in meta:
        problem = meta["check"](value)
    if problem:
        withheld = isinstance(value, str) and _looks_like_key(value)
        raise ConfigError(
            f"{where}: {key} = {_shown(value)} {problem}",
            hint=f"{key}: {meta['doc']}",
            details={"source": where, "key": key, "value": _shown(value) if withheld else value, "rule": problem},
        )


def config_files(explicit: str | None, env: Mapping[str, str]) -> list[Path]:
    """The files to read, lowest precedence first."""
    if explicit:
        return [Path(explicit)]
    if env.get("PANOSTAGE_CONFIG"):
        return [Path(env["PANOSTAGE_CONFIG"])]
    system = Path(env.get("PANOSTAGE_SYSTEM_CONFIG", SYSTEM_CONFIG))
    xdg = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "~")).expanduser() / ".config")
    return [system, xdg / "panostage" / "config.toml"]


def load(
    explicit_file: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Build the effective configuration.

    ``flags`` maps ``"section.key"`` to a value given on the command line
    (``None`` values are ignored).  An explicitly named file must exist.
    """
    env = os.environ if env is None else env
    fields = _section_fields()
    values: dict[str, dict[str, Any]] = {s: {} for s in fields}
    sources: dict[str, str] = {}
    read: list[str] = []

    explicit = explicit_file or env.get("PANOSTAGE_CONFIG")
    for path in config_files(explicit_file, env):
        try:
            exists = path.exists()
        except OSError:  # e.g. EACCES on a parent directory: reading it will say so as a ConfigError
            exists = True
        if not exists:
            if explicit:
                raise ConfigError(f"configuration file {path} does not exist", hint="check --config / PANOSTAGE_CONFIG")
            continue
        for section, key, value in _read_file(path, fields):
            values[section][key] = value
            sources[f"{section}.{key}"] = f"file {path}"
        read.append(str(path))

    for var, raw in sorted(env.items()):
        if not var.startswith("PANOSTAGE_") or var in RESERVED_ENV:
            continue
        section, key = _env_key(var, fields)
        values[section][key] = _parse_env(fields[section][key], raw, var, f"{section}.{key}")
        sources[f"{section}.{key}"] = f"env {var}"

    for dotted, value in (flags or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        fld = fields[section][key]
        values[section][key] = _coerce(fld, value, "command line", dotted)
        sources[dotted] = "flag --" + key.replace("_", "-")

    settings = Settings(
        **{section: type(getattr(Settings(), section))(**section_values) for section, section_values in values.items()}
    )
    return LoadedConfig(settings=settings, sources=sources, files=read)


def _read_file(path: Path, fields: dict[str, dict[str, dataclasses.Field]]):
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid TOML: {exc}", hint="see the configuration reference in the README"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except RecursionError:  # tomllib recurses per nesting level of arrays and inline tables
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for section, table in data.items():
        if section not in fields:
            raise ConfigError(
                f"{path}: unknown section [{section}]",
                hint=f"known sections: {', '.join(fields)}",
                details={"source": str(path), "key": section},
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}]), got {type(table).__name__}")
        for key, value in table.items():
            if key not in fields[section]:
                raise ConfigError(
                    f"{path}: unknown key {section}.{key}",
                    hint=f"known keys in [{section}]: {', '.join(fields[section])}",
                    details={"source": str(path), "key": f"{section}.{key}"},
                )
            yield section, key, _coerce(fields[section][key], value, str(path), f"{section}.{key}")


def _env_key(var: str, fields: dict[str, dict[str, dataclasses.Field]]) -> tuple[str, str]:
    rest = var[len("PANOSTAGE_") :].lower()
    for section in fields:
        if rest.startswith(section + "_") and rest[len(section) + 1 :] in fields[section]:
            return section, rest[len(section) + 1 :]
    known = ", ".join(sorted(f"PANOSTAGE_{s}_{k}".upper() for s in fields for k in fields[s]))
    raise ConfigError(
        f"environment {var} is not a configuration key",
        hint=f"known variables: {known}",
        details={"source": f"env {var}", "key": var},
    )
