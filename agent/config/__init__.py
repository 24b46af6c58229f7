"""Effective configuration: defaults < TOML file(s) < PANOSTAGE_* environment < flags.

Files: ``/etc/panostage/config.toml`` then ``$XDG_CONFIG_HOME/panostage/config.toml``
(later wins), or only the file named by ``--config`` / ``PANOSTAGE_CONFIG``.
Environment: ``PANOSTAGE_<SECTION>_<KEY>`` (``PANOSTAGE_BACKEND_REGION=eu-west-1``); a near miss of
one is an error naming the nearest, other ``PANOSTAGE_*`` names are not configuration and are ignored.
Every value remembers where it came from, for ``panostage config show``.

The keys are declared in :mod:`agent.config.schema`, the rules their values keep in
:mod:`agent.config.rules`, and each source is read in :mod:`agent.config.sources`; this module
puts them together (:func:`load`) and re-exports what the rest of the agent imports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from agent.config.rules import (
    KEY_MARKERS,
    OPERATOR_MAX,
    URL_RULE,
    check_operator,
    endpoint_url_problem,
    operator_problem,
    regions_problem,
)
from agent.config.schema import (
    AuthoritySettings,
    BackendSettings,
    DaemonSettings,
    PathSettings,
    Settings,
    StageSettings,
    StickSettings,
    Value,
    VerifySettings,
    WaitSettings,
    build_settings,
    iter_keys,
    type_name,
)
from agent.config.schema import section_fields as _section_fields  # tests/test_plan_fuzz.py reads it here
from agent.config.sources import (
    RESERVED_ENV,
    SYSTEM_CONFIG,
    coerce,
    config_files,
    env_key,
    lower_case_key,
    parse_env,
    read_file,
)
from agent.errors import ConfigError

__all__ = [
    "KEY_MARKERS",
    "OPERATOR_MAX",
    "RESERVED_ENV",
    "SYSTEM_CONFIG",
    "URL_RULE",
    "AuthoritySettings",
    "BackendSettings",
    "ConfigRow",
    "DaemonSettings",
    "LoadedConfig",
    "PathSettings",
    "Settings",
    "StageSettings",
    "StickSettings",
    "VerifySettings",
    "WaitSettings",
    "check_operator",
    "config_files",
    "endpoint_url_problem",
    "iter_keys",
    "load",
    "operator_problem",
    "regions_problem",
]


class ConfigRow(TypedDict):
    """One key as ``config show`` lists it."""

    key: str
    value: Value | list[str]
    type: str
    source: str
    doc: str


@dataclass(frozen=True)
class LoadedConfig:
    """Settings plus where each value came from (``"section.key" -> source``), and what was ignored."""

    settings: Settings
    sources: dict[str, str]
    files: list[str]
    #: ``PANOSTAGE_*`` variables set that are not configuration (nor reserved), so were ignored.
    ignored_env: list[str] = field(default_factory=list)

    def rows(self) -> list[ConfigRow]:
        """Every key with its value, type, source and doc, in declaration order."""
        out: list[ConfigRow] = []
        for section, key, fld in iter_keys():
            value: Value | list[str] = getattr(getattr(self.settings, section), key)
            value = list(value) if isinstance(value, tuple) else value
            secret = "secret" in key
            out.append(
                {
                    "key": f"{section}.{key}",
                    "value": "***" if secret and value else value,
                    "type": type_name(fld),
                    "source": self.sources.get(f"{section}.{key}", "default"),
                    "doc": fld.metadata["doc"],
                }
            )
        return out


def load(
    explicit_file: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> LoadedConfig:
    """Build the effective configuration.

    ``flags`` maps ``"section.key"`` to a value given on the command line
    (``None`` values are ignored).  An explicitly named file must exist.
    """
    env = os.environ if env is None else env
    fields = _section_fields()
    values: dict[str, dict[str, Value]] = {s: {} for s in fields}
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
        for section, key, value in read_file(path, fields):
            values[section][key] = value
            sources[f"{section}.{key}"] = f"file {path}"
        read.append(str(path))

    ignored: list[str] = []
    for var, raw in sorted(env.items()):
        if not var.startswith("PANOSTAGE_"):
            mistake = lower_case_key(var, fields)
            if mistake is not None:
                raise mistake
            continue
        if var in RESERVED_ENV:
            continue
        found = env_key(var, fields)
        if found is None:  # not configuration: another tool's or a test kit's variable
            ignored.append(var)
            continue
        section, key = found
        values[section][key] = parse_env(fields[section][key], raw, var, f"{section}.{key}")
        sources[f"{section}.{key}"] = f"env {var}"

    for dotted, flag_value in (flags or {}).items():
        if flag_value is None:
            continue
        section, key = dotted.split(".", 1)
        values[section][key] = coerce(fields[section][key], flag_value, "command line", dotted)
        sources[dotted] = "flag --" + key.replace("_", "-")

    return LoadedConfig(settings=build_settings(values), sources=sources, files=read, ignored_env=ignored)
