"""Running mtools in isolation, with data passed through memory only.

Every call gets a clean environment: no user ``~/.mtoolsrc`` (``HOME`` points
nowhere), ``MTOOLSRC=/dev/null``, every global flag set explicitly (the
environment overrides ``/etc/mtools.conf``), a UTF-8 locale for long names, and
no terminal (stdin is the data or ``/dev/null``: mtools never prompts).

The drive is ``-i /dev/fd/N@@offset``: the child inherits our open descriptor,
so mtools works on exactly the device or image we checked and hold - a stick
replaced under the same ``/dev`` name cannot be written by mistake.

Bytes to write go in as stdin from a sealed memfd (no file on any disk).  A
regular-file stdin matters: mcopy ``fstat``s it, knows the size, and refuses a
too-large copy up front ("Disk full"); from a pipe it writes until the disk is
full, exits 0 and leaves a truncated file and a broken chain (mtools 4.0.32).
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.stick.errors import StickIOError, StickNameError
from agent.stick.fatfs import split_rel

TOOLS = ("mcopy", "mren", "mdel", "mmd", "mrd", "mattrib", "mdir", "minfo")

BASE_ENV = {
    "MTOOLSRC": "/dev/null",
    "HOME": "/nonexistent",
    "MTOOLS_SKIP_CHECK": "1",
    "MTOOLS_LOWER_CASE": "0",
    "MTOOLS_NO_VFAT": "0",
    "MTOOLS_NAME_NUMERIC_TAIL": "1",
    "MTOOLS_DOTTED_DIR": "0",
    "MTOOLS_FAT_COMPATIBILITY": "0",
    "MTOOLS_TWENTY_FOUR_HOUR_CLOCK": "1",
    "MTOOLS_LOCK_TIMEOUT": "0",
    "LC_ALL": "C.UTF-8",
}

#: Names mtools gets from us: no wildcards (``*?[]``), quotes or separators.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~ -]*|\.[A-Za-z0-9][A-Za-z0-9._+~ -]*")
#: Names found on a stick that mtools takes as typed (C.UTF-8): no wildcard, separator, drive colon or
#: control character, no leading or trailing space or dot (mtools would strip them).
ADDRESSABLE = re.compile(
    r"(?![ .])[^*?\[\]/\\:\x00-\x1f\x7f]+(?<![ .])|\.[^*?\[\]/\\:\x00-\x1f\x7f.][^*?\[\]/\\:\x00-\x1f\x7f]*(?<![ .])"
)

#: stderr lines that are only noise (loop devices have no geometry).
_NOISE = re.compile(r"^(Could not get geometry of device.*|)$")

_ERRNO_TEXT = [
    ("Disk full", _errno.ENOSPC),
    ("No space left", _errno.ENOSPC),
    ("No free cluster", _errno.ENOSPC),
    ("Input/output error", _errno.EIO),
    ("Read-only file system", _errno.EROFS),
    ("Permission denied", _errno.EACCES),
    ("No such device", _errno.ENODEV),
    ("No such file", _errno.ENOENT),
    ("not found", _errno.ENOENT),
    ("File exists", _errno.EEXIST),
]

Wrap = Callable[[str, list[str]], list[str]]


def errno_in(text: str) -> int | None:
    """The errno an mtools message names (``Disk full``, ``Input/output error`` ...), if any."""
    return next((num for needle, num in _ERRNO_TEXT if needle.lower() in text.lower()), None)


def missing_tools() -> list[str]:
    """The mtools programs that are not on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def check_name(part: str) -> str:
    """A single name as FAT and mtools take it: at most 255 characters, no wildcards or separators."""
    if len(part) > 255:
        raise StickNameError(
            f"{part[:40]}... is {len(part)} characters long; FAT allows 255", hint="use a shorter device name"
        )
    if not SAFE_NAME.fullmatch(part):
        raise StickNameError(f"name not allowed on the stick: {part!r} (letters, digits and ._+~- only)")
    return part


def dos_path(rel: str) -> str:
    """``panorama/occ.log`` -> ``::/panorama/occ.log`` (every part checked)."""
    return "::/" + "/".join(check_name(p) for p in split_rel(rel))


@dataclass
class MtoolsResult:
    returncode: int
    stdout: bytes
    stderr: str


@dataclass
class Mtools:
    """Runs mtools against one drive (an open descriptor plus a byte offset)."""

    fd: int
    offset: int = 0
    #: Test seam: rewrite a command line (e.g. prefix ``fiu-run``) per tool name.
    wrap: Wrap | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    timeout: float = 60.0

    @property
    def drive(self) -> str:
        return f"/dev/fd/{self.fd}" + (f"@@{self.offset}" if self.offset else "")

    def run(self, tool: str, *args: str, stdin: int | None = None, step: str, what: str) -> MtoolsResult:
        """Run ``tool -i drive args...``; raise :class:`StickIOError` naming ``step`` on failure."""
        argv = [tool, "-i", self.drive, *args]
        if self.wrap is not None:
            argv = self.wrap(tool, argv)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **BASE_ENV, **self.extra_env}
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                capture_output=True,
                env=env,
                pass_fds=(self.fd,),
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise StickIOError(
                step, what, detail=f"{tool} is not installed ({exc})", hint="install the mtools package"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise StickIOError(
                step, what, errno=_errno.ETIMEDOUT, detail=f"{tool} did not finish within {self.timeout:g}s"
            ) from exc
        stderr = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0:
            text = " ".join(line.strip() for line in stderr.splitlines() if not _NOISE.match(line.strip()))
            code = errno_in(text)
            raise StickIOError(
                step,
                what,
                errno=code,
                detail=f"{tool} exited {proc.returncode}: {text or 'no message'}",
                details={"tool": tool, "stderr": text[-500:]},
            )
        return MtoolsResult(proc.returncode, proc.stdout, stderr)


def memory_file(data: bytes, *, runtime_dir: Path | None = None) -> int:
    """A sealed, seekable, nameless in-memory file holding ``data`` (positioned at 0).

    A memfd; where that is missing, an unnamed ``O_TMPFILE`` in ``runtime_dir``
    (which must be a tmpfs).  The caller closes the descriptor.
    """
    try:
        fd = os.memfd_create("panostage-archive", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError):
        from agent.stick.mounts import mount_of

        mount = mount_of(runtime_dir) if runtime_dir is not None else None
        if runtime_dir is None or mount is None or mount.fstype not in ("tmpfs", "ramfs"):
            raise StickIOError(
                "memfd",
                "holding the archive in memory",
                errno=_errno.ENOSYS,
                detail="no memfd, and no tmpfs runtime directory to fall back to",
                hint="set paths.runtime_dir to a directory on tmpfs (e.g. /run/panostage)",
            ) from None
        fd = os.open(runtime_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        try:
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
            )
        except (AttributeError, OSError):
            pass  # O_TMPFILE fallback: no seals, still nameless
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def mtools_version() -> str | None:
    """``mtools (GNU mtools) 4.0.32`` or None."""
    try:
        out = subprocess.run(["mtools", "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.stdout else None
