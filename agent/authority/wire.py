"""The authority's JSON on the wire: request bodies read strictly, results encoded.

A request body is a JSON object of at most :data:`MAX_BODY` bytes (the HTTP layer answers 413
beyond), nested at most :data:`MAX_DEPTH` deep, without NaN, Infinity or numbers out of a
double's range (400 SerializationException) and without unpaired UTF-16 surrogates (400
CANNOT_PARSE).  Results are encoded compactly, datetimes as epoch seconds and bytes as base64.
"""

from __future__ import annotations

import base64
import json
import math
import re
from datetime import datetime
from typing import Any

from agent.authority.apierror import cannot_parse, serialization_error

MAX_BODY = 1024 * 1024
MAX_DEPTH = 64  # arrays and objects in a request body, nested
_JSON_SPECIAL = re.compile(r'[\[\]{}"\\]')


def _wire(value: object) -> float | str:
    """JSON encoding of what the handlers return: epoch seconds and base64."""
    if isinstance(value, datetime):
        return round(value.timestamp(), 3)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode(value: object) -> bytes:
    """``value`` as compact JSON bytes (datetimes and bytes as :func:`_wire` has them)."""
    return json.dumps(value, default=_wire, separators=(",", ":")).encode()


def nested_too_deeply(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in the JSON ``text`` nest deeper than ``limit`` (one linear pass that
    skips strings; it runs before the parser, which recurses once per level)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string, escaped = 0, False, -1
    for match in _JSON_SPECIAL.finditer(text):
        at, char = match.start(), match.group()
        if in_string:
            if at == escaped:
                continue
            if char == "\\":
                escaped = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


class _NotJsonNumber(ValueError):
    """NaN, Infinity, or a number out of a double's range: not JSON numbers."""


def _refuse_constant(name: str) -> float:
    raise _NotJsonNumber(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJsonNumber(f"the number {text[:40]} is out of range")
    return value


def load_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it: CANNOT_PARSE, or a
    SerializationException for nesting deeper than :data:`MAX_DEPTH` and for NaN/Infinity."""
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise cannot_parse(
            f"request body is not valid JSON: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    if nested_too_deeply(text):
        raise serialization_error(
            f"request body is nested too deeply: more than {MAX_DEPTH} levels of arrays and objects"
        )
    try:
        parsed = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except _NotJsonNumber as exc:
        raise serialization_error(f"request body is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise cannot_parse(f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise cannot_parse("request body must be a JSON object")
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
        raise cannot_parse(f"request body holds an unpaired UTF-16 surrogate ({bad}), which is not text") from None
    return parsed
