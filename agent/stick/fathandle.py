"""The held descriptor of one unmounted FAT filesystem: its geometry, what it is, and closing it.

:class:`FatHandle` is the state every part of :class:`agent.stick.fat.FatTarget` works on: the
descriptor (held, see :mod:`agent.stick.fatopen`), the geometry, the native reader and the mtools
runner made from them, and whether the filesystem changed since the census.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.stick import fatcheck
from agent.stick.errors import StickIOError
from agent.stick.fatfs import DirEntry, FatCorrupt, FatReader
from agent.stick.fatgeo import Geometry, Partition
from agent.stick.fatopen import write_refusal
from agent.stick.model import Entry, FsInfo, TargetKind
from agent.stick.mtools import Mtools, Wrap
from agent.stick.steps import Stopwatch


def entry_of(e: DirEntry) -> Entry:
    """A directory entry as the protocol's :class:`Entry` (a directory has no size)."""
    return Entry(e.name, "dir" if e.is_dir else "file", 0 if e.is_dir else e.size, e.readonly)


class FatHandle:
    """A FAT filesystem reached through an image file or a block device, never mounted."""

    def __init__(
        self,
        path: Path,
        fd: int,
        *,
        block: bool,
        writable: bool,
        geometry: Geometry,
        partition: Partition | None = None,
        wrap: Wrap | None = None,
        runtime_dir: Path | None = None,
        readback: str = "direct",
    ) -> None:
        if readback not in ("direct", "mtools"):
            raise ValueError(f"readback must be 'direct' or 'mtools', not {readback!r}")
        self.path = path
        self.readback = readback
        self.kind: TargetKind = "block" if block else "image"
        self.block = block
        self.writable = writable
        self.partition = partition
        self.runtime_dir = runtime_dir
        self.last_read_mode: str | None = None
        self._fd: int | None = fd
        self._dirty = False  # written without a flush yet (scrubbing)
        self._census: fatcheck.Census | None = None
        self._changed = True  # written since the census was taken (its free space is out of date)
        self._wrap = wrap
        self._rdev = os.fstat(fd).st_rdev if block else None
        self._set_geometry(geometry)

    def _set_geometry(self, geometry: Geometry) -> None:
        self._census = None
        self.geo = geometry
        self.reader = FatReader(self.fd, geometry)
        self.mtools = Mtools(self.fd, geometry.offset, wrap=self._wrap)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise StickIOError("open", f"{self.path}", detail="the target was closed")
        return self._fd

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, kind={self.kind!r}, offset={self.geo.offset})"

    # ------------------------------------------------------------ identity
    def _label(self) -> str | None:
        try:
            return self.reader.volume_label() or self.geo.boot_label
        except (OSError, FatCorrupt):
            return self.geo.boot_label

    def describe(self) -> dict[str, str | int]:
        data: dict[str, str | int] = {
            "kind": self.kind,
            "path": str(self.path),
            "fstype": "vfat",
            "fat_bits": self.geo.fat_bits,
            "size_bytes": self.geo.size_bytes,
        }
        if self.geo.offset:
            data["offset"] = self.geo.offset
        if self.partition:
            data["partition"] = self.partition.index
        if self.geo.uuid:
            data["fs_uuid"] = self.geo.uuid
        label = self._label()
        if label:
            data["label"] = label
        if self._rdev is not None:
            data["rdev"] = f"{os.major(self._rdev)}:{os.minor(self._rdev)}"
        return data

    def fs_info(self) -> FsInfo:
        sw = Stopwatch(f"reading the filesystem of {self.path}")
        with sw.step("fs_info"):
            self.reader.forget()
            free = self.reader.fsinfo_free()
            if free is None:
                free = self.reader.free_clusters()
                self.reader.forget()
            return FsInfo(
                fs_type="vfat",
                fat_bits=self.geo.fat_bits,
                label=self._label(),
                uuid=self.geo.uuid,
                size_bytes=self.geo.cluster_count * self.geo.cluster_size,
                free_bytes=free * self.geo.cluster_size,
                cluster_size=self.geo.cluster_size,
            )

    def require_writable(self) -> None:
        """Refuse a write: ``stick-read-only`` for a read-only medium, ``stick-permission-denied`` for this user."""
        if not self.writable:
            raise write_refusal(self.path, self.fd, block=self.block)

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._fd is not None:
            try:
                if self._dirty:
                    os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
