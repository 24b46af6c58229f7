"""Durable, all-or-nothing local file writes."""

from __future__ import annotations

from pathlib import Path

from agent.errors import ExitCode, PanostageError
from agent.paths import fsync_dir, write_atomic


def write_file_atomic(path: Path, data: bytes, *, mode: int = 0o600, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync, rename and directory fsync.

    Either the whole new file is there afterwards or nothing changed.
    """
    path = Path(path)
    if path.is_symlink():
        raise PanostageError(
            f"{path} is a symlink; refusing to write through it", exit_code=ExitCode.IO, reason="symlink"
        )
    if path.exists() and not overwrite:
        raise PanostageError(
            f"{path} exists", exit_code=ExitCode.CONFLICT, reason="exists", hint="pass --force to replace it"
        )
    write_atomic(path, data, mode)
    fsync_dir(path.parent)
