"""The stick policy: which block devices may receive a configuration archive."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import StickSettings
from agent.udev.info import StickInfo

FAT_TYPES = frozenset({"vfat"})  # blkid names every FAT (12/16/32) vfat


@dataclass(frozen=True)
class Decision:
    """Admitted or not, and why (``reason`` is always a human-readable sentence fragment)."""

    admitted: bool
    reason: str
    info: StickInfo

    def to_dict(self) -> dict[str, Any]:
        return {
            "admitted": self.admitted,
            "reason": self.reason,
            "identity": self.info.identity,
            "devnode": self.info.devnode,
            "syspath": self.info.syspath,
            "info": self.info.to_dict(),
        }


def label_matches(label: str | None, pattern: str) -> bool:
    """Glob match, case-insensitive (FAT labels are case-insensitive; DOS stores them upper-case)."""
    return fnmatch.fnmatchcase((label or "").upper(), pattern.upper())


def decide(info: StickInfo, settings: StickSettings, is_enrolled: Callable[[str], bool]) -> Decision:
    """Admit ``info`` only if it is USB mass storage (or ``allow_non_usb``), carries a FAT filesystem
    (on a partition or the whole disk), matches the label glob (if any) and, when enrollment is
    required, has an enrolled identity.  The first rule broken is the reason."""

    def no(reason: str) -> Decision:
        return Decision(False, reason, info)

    if not info.is_usb and not settings.allow_non_usb:
        return no("not USB mass storage")
    if not info.has_filesystem:
        table = info.properties.get("ID_PART_TABLE_TYPE")
        if table and info.devtype == "disk":  # udev copies the disk's ID_PART_TABLE_TYPE onto its partitions
            return no(f"no filesystem (partition table {table}: use a partition)")
        if info.fs_type:
            return no(f"no filesystem ({info.fs_type}, {info.fs_usage or 'not a filesystem'})")
        return no("no filesystem")
    if info.fs_type not in FAT_TYPES:
        return no(f"not FAT ({info.fs_type})")
    if settings.label and not label_matches(info.fs_label, settings.label):
        if not info.fs_label:
            return no(f"no label (must match '{settings.label}')")
        return no(f"label '{info.fs_label}' does not match '{settings.label}'")
    if settings.require_enrollment:
        identity = info.identity
        if identity is None:
            return no("no identity (no USB serial, no filesystem UUID): cannot be enrolled")
        if not is_enrolled(identity):
            return no(f"not enrolled: {identity}")
    return Decision(True, "admitted", info)
