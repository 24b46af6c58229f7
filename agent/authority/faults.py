"""Fault injection: per operation, added latency, an error at a rate (seeded RNG), optionally
for the next N calls only, after the work is committed (a lost response), a dropped
connection, or a malformed configuration archive.

Rules are keyed by operation name: the AWS names, ``Claim``, or a service-qualified name
(``panorama:ListDevices``, ``snow-device-management:ListDevices``) where a bare name
would match both services.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from agent.authority.bundle import DEFECTS
from agent.aws.operations import PANORAMA, PANORAMA_OPERATIONS, SNOW, SNOW_OPERATIONS
from agent.errors import UsageError

LOCAL_OPERATIONS = ("Claim",)
FAULT_STATUSES = (500, 429, 409, 402, 403)
MAX_LATENCY_MS = 600_000


def known_operations() -> set[str]:
    names = set(PANORAMA_OPERATIONS) | set(SNOW_OPERATIONS) | set(LOCAL_OPERATIONS)
    names |= {f"{PANORAMA}:{op}" for op in PANORAMA_OPERATIONS}
    names |= {f"{SNOW}:{op}" for op in SNOW_OPERATIONS}
    return names


class FaultSpecError(UsageError):
    reason = "fault-spec"


@dataclass
class FaultRule:
    """What to do to calls of one operation."""

    latency_ms: float = 0.0
    error: int | None = None
    rate: float = 1.0
    count: int | None = None  # the next N calls only; None: until cleared
    after_commit: bool = False
    drop_connection: bool = False
    archive: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The keys that differ from "no fault" (rate always shown)."""
        return {k: v for k, v in asdict(self).items() if k == "rate" or v not in (None, False, 0, 0.0)}


@dataclass(frozen=True)
class FaultAction:
    """What to do to one call (the outcome of a rule after the dice)."""

    latency_s: float = 0.0
    error: int | None = None
    after_commit: bool = False
    drop_connection: bool = False
    archive: str | None = None

    @property
    def fails(self) -> bool:
        return self.error is not None or self.drop_connection


NO_FAULT = FaultAction()
_TYPES = {f.name: f.type for f in fields(FaultRule)}


def rule_from_mapping(operation: str, values: Mapping[str, Any]) -> FaultRule:
    """A checked rule from ``{key: value}`` (values typed, or strings as given on a command line)."""
    if operation not in known_operations():
        raise FaultSpecError(
            f"unknown operation {operation!r} for a fault",
            hint="use an AWS operation name (ProvisionDevice, CreateTask, ...), Claim, or service:Operation",
        )
    rule = FaultRule()
    for key, raw in values.items():
        if key not in _TYPES:
            raise FaultSpecError(f"unknown fault key {key!r}", hint=f"known keys: {', '.join(_TYPES)}")
        setattr(rule, key, _convert(key, raw))
    if rule.error is not None and rule.error not in FAULT_STATUSES:
        raise FaultSpecError(f"error={rule.error}: must be one of {', '.join(map(str, FAULT_STATUSES))}")
    if not 0.0 <= rule.rate <= 1.0:
        raise FaultSpecError(f"rate={rule.rate}: must be between 0 and 1")
    if rule.count is not None and rule.count < 1:
        raise FaultSpecError(f"count={rule.count}: must be at least 1")
    if not 0 <= rule.latency_ms <= MAX_LATENCY_MS:  # NaN fails this too
        raise FaultSpecError(f"latency_ms={rule.latency_ms}: must be between 0 and {MAX_LATENCY_MS} (ten minutes)")
    if rule.archive is not None:
        if rule.archive not in DEFECTS:
            raise FaultSpecError(f"archive={rule.archive}: must be one of {', '.join(DEFECTS)}")
        if operation.split(":")[-1] != "ProvisionDevice":
            raise FaultSpecError("archive=... applies to ProvisionDevice only")
    if rule.after_commit and rule.error is None and not rule.drop_connection:
        raise FaultSpecError("after_commit needs error=<status> or drop_connection=true")
    return rule


def _convert(key: str, raw: Any) -> bool | int | float | str | None:
    """``raw`` (typed, or a string as given on a command line) as the type of the rule's ``key``."""
    kind = _TYPES[key]
    try:
        if "bool" in kind:
            if isinstance(raw, bool):
                return raw
            low = str(raw).strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            if "None" in kind:
                return None
            raise ValueError(raw)
        if isinstance(raw, bool):
            raise ValueError(raw)
        if "int" in kind:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if "float" in kind:
            return float(raw)
        return str(raw)
    except ValueError:
        raise FaultSpecError(f"fault key {key}: {raw!r} is not a valid {kind.replace(' | None', '')}") from None


def parse_spec(spec: str) -> tuple[str, FaultRule]:
    """``OP:key=value,key=value`` (the ``--fault`` option) as an operation and rule."""
    operation, sep, rest = spec.rpartition(":")
    if not sep or not operation:
        raise FaultSpecError(f"--fault {spec!r}: expected OP:key=value[,key=value...]")
    return operation, rule_from_mapping(operation, parse_pairs(rest.split(",") if rest else []))


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` as a dict."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FaultSpecError(f"{pair!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


@dataclass
class FaultInjector:
    """The rules in force; thread-safe, deterministic for a given seed and call order."""

    seed: int = 0
    rules: dict[str, FaultRule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(self.seed)

    def set(self, operation: str, rule: FaultRule) -> None:
        with self._lock:
            self.rules[operation] = rule

    def reseed(self, seed: int) -> None:
        with self._lock:
            self.seed = seed
            self._rng = random.Random(seed)

    def clear(self, operation: str | None = None) -> None:
        with self._lock:
            if operation is None:
                self.rules.clear()
            else:
                self.rules.pop(operation, None)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"seed": self.seed, "rules": {op: rule.to_dict() for op, rule in sorted(self.rules.items())}}

    def decide(self, service: str, operation: str) -> FaultAction:
        """The action for one call of ``operation`` (consumes a counted rule's budget)."""
        if not self.rules:
            return NO_FAULT
        with self._lock:
            key = f"{service}:{operation}"
            if key not in self.rules:
                key = operation
            rule = self.rules.get(key)
            if rule is None:
                return NO_FAULT
            if rule.count is not None:
                rule.count -= 1
                if rule.count <= 0:
                    del self.rules[key]
            hit = rule.rate >= 1.0 or self._rng.random() < rule.rate
            return FaultAction(
                latency_s=rule.latency_ms / 1000.0,
                error=rule.error if hit else None,
                after_commit=rule.after_commit,
                drop_connection=rule.drop_connection and hit,
                archive=rule.archive if hit else None,
            )
