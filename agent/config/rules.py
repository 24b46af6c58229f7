"""The rules a configuration value must keep beyond its type, and how a value is shown in a message.

Each ``*_problem`` function returns the rule a value breaks, or None: the schema names them as a key's
``check``, and :func:`check_operator` applies the operator rule to the login-name fallback as well.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from urllib.parse import urlsplit

from agent.errors import ConfigError

#: Markers of PEM key material: never a configuration value that ends up in the hand-off log.
KEY_MARKERS = ("PRIVATE KEY", "-----BEGIN")
OPERATOR_MAX = 128
_HOST_LABELS = re.compile(r"^((?!-)[a-z\d-]{1,63}(?<!-)\.)*((?!-)[a-z\d-]{1,63}(?<!-))\.?$", re.IGNORECASE)
URL_RULE = "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8750"
#: A region name as botocore accepts one for signing (``us-east-1``, ``eu-central-1``, a lab's ``zz-lab-1``).
_REGION_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")


def looks_like_key(value: str) -> bool:
    """True when ``value`` holds PEM key material (it is then never echoed)."""
    return any(marker in value for marker in KEY_MARKERS)


def _control_chars(value: str) -> list[str]:
    """Control, format and line/paragraph separator characters in ``value`` (as U+XXXX)."""
    return sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")})


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` fit for a message: shortened, and never echoing key material."""
    if isinstance(value, str) and looks_like_key(value):
        return f"<{len(value)} characters withheld: they look like key material>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


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
    if looks_like_key(value):
        return "must be a person's or an account's name, not key material (it holds '-----BEGIN' or 'PRIVATE KEY')"
    if len(value) > OPERATOR_MAX:
        return f"must be at most {OPERATOR_MAX} characters (it has {len(value)})"
    bad = _control_chars(value)
    if bad:
        return f"must not contain control characters (it holds {', '.join(bad[:5])})"
    return None


def regions_problem(value: tuple[str, ...]) -> str | None:
    """The rule a list of region names breaks (None when every entry is a region name)."""
    for region in value:
        if not _REGION_NAME.match(region):
            return f"must hold region names such as us-east-1 (letters, digits and '-'); {shown(region)} is not one"
    return None


def check_operator(value: str, source: str) -> str:
    """``value`` if it is a fine operator name for the hand-off log, else a :class:`ConfigError`.

    ``source`` names where the value came from (``"environment USER"``, ``"login name"``) for the
    message; the same rules hold for ``stage.operator`` and for the fallback to the login name.
    """
    problem = operator_problem(value)
    if problem:
        raise ConfigError(
            f"{source}: the operator name {shown(value)} {problem}",
            hint="set stage.operator (PANOSTAGE_STAGE_OPERATOR) to the name to record in the hand-off log",
            details={"source": source, "key": "stage.operator", "value": shown(value), "rule": problem},
        )
    return value
