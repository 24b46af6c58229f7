"""Low-level I/O helpers: cache dropping, O_DIRECT reads, block device facts."""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

BLKROGET = 0x125E
BLKFLSBUF = 0x1261
BLKSSZGET = 0x1268
ALIGN = 4096


def drop_cache(fd: int, *, block: bool) -> None:
    """Make the next reads come from the medium: flush, then forget cached pages.

    ``fsync`` first (dirty pages cannot be dropped), ``POSIX_FADV_DONTNEED`` for
    the file or device, and for a block device ``BLKFLSBUF`` as well (needs
    CAP_SYS_ADMIN; skipped quietly without it).
    """
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if block:
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
        except PermissionError:
            pass


def size_of(fd: int) -> int:
    """Size in bytes of an open image file or block device."""
    return os.lseek(fd, 0, os.SEEK_END)


def block_readonly(fd: int) -> bool:
    """The kernel's read-only flag of a block device (write-protect switch, ``blockdev --setro``)."""
    buf = fcntl.ioctl(fd, BLKROGET, struct.pack("i", 0))
    flag: int = struct.unpack("i", buf)[0]
    return flag != 0


def read_direct(fd: int, size_hint: int) -> bytes:
    """Read a whole file opened with O_DIRECT (aligned buffer from an anonymous mmap)."""
    length = max(ALIGN, -(-(size_hint + 1) // ALIGN) * ALIGN)  # +1: notice a file that grew
    out = bytearray()
    offset = 0
    with mmap.mmap(-1, length) as buf:
        while True:
            count = os.preadv(fd, [buf], offset)
            if count <= 0:
                break
            out += buf[:count]
            offset += count
            if count < length:
                break
    return bytes(out)


def zero_range(fd: int, offset: int, length: int, *, chunk: int = 1 << 20) -> None:
    """Overwrite ``length`` bytes at ``offset`` with zeros (pwrite, no fsync)."""
    zeros = bytes(min(chunk, length))
    while length > 0:
        n = os.pwrite(fd, zeros[: min(chunk, length)], offset)
        offset += n
        length -= n


def pread_aligned(fd: int, offset: int, length: int) -> bytes:
    """``pread`` for an O_DIRECT descriptor: read the aligned window around the range, return the range."""
    start = offset - offset % ALIGN
    end = -(-(offset + length) // ALIGN) * ALIGN
    with mmap.mmap(-1, end - start) as buf:
        got = 0
        while start + got < end:
            view = memoryview(buf)[got:]
            try:
                count = os.preadv(fd, [view], start + got)
            finally:
                view.release()
            if count <= 0:
                break
            got += count
        return bytes(buf[offset - start : min(offset - start + length, got)])
