"""Client-side validation of every documented constraint, before any call.

botocore checks only required members, types and minimum lengths; maximum lengths,
patterns, enums and unions go to the wire unchecked.  This module walks the
operation's input shape in the service model (ours for Panorama, botocore's for
Snow Device Management) and checks all of them, then the cross-field rules the
documentation states in prose.  It returns every violation, not just the first.
The local authority runs the same checks on what it receives.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, cast

from agent.aws.operations import PANORAMA, PANORAMA_OPERATIONS, SNOW, SNOW_OPERATIONS
from agent.errors import InputValidationError, Violation

if TYPE_CHECKING:
    from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape

#: operation name -> service it belongs to (Panorama's ListDevices; Snow's is asked for by its alias)
OPERATIONS = {
    **dict.fromkeys((op for op in SNOW_OPERATIONS if op not in PANORAMA_OPERATIONS), SNOW),
    **dict.fromkeys(PANORAMA_OPERATIONS, PANORAMA),
}
#: Snow's ListDevices clashes with Panorama's name; the authority asks for it by this alias.
SNOW_ALIASES = {"SnowListDevices": "ListDevices"}


@cache
def _service_model(service: str) -> ServiceModel:
    from agent.aws.model import new_botocore_session

    return new_botocore_session().get_service_model(service)


def operation_shape(operation: str, service: str | None = None) -> StructureShape:
    """The botocore input shape of ``operation``."""
    service = service or OPERATIONS.get(operation) or ("snow-device-management" if operation in SNOW_ALIASES else None)
    if service is None:
        raise KeyError(f"unknown operation {operation}")
    shape = _service_model(service).operation_model(SNOW_ALIASES.get(operation, operation)).input_shape
    assert shape is not None, f"{operation} takes no input"  # every operation named above takes one
    return shape


def check(operation: str, params: Mapping[str, Any], service: str | None = None) -> list[Violation]:
    """Every violation of ``operation``'s documented constraints in ``params``."""
    shape = operation_shape(operation, service)
    found = list(_walk(shape, params, ""))
    extra = CROSS_FIELD_RULES.get(operation)
    if extra and isinstance(params, Mapping):
        found.extend(extra(params))
    return found


def validate(operation: str, params: Mapping[str, Any], *, subject: str | None = None) -> None:
    """Raise :class:`InputValidationError` listing every violation, if there is any."""
    violations = check(operation, params)
    if violations:
        raise InputValidationError(violations, subject=subject or f"{operation} request")


# ---------------------------------------------------------------- the model walk

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "long": (int,),
    "boolean": (bool,),
    "list": (list, tuple),
    "map": (dict,),
    "structure": (dict,),
    "blob": (bytes, bytearray, str),
    "float": (int, float),
    "double": (int, float),
}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _walk(shape: Shape, value: Any, path: str) -> Iterator[Violation]:
    """The violations in ``value`` of ``shape``; botocore made ``shape`` of the Shape subclass its ``type_name`` names
    (list: ListShape, map: MapShape, structure: StructureShape), which the casts below say."""
    kind = shape.type_name
    want = _PY_TYPES.get(kind)
    numeric = kind in ("integer", "long", "float", "double")
    if want is not None and (not isinstance(value, want) or (numeric and isinstance(value, bool))):
        yield Violation(path or "(request)", value, f"must be {_article(kind)}")
        return
    meta = shape.metadata
    if kind == "string":
        yield from _check_string(meta, value, path)
    elif kind in ("integer", "long"):
        yield from _check_range(meta, value, path, value, "")
    elif kind == "list":
        yield from _check_range(meta, value, path, len(value), " items")
        member = cast("ListShape", shape).member
        for index, item in enumerate(value):
            yield from _walk(member, item, f"{path}[{index}]")
    elif kind == "map":
        yield from _check_range(meta, value, path, len(value), " entries")
        mapping = cast("MapShape", shape)
        for key, item in value.items():
            yield from _walk(mapping.key, key, f"{path} key")
            yield from _walk(mapping.value, item, f"{path}.{key}")
    elif kind == "structure":
        yield from _check_structure(cast("StructureShape", shape), value, path)


def _check_structure(shape: StructureShape, value: Mapping[str, Any], path: str) -> Iterator[Violation]:
    members = shape.members
    for name in value:
        if name not in members:
            yield Violation(_join(path, name), value[name], f"unknown member; known: {', '.join(members) or 'none'}")
    for name in shape.required_members:
        if value.get(name) is None:
            yield Violation(_join(path, name), None, "required")
    if shape.metadata.get("union"):
        present = [name for name in members if value.get(name) is not None]
        if len(present) != 1:
            yield Violation(path or "(request)", sorted(present), f"exactly one of {' | '.join(members)} must be set")
    for name, item in value.items():
        if name in members and item is not None:
            yield from _walk(members[name], item, _join(path, name))


def _check_string(meta: Mapping[str, Any], value: str, path: str) -> Iterator[Violation]:
    if "enum" in meta and value not in meta["enum"]:
        yield Violation(path, value, f"must be one of {' | '.join(meta['enum'])}")
        return
    length_problems = list(_check_range(meta, value, path, _java_length(value), " characters"))
    yield from length_problems
    pattern = meta.get("pattern")
    if pattern and not length_problems and not _compiled(pattern).fullmatch(value):
        yield Violation(path, value, _pattern_rule(pattern))


def _check_range(meta: Mapping[str, Any], value: Any, path: str, size: int, unit: str) -> Iterator[Violation]:
    low, high = meta.get("min"), meta.get("max")
    if (low is not None and size < low) or (high is not None and size > high):
        if low == high:
            rule = f"must have exactly {low}{unit[:-1] if low == 1 else unit}"
        elif high is None:
            rule = f"must be at least {low}{unit}"
        elif low is None:
            rule = f"must be at most {high}{unit}"
        else:
            rule = f"must be {low}–{high}{unit}"
        yield Violation(path, value, f"{rule} (has {size})" if unit else rule)


def _java_length(text: str) -> int:
    """String length as the service counts it (UTF-16 code units)."""
    # surrogatepass: JSON's \uXXXX escapes can decode to a lone surrogate, which is one unit too
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    """The service's (Java) regex in Python: ASCII classes, and ``.`` excluding every line terminator."""
    return re.compile(_java_dots(pattern), re.ASCII)


def _java_dots(pattern: str) -> str:
    """Replace each ``.`` outside a character class by Java's ``[^\\n\\r\\u0085\\u2028\\u2029]``."""
    out, in_class, escaped = [], False, False
    for char in pattern:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            out.append(char)
            escaped = True
        elif char == "[" and not in_class:
            in_class = True
            out.append(char)
        elif char == "]" and in_class:
            in_class = False
            out.append(char)
        elif char == "." and not in_class:
            out.append("[^\\n\\r\\u0085\\u2028\\u2029]")
        else:
            out.append(char)
    return "".join(out)


def _pattern_rule(pattern: str) -> str:
    """Long patterns are named in words; short ones are shown with a gloss."""
    hint = _PATTERN_HINTS.get(pattern, "")
    if hint and len(pattern) > 40:
        return "must be " + hint.strip(" ()")
    return f"must match {pattern}{hint}"


def _article(kind: str) -> str:
    return {
        "integer": "an integer",
        "long": "an integer",
        "list": "a list",
        "map": "a map (table) of strings",
        "structure": "a structure (table)",
        "blob": "bytes",
        "boolean": "a boolean (true/false)",
    }.get(kind, f"a {kind}")


_IPV4 = r"^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))"
_PATTERN_HINTS = {
    "^[a-zA-Z0-9\\-\\_]+$": " (letters, digits, - and _ only)",
    _IPV4 + r"(:(6553[0-5]|655[0-2]\d|65[0-4]\d{2}|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}))?$": (
        " (a dotted IPv4 address, optionally :port 1–65535)"
    ),
    "^([0-9]+)\\.([0-9]+)$": " (MAJOR.MINOR, digits only)",
    "^.+$": " (non-empty, single line)",
    "^.*$": " (single line)",
}
_NTP_PATTERN_HINT = " (a lowercase DNS name or a dotted IPv4 address, optionally :port)"


# ---------------------------------------------------------------- rules stated in prose


def _static_ip_rules(params: Mapping[str, Any]) -> Iterator[Violation]:
    network = params.get("NetworkingConfiguration")
    if not isinstance(network, Mapping):
        return
    for port in ("Ethernet0", "Ethernet1"):
        eth = network.get(port)
        if not isinstance(eth, Mapping):
            continue
        if eth.get("ConnectionType") == "STATIC_IP" and eth.get("StaticIpConnectionInfo") is None:
            for member in ("IpAddress", "Mask", "DefaultGateway", "Dns"):
                yield Violation(
                    f"NetworkingConfiguration.{port}.StaticIpConnectionInfo.{member}",
                    None,
                    "required when ConnectionType is STATIC_IP",
                )


def _ota_rules(params: Mapping[str, Any]) -> Iterator[Violation]:
    if params.get("JobType") != "OTA":
        return
    config = params.get("DeviceJobConfig")
    ota = config.get("OTAJobConfig") if isinstance(config, Mapping) else None
    if ota is None:
        yield Violation("DeviceJobConfig.OTAJobConfig.ImageVersion", None, "required when JobType is OTA")


def _provision_rules(params: Mapping[str, Any]) -> Iterator[Violation]:
    yield from _static_ip_rules(params)


CROSS_FIELD_RULES: dict[str, Callable[[Mapping[str, Any]], Iterator[Violation]]] = {
    "ProvisionDevice": _provision_rules,
    "CreateJobForDevices": _ota_rules,
}


def _install_ntp_hint() -> None:
    """The NTP pattern is long; name it in words too."""
    pattern = (
        "(^([a-z0-9]+(-[a-z0-9]+)*\\.)+[a-z]{2,}$)|("
        + _IPV4
        + r"(:(6553[0-5]|655[0-2]\d|65[0-4]\d{2}|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}))?$)"
    )
    _PATTERN_HINTS[pattern] = _NTP_PATTERN_HINT


_install_ntp_hint()
