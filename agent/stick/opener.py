"""``open_target``: from what the user named to the right kind of target, refusing what is unsafe."""

from __future__ import annotations

import errno
import glob
import os
import re
import stat
from pathlib import Path

from agent.stick.checks import permission_denied
from agent.stick.directory import DirectoryTarget
from agent.stick.dirroot import mounted_hint
from agent.stick.errors import StickIOError, StickRefused
from agent.stick.fat import FatTarget
from agent.stick.model import StickTarget
from agent.stick.mounts import device_rdev, mounts_of_device
from agent.stick.mtools import Wrap

_OFFSET = re.compile(r"^(?P<path>.+)@@(?P<offset>[0-9]+)$")


def parse_spec(spec: str | Path) -> tuple[Path, int | None]:
    """``IMAGE@@BYTE_OFFSET`` (mtools' syntax for a partition inside an image) or a plain path."""
    text = str(spec)
    match = _OFFSET.match(text)
    if match and not os.path.exists(text):
        return Path(match["path"]), int(match["offset"])
    return Path(text), None


def loop_devices_of(image: Path) -> list[str]:
    """Loop devices whose backing file is ``image``."""
    try:
        st = os.stat(image)
    except OSError:
        return []
    found = []
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(backing, encoding="utf-8", errors="replace") as handle:
                name = handle.read().strip().removesuffix(" (deleted)")
            other = os.stat(name)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            found.append("/dev/" + backing.split("/")[3])
    return found


def open_target(
    spec: str | Path,
    *,
    allow_non_fat: bool = False,
    runtime_dir: Path | None = None,
    partition: int | None = None,
    wrap: Wrap | None = None,
    readback: str = "direct",
) -> StickTarget:
    """Open a stick given as a mounted directory, a FAT image (``IMAGE[@@OFFSET]``) or a block device.

    * directory: a :class:`DirectoryTarget` (must be the root of a FAT mount unless ``allow_non_fat``);
    * block device mounted (itself or a partition): a :class:`DirectoryTarget` on a writable mount point,
      else refused; never written raw under a mount;
    * unmounted block device or image file: a :class:`FatTarget` (block devices held with ``O_EXCL``);
      ``readback`` picks how it reads back bypassing caches ("direct": O_DIRECT, "mtools": drop caches + mcopy).
    """
    path, offset = parse_spec(spec)
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):  # a directory above it this user may not enter
            raise permission_denied(path, want="read", block=False, code=exc.errno) from exc
        raise StickIOError.from_os("open", f"opening stick {path}", exc) from exc
    if stat.S_ISDIR(st.st_mode):
        return DirectoryTarget(path, allow_non_fat=allow_non_fat)
    if stat.S_ISBLK(st.st_mode):
        mounted = mounts_of_device(st.st_rdev)
        if mounted:
            writable = [m for m in mounted if not m.readonly]
            usable = [m for m in writable if os.access(m.mountpoint, os.W_OK, effective_ids=True)]
            where = ", ".join(f"{m.device} on {m.mountpoint} ({'ro' if m.readonly else 'rw'})" for m in mounted)
            if writable and not usable:  # mounted read-write, but not for this user
                first = writable[0]
                raise permission_denied(
                    first.mountpoint,
                    want="write",
                    block=False,
                    hint=mounted_hint(first.mountpoint, str(path)),
                    subject=f"{first.mountpoint}, where {first.device} is mounted read-write",
                )
            if not usable:
                raise StickRefused(
                    f"{path} is mounted read-only ({where})",
                    reason="stick-read-only",
                    hint="remount it read-write, or unmount it and pass the device",
                )
            if len({device_rdev(m.device) for m in usable}) > 1:
                raise StickRefused(
                    f"{path} has several mounted partitions ({where})",
                    reason="stick-unsupported-layout",
                    hint="pass the mount point you mean",
                )
            return DirectoryTarget(usable[0].mountpoint, allow_non_fat=allow_non_fat)
        return FatTarget.open(
            path, offset=offset, partition=partition, runtime_dir=runtime_dir, wrap=wrap, readback=readback
        )
    if stat.S_ISREG(st.st_mode):
        loops = loop_devices_of(path)
        if loops:
            raise StickRefused(
                f"{path} is attached to {', '.join(loops)}",
                reason="stick-busy",
                hint=f"use {loops[0]} (or detach it): writing the file under a loop device corrupts it",
            )
        return FatTarget.open(
            path, offset=offset, partition=partition, runtime_dir=runtime_dir, wrap=wrap, readback=readback
        )
    raise StickRefused(f"{path} is not a directory, an image file or a block device", reason="stick-not-fat")
