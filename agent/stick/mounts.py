"""The mount table (through psutil), seen from the stick's side."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import psutil

#: Mount types that are FAT.  ``fuseblk`` is any FUSE block filesystem (ntfs-3g too):
#: it counts only when its device parses as FAT.
FAT_FSTYPES = frozenset({"vfat", "msdos", "fat", "umsdos", "fuse.fusefat", "fusefat"})


@dataclass(frozen=True)
class Mount:
    device: str
    mountpoint: Path
    fstype: str
    options: frozenset[str]

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


def mounts() -> list[Mount]:
    """Every mount, in mount order (later ones hide earlier ones on the same path)."""
    return [
        Mount(p.device, Path(p.mountpoint), p.fstype, frozenset(p.opts.split(",")))
        for p in psutil.disk_partitions(all=True)
    ]


def mount_of(path: Path) -> Mount | None:
    """The mount that holds ``path`` (longest mount point above it on the same st_dev)."""
    real = Path(os.path.realpath(path))
    try:
        dev = os.stat(real).st_dev
    except OSError:
        return None
    best: Mount | None = None
    for mount in mounts():
        mp = mount.mountpoint
        if real != mp and mp not in real.parents:
            continue
        try:
            if os.stat(mp).st_dev != dev:
                continue
        except OSError:
            continue
        if best is None or len(mp.parts) >= len(best.mountpoint.parts):
            best = mount
    return best


def device_rdev(device: str) -> int | None:
    """st_rdev of a block device path (symlinks resolved), or None."""
    if not device.startswith("/"):
        return None
    try:
        st = os.stat(os.path.realpath(device))
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def _sysfs(rdev: int) -> str | None:
    path = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    return os.path.realpath(path) if os.path.exists(path) else None


def mounts_of_device(rdev: int) -> list[Mount]:
    """Mounts of the device ``rdev``, or of one of its partitions."""
    own = _sysfs(rdev)
    found = []
    for mount in mounts():
        other = device_rdev(mount.device)
        if other is None:
            continue
        if other == rdev:
            found.append(mount)
            continue
        other_sys = _sysfs(other)
        if own and other_sys and other_sys.startswith(own + "/"):
            found.append(mount)
    return found
