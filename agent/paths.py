"""Where state and scratch live, resolved from settings and the environment."""

from __future__ import annotations

import os
from pathlib import Path

from agent.config import Settings


def state_dir(settings: Settings) -> Path:
    """Persistent state: ``paths.state_dir``, systemd's ``$STATE_DIRECTORY``, then the standard place."""
    if settings.paths.state_dir:
        return Path(settings.paths.state_dir)
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/panostage")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "panostage"


def runtime_dir(settings: Settings) -> Path:
    """Scratch that must never reach persistent disk (a tmpfs): ``$RUNTIME_DIRECTORY``, ``$XDG_RUNTIME_DIR``, /run."""
    if settings.paths.runtime_dir:
        return Path(settings.paths.runtime_dir)
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "panostage"
    if os.geteuid() == 0:
        return Path("/run/panostage")
    return Path("/dev/shm") / f"panostage-{os.geteuid()}"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed and return it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def fsync_dir(directory: Path) -> None:
    """Flush a directory, so the names created, renamed or removed in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
