"""Durable, all-or-nothing local file writes."""

from __future__ import annotations

import os
from pathlib import Path

from agent.errors import ExitCode, PanostageError


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
