"""Where configuration values come from, each read and checked against its key's type and rules.

* files: TOML, ``/etc/panostage/config.toml`` then the XDG one (or the one ``--config`` names);
* the environment: ``PANOSTAGE_<SECTION>_<KEY>``, a string turned into the key's type; a name near one
  (in a section's space, a key without its section, or a misspelling) is an error that names the nearest,
  any other ``PANOSTAGE_*`` name is not configuration and is ignored (:func:`env_key`);
* flags: values the command line already typed.

Every refusal is a :class:`ConfigError` naming the source, the key and the rule broken.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agent.config.rules import looks_like_key, shown
from agent.config.schema import Fields, Value, type_name, type_of
from agent.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/panostage/config.toml")
#: Environment variables with a meaning of their own (not PANOSTAGE_<SECTION>_<KEY>).
RESERVED_ENV = {"PANOSTAGE_CONFIG", "PANOSTAGE_SYSTEM_CONFIG", "PANOSTAGE_DEBUG", "PANOSTAGE_DEBUG_HOLD_AT"}


def config_files(explicit: str | None, env: Mapping[str, str]) -> list[Path]:
    """The files to read, lowest precedence first."""
    if explicit:
        return [Path(explicit)]
    if env.get("PANOSTAGE_CONFIG"):
        return [Path(env["PANOSTAGE_CONFIG"])]
    system = Path(env.get("PANOSTAGE_SYSTEM_CONFIG", SYSTEM_CONFIG))
    xdg = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "~")).expanduser() / ".config")
    return [system, xdg / "panostage" / "config.toml"]


def read_file(path: Path, fields: Fields) -> Iterator[tuple[str, str, Value]]:
    """Yield ``(section, key, value)`` for every key the TOML file at ``path`` sets, each checked."""
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
            yield section, key, coerce(fields[section][key], value, str(path), f"{section}.{key}")


#: How close (difflib ratio, on the name after ``PANOSTAGE_``) a name must be to a configuration
#: variable to be taken for a misspelling of it: 0.8 catches a dropped, doubled or swapped letter
#: (``STAGE_MARGN_SECONDS``, ``STICK_LABEL``) and leaves other tools' names (``VM_CACHE``,
#: ``COMPAT_PYTHON``: at most 0.46) alone.
NEAR_CUTOFF = 0.8
ENV_RULE = (
    "correct it or `unset` it: configuration variables are PANOSTAGE_<SECTION>_<KEY>, every key is in the "
    "README's Configuration table (and in `panostage config show` once the variable is gone); other "
    "PANOSTAGE_* names are not configuration and are ignored"
)


def env_key(var: str, fields: Fields) -> tuple[str, str] | None:
    """``(section, key)`` that the variable ``PANOSTAGE_<SECTION>_<KEY>`` sets, or None for a name that is
    not configuration (ignored: another tool's or a test kit's variable).

    A near miss is a :class:`ConfigError` naming the nearest variable: a name in a section's own space
    (``PANOSTAGE_STAGE`` or ``PANOSTAGE_STAGE_*``) that names no key of it, a key without its section
    (``PANOSTAGE_MARGIN_SECONDS``), or a name within :data:`NEAR_CUTOFF` of a configuration variable.
    """
    rest = var[len("PANOSTAGE_") :].lower()
    for section, keys in fields.items():
        if rest.startswith(section + "_") and rest[len(section) + 1 :] in keys:
            return section, rest[len(section) + 1 :]
    for section, keys in fields.items():
        if rest == section or rest.startswith(section + "_"):
            raise _not_in_section(var, section, rest[len(section) + 1 :], list(keys))
    homes = [_var(section, rest) for section, keys in fields.items() if rest in keys]
    if homes:
        raise _not_a_key(var, f"{rest!r} is a key without its section: did you mean {' or '.join(homes)}?", homes[0])
    names = {f"{section}_{key}": _var(section, key) for section, keys in fields.items() for key in keys}
    names |= {name[len("PANOSTAGE_") :].lower(): name for name in RESERVED_ENV}
    near = difflib.get_close_matches(rest, list(names), n=1, cutoff=NEAR_CUTOFF)
    if near:
        raise _not_a_key(var, f"did you mean {names[near[0]]}?", names[near[0]])
    sharing = [name for name in names if _words(name) & _words(rest)]
    if sharing:  # PANOSTAGE_STATION_NAME, PANOSTAGE_AWS_REGION, PANOSTAGE_CONFIG_FILE: meant as configuration
        nearest = difflib.get_close_matches(rest, sharing, n=1, cutoff=0) or sharing
        raise _not_a_key(var, f"did you mean {names[nearest[0]]}?", names[nearest[0]])
    return None


#: Words of key names too common to say that a variable was meant as one of them.
_COMMON_WORDS = frozenset({"seconds", "bytes", "name", "allow", "max", "device"})


def _words(name: str) -> set[str]:
    """The distinctive words of a variable name (after ``PANOSTAGE_``): four letters or more, not common."""
    return {word for word in name.lower().split("_") if len(word) >= 4 and word not in _COMMON_WORDS}


def lower_case_key(var: str, fields: Fields) -> ConfigError | None:
    """``panostage_stage_margin_seconds``: meant as a configuration or reserved variable, but variable
    names are case-sensitive.  The error to raise, or None when the upper-case name means nothing either."""
    upper = var.upper()
    if var == upper or not upper.startswith("PANOSTAGE_"):
        return None
    try:
        meant = upper in RESERVED_ENV or env_key(upper, fields) is not None
    except ConfigError:
        meant = False
    if not meant:
        return None
    return _not_a_key(var, f"variable names are upper-case: did you mean {upper}?", upper)


def _not_in_section(var: str, section: str, key: str, keys: list[str]) -> ConfigError:
    """``var`` is in ``[section]``'s space (``PANOSTAGE_<SECTION>[_<KEY>]``) but names none of its keys."""
    if not key:
        why = f"it names the section [{section}], not a key (PANOSTAGE_{section.upper()}_<KEY>"
        return _not_a_key(var, f"{why}; its keys: {', '.join(keys)})")
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if near:
        return _not_a_key(var, f"did you mean {_var(section, near[0])}?", _var(section, near[0]))
    return _not_a_key(var, f"[{section}] has no key {key!r} (its keys: {', '.join(keys)})")


def _var(section: str, key: str) -> str:
    return f"PANOSTAGE_{section}_{key}".upper()


def _not_a_key(var: str, why: str, suggestion: str | None = None) -> ConfigError:
    details = {"source": f"env {var}", "key": var}
    if suggestion:
        details["suggestion"] = suggestion
    return ConfigError(f"environment {var} is not a configuration key: {why}", hint=ENV_RULE, details=details)


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _fitted(want: type, value: object) -> Value | None:
    """``value`` as a value of type ``want`` (an int for a float, a list for a tuple), or None if it is not one."""
    if want is tuple:  # a TOML array of strings
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return tuple(value)
        return None
    if isinstance(value, bool):  # an int to Python, never an integer or a number here
        return value if want is bool else None
    if want is float and isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an integer past any float: not a number this key can take
            return None
    if want is int and isinstance(value, int):
        return value
    if want is str and isinstance(value, str):
        return value
    return None


def coerce(fld: dataclasses.Field[Any], value: object, where: str, key: str) -> Value:
    """Check a value from a file or a flag (already typed) against the field's type and rules."""
    fitted = _fitted(type_of(fld), value)
    if fitted is None:
        raise ConfigError(
            f"{where}: {key} must be {_a(type_name(fld))}, got {type(value).__name__} {value!r}",
            hint=f"{key}: {fld.metadata['doc']}",
            details={"source": where, "key": key, "expected": type_name(fld), "got": repr(value)},
        )
    check_rules(fld, fitted, where, key)
    return fitted


def parse_env(fld: dataclasses.Field[Any], raw: str, var: str, key: str) -> Value:
    """Turn an environment string into the field's type, and check it against the field's rules."""
    want = type_of(fld)
    value: Value
    try:
        if want is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                value = True
            elif low in ("0", "false", "no", "off"):
                value = False
            else:
                raise ValueError(raw)
        elif want is tuple:  # a comma-separated list
            value = tuple(item.strip() for item in raw.split(",") if item.strip())
        elif want is int:
            value = int(raw.strip())
        elif want is float:
            value = float(raw.strip())
        else:
            value = raw
    except ValueError:
        raise ConfigError(
            f"environment {var}: {key} must be {_a(type_name(fld))}, got {raw!r}",
            hint=f"{key}: {fld.metadata['doc']}",
            details={"source": f"env {var}", "key": key, "expected": type_name(fld), "got": raw},
        ) from None
    check_rules(fld, value, f"environment {var}", key)
    return value


def check_rules(fld: dataclasses.Field[Any], value: Value, where: str, key: str) -> None:
    """Refuse a value of the right type that breaks one of the field's rules (choices, min, max, check)."""
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
        withheld = isinstance(value, str) and looks_like_key(value)
        raise ConfigError(
            f"{where}: {key} = {shown(value)} {problem}",
            hint=f"{key}: {meta['doc']}",
            details={"source": where, "key": key, "value": shown(value) if withheld else value, "rule": problem},
        )
