"""Finding a FAT filesystem in an image or on a block device, and holding it while we work.

:func:`open_held` opens for the target's lifetime (block devices with ``O_EXCL``: nothing can
mount them underneath; images ``flock``ed).  :func:`locate` finds the filesystem (at an offset,
in an MBR partition or on the whole device) and refuses, before anything is written, every
layout :func:`agent.stick.fatgeo.layout_problems` names and every filesystem that claims more
than the device holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import NoReturn

from agent.stick import blockio
from agent.stick.checks import Access, permission_denied
from agent.stick.errors import StickIOError, StickRefused
from agent.stick.fatgeo import (
    FAT_PARTITION_TYPES,
    Geometry,
    NotFat,
    Partition,
    identify,
    layout_problems,
    mbr_partitions,
    parse_boot_sector,
)

HEAD_BYTES = 72 * 1024


def locate(
    fd: int, path: Path, *, block: bool, offset: int | None, partition: int | None
) -> tuple[Geometry, Partition | None]:
    """Find the filesystem and check it is one we write; raise :class:`StickRefused` otherwise."""
    size = blockio.size_of(fd)
    if offset is not None and offset >= size:
        raise StickRefused(
            f"{path}@@{offset}: the offset is beyond the end of the {'device' if block else 'image'} ({size} bytes)",
            reason="stick-bad-offset",
            hint="give the byte offset of the FAT partition inside the image (sector x 512)",
        )
    geo, part = find_fat(fd, path, offset=offset, partition=partition)
    problems = layout_problems(geo)
    if problems:
        raise StickRefused(
            f"{path}: a FAT layout panostage does not write: {'; '.join(problems)}",
            reason="stick-unsupported-layout",
            details={"problems": problems},
            hint="copy off what you need and reformat it: `panostage stick prepare DEVICE` (FAT32, 1 GB or more)",
        )
    if geo.offset + geo.size_bytes > size:
        raise StickRefused(
            f"{path}: the FAT filesystem claims {geo.size_bytes} bytes at offset {geo.offset}, "
            f"but the {'device' if block else 'image'} holds only {size}",
            reason="stick-truncated",
            hint="the image is truncated or the partition table is wrong",
        )
    return geo, part


def open_held(path: Path, block: bool, st: os.stat_result) -> tuple[int, bool]:
    """Open the image/device for the target's lifetime: (fd, writable).  Block devices with O_EXCL.

    Not allowed to write (EROFS, EACCES, EPERM): held read-only, and :func:`write_refusal` says why when a
    write is asked for.  Not allowed to read either: refused, naming the user and the file's owner and mode.
    """
    flags = os.O_CLOEXEC | (os.O_EXCL if block else 0)
    writable = bool(st.st_mode & 0o222) or block
    fd = None
    want: Access = "read"
    if writable:
        try:
            fd = os.open(path, os.O_RDWR | flags)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                refuse_busy(path, exc, block=block)
            writable = False
            want = "read" if exc.errno == errno.EROFS else "read and write"
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY | flags)
        except OSError as exc:
            refuse_busy(path, exc, block=block, want=want)
    try:
        if block:
            if blockio.block_readonly(fd):
                writable = False
        else:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if writable else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StickRefused(f"{path} is in use by another process", reason="stick-busy") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd, writable


def write_refusal(path: Path, fd: int, *, block: bool) -> StickRefused:
    """Why the held image or device ``fd`` is not writable: a read-only medium, or this user's permissions."""
    hint = "flip the write-protect switch or make the image writable"
    if block and blockio.block_readonly(fd):
        return StickRefused(
            f"{path} is read-only: the device is write-protected",
            reason="stick-read-only",
            hint="flip the stick's write-protect switch (or `blockdev --setrw`), or use another stick",
        )
    if not block:
        st = os.fstat(fd)
        if os.fstatvfs(fd).f_flag & os.ST_RDONLY:
            return StickRefused(
                f"{path} is on a read-only filesystem",
                reason="stick-read-only",
                hint="copy the image to a writable filesystem, or remount it read-write",
            )
        if not st.st_mode & 0o222:
            return StickRefused(
                f"{path} is read-only (mode {stat.S_IMODE(st.st_mode):04o}: nobody may write it)",
                reason="stick-read-only",
                hint=f"make the image writable: `chmod u+w {path}`",
            )
    if not os.access(path, os.W_OK, effective_ids=True):
        return permission_denied(path, want="write", block=block)
    return StickRefused(f"{path} is read-only", reason="stick-read-only", hint=hint)


def refuse_busy(
    path: Path,
    exc: OSError,
    *,
    hint: str = "unmount it, or pass the mount point instead",
    block: bool = True,
    want: Access = "read and write",
) -> NoReturn:
    """Raise what a failed exclusive open of ``path`` means: ``stick-busy`` (with ``hint``) for EBUSY,
    ``stick-permission-denied`` for EACCES/EPERM (this user may not ``want`` it), else I/O."""
    if exc.errno == errno.EBUSY:
        raise StickRefused(
            f"{path} is busy: mounted (perhaps in another mount namespace) or claimed by another program",
            reason="stick-busy",
            hint=hint,
        ) from exc
    if exc.errno in (errno.EACCES, errno.EPERM):
        raise permission_denied(path, want=want, block=block, code=exc.errno) from exc
    raise StickIOError.from_os("open", f"opening {path}", exc) from exc


def find_fat(fd: int, path: Path, *, offset: int | None, partition: int | None) -> tuple[Geometry, Partition | None]:
    """Locate the FAT filesystem: at ``offset``, in MBR ``partition``, at 0, or in the only FAT partition."""
    head = os.pread(fd, HEAD_BYTES, 0)
    if offset is not None:
        try:
            return parse_boot_sector(os.pread(fd, 512, offset), offset), None
        except NotFat as exc:
            found = identify(os.pread(fd, HEAD_BYTES, offset))
            raise StickRefused(
                f"{path} at offset {offset} holds {found}, not FAT",
                reason="stick-not-fat",
                details={"found": found, "offset": offset},
            ) from exc
    if partition is None:
        try:
            return parse_boot_sector(head[:512], 0), None
        except NotFat:
            pass
    parts = mbr_partitions(head[:512])
    if not parts:
        found = identify(head)
        raise StickRefused(
            f"{path} holds {found}, not a FAT filesystem",
            reason="stick-not-fat",
            hint="the appliance reads FAT32: format the stick as FAT32",
            details={"found": found},
        )
    if any(p.type == 0xEE for p in parts):
        raise StickRefused(
            f"{path} has a GPT partition table",
            reason="stick-unsupported-layout",
            hint="pass the partition's device (/dev/sdX1) or IMAGE@@BYTE_OFFSET",
        )
    if partition is not None:
        chosen = [p for p in parts if p.index == partition]
    else:
        chosen = [p for p in parts if p.type in FAT_PARTITION_TYPES] or parts
    if len(chosen) != 1:
        listing = ", ".join(f"{p.index}: type 0x{p.type:02x} at {p.start}" for p in parts)
        raise StickRefused(
            f"{path}: cannot tell which partition to use ({listing})",
            reason="stick-unsupported-layout",
            hint="name one: IMAGE@@BYTE_OFFSET, or the partition's device",
        )
    part = chosen[0]
    try:
        geo = parse_boot_sector(os.pread(fd, 512, part.start), part.start)
    except NotFat as exc:
        found = identify(os.pread(fd, HEAD_BYTES, part.start))
        raise StickRefused(
            f"{path}: partition {part.index} holds {found}, not FAT",
            reason="stick-not-fat",
            details={"found": found, "partition": part.index},
        ) from exc
    if geo.size_bytes > part.size:
        raise StickRefused(
            f"{path}: the filesystem in partition {part.index} is larger than the partition", reason="stick-truncated"
        )
    return geo, part
