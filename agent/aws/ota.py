"""What the service does not say about an OTA: a major version update without ``AllowMajorVersionUpdate`` is
accepted as a job and then fails, with no reason given.  Both the ``job ota`` command and the daemon's
follow-up ask this before they make a job."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class MajorUpdate:
    """An OTA from ``current`` to ``image_version`` that crosses major versions (``have`` to ``want``)."""

    current: str
    image_version: str
    have: int
    want: int

    @property
    def words(self) -> str:
        return f"a major version update from {self.current} ({self.have}.x to {self.want}.x)"


def major_of(version: str | None) -> int | None:
    """The major version of ``4.3.93`` (4); None when it does not start with digits."""
    match = re.match(r"\d+", version or "")
    return int(match.group()) if match else None


def major_update(current: str | None, image_version: str) -> MajorUpdate | None:
    """The major update ``image_version`` would be for a device running ``current``; None if it is none, or if
    either is unknown (a device not yet claimed has no software: the service says what it thinks of that)."""
    have, want = major_of(current), major_of(image_version)
    if current is None or have is None or want is None or want <= have:
        return None
    return MajorUpdate(current, image_version, have, want)
