"""The errors a stick operation can end in (all :class:`~agent.errors.PanostageError`)."""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

from agent.errors import ExitCode, PanostageError


class StickRefused(PanostageError):
    """The stick (or what is on it) forbids the operation; nothing was written."""

    exit_code = ExitCode.STICK_REFUSED
    reason = "stick-refused"


class StickDamaged(StickRefused):
    """The stick's FAT contradicts itself where a write would land; nothing was written."""

    reason = "stick-damaged"

    def __init__(self, path: object, problems: list[str], *, block: bool = True) -> None:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        erase = f", or erase it with `panostage stick prepare {path}`" if block else ""
        super().__init__(
            f"the stick's filesystem is damaged ({shown}): nothing was written",
            hint=f"repair it with `fsck.fat -a {path}`{erase}",
            details={"problems": problems},
        )
        self.problems = problems


class StickFileTooLarge(StickRefused):
    """A file on the stick is larger than anything panostage reads from a stick; it was not read."""

    reason = "stick-file-too-large"

    def __init__(self, name: str, size: int, limit: int) -> None:
        super().__init__(
            f"{name} on the stick is {size} bytes, more than the {limit} bytes panostage reads; it was not read",
            hint="it is no configuration archive or appliance log: remove it, "
            "or pass --replace to let panostage remove it",
            details={"name": name, "size": size, "limit": limit},
        )


class StickConflict(PanostageError):
    """The target name is taken by something that must not be replaced (a directory, a symlink ...)."""

    exit_code = ExitCode.CONFLICT
    reason = "stick-conflict"


class StickNameError(PanostageError):
    """A name that cannot (or must not) be used on a FAT stick."""

    exit_code = ExitCode.VALIDATION
    reason = "stick-name"


class StickIOError(PanostageError):
    """An I/O step failed; the temporary file was removed and the filesystem left consistent."""

    exit_code = ExitCode.IO
    reason = "stick-io"

    def __init__(
        self,
        step: str,
        what: str,
        *,
        errno: int | None = None,
        detail: str | None = None,
        hint: str | None = None,
        details: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        self.step = step
        self.errno = errno
        cause = detail or (os.strerror(errno) if errno else "failed")
        code = f" [{_errno.errorcode.get(errno, errno)}]" if errno else ""
        data = {"step": step, "what": what, **({"errno": _errno.errorcode.get(errno, str(errno))} if errno else {})}
        data.update(details or {})
        super().__init__(
            f"{what}: step '{step}' failed: {cause}{code}", hint=hint or _hint_for(errno), details=data, reason=reason
        )

    @classmethod
    def from_os(
        cls,
        step: str,
        what: str,
        exc: OSError,
        *,
        hint: str | None = None,
        details: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> StickIOError:
        err = cls(
            step, what, errno=exc.errno, detail=exc.strerror or str(exc), hint=hint, details=details, reason=reason
        )
        err.__cause__ = exc
        return err


def _hint_for(errno: int | None) -> str | None:
    if errno == _errno.ENOSPC:
        return "the stick (or the disk holding the image) is full: free some space or use another stick"
    if errno in (_errno.EIO, _errno.ENODEV, _errno.ENXIO, _errno.ENOMEDIUM):
        return "the stick may have been pulled out or be failing: re-insert it or use another one"
    if errno in (_errno.EROFS, _errno.EACCES, _errno.EPERM):
        return "the stick is read-only (write-protect switch, read-only mount or permissions)"
    return None
