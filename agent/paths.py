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


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a nearly full filesystem takes part of a write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def discard(path: Path) -> None:
    """Best-effort removal, cleaning up after a failure that is already being reported."""
    try:
        os.unlink(path)
    except OSError:
        pass


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a new temporary file of ``mode``, fsync it and rename it over ``path``.

    On any failure (or interruption) the temporary file is removed and ``path`` is untouched.
    The caller fsyncs the directory when the rename must be durable.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
