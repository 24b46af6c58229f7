"""A small read-only FAT12/16/32 reader: boot sector, FAT chains, directories.

mtools does every write; this module answers the questions asked before and
after a write without starting a process: what is where (listing, state of a
name, free clusters), which clusters a file occupies (for wiping), and which
byte ranges hold the filesystem's metadata (for the undo journal).  It reads
through a file descriptor with ``os.pread`` at a byte ``offset`` (a partition).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from agent.stick import names
from agent.stick.blockio import pread_aligned
from agent.stick.errors import StickFileTooLarge, StickNameError
from agent.stick.fatgeo import Geometry
from agent.stick.model import READ_LIMIT

ATTR_READONLY, ATTR_HIDDEN, ATTR_SYSTEM, ATTR_VOLUME, ATTR_DIR, ATTR_ARCHIVE = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ATTR_LFN = 0x0F
_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))


class InvalidPath(StickNameError, ValueError):
    """A path that leaves the stick (a leading '/' means the stick's root; '..' is refused)."""


class FatCorrupt(Exception):
    """The filesystem contradicts itself (a broken chain, a loop, a directory pointing back at the root)."""


@dataclass(frozen=True)
class DirEntry:
    """One file or directory as stored (name from the long-name entries when present)."""

    name: str
    short_name: str
    attr: int
    first_cluster: int
    size: int
    #: Byte offsets of the 32-byte slots (long-name slots first, then the short entry).
    slots: tuple[int, ...]

    @property
    def is_dir(self) -> bool:
        return bool(self.attr & ATTR_DIR)

    @property
    def readonly(self) -> bool:
        return bool(self.attr & ATTR_READONLY)

    def matches(self, name: str) -> bool:
        """Would a FAT reader find this entry under ``name`` (long or 8.3 name, FAT-equal)?"""
        return names.same(self.name, name) or names.same(self.short_name, name)


def _lfn_checksum(short: bytes) -> int:
    total = 0
    for byte in short:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _short_name(raw: bytes, case_flags: int) -> str:
    base = bytearray(raw[:8])
    if base[0] == 0x05:
        base[0] = 0xE5
    # a NUL ends the name, as mtools reads it
    stem = bytes(base).split(b"\x00", 1)[0].decode("cp850", "replace").rstrip()
    ext = raw[8:11].split(b"\x00", 1)[0].decode("cp850", "replace").rstrip()
    if case_flags & 0x08:
        stem = stem.lower()
    if case_flags & 0x10:
        ext = ext.lower()
    return f"{stem}.{ext}" if ext else stem


class FatReader:
    """Read access to one FAT filesystem through ``fd`` (not owned)."""

    def __init__(self, fd: int, geometry: Geometry, *, direct: bool = False) -> None:
        self.fd = fd
        self.geo = geometry
        self.direct = direct  # fd was opened with O_DIRECT: read aligned windows
        self._fat: bytes | None = None
        self._fat_sectors: dict[int, bytes] = {}

    # ------------------------------------------------------------ raw access
    def pread(self, offset: int, length: int) -> bytes:
        if self.direct:
            data = pread_aligned(self.fd, offset, length)
            if len(data) != length:
                raise FatCorrupt(f"unexpected end of the image at byte {offset + len(data)}")
            return data
        chunks = []
        while length > 0:
            chunk = os.pread(self.fd, length, offset)
            if not chunk:
                raise FatCorrupt(f"unexpected end of the image at byte {offset}")
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def load_fat(self, refresh: bool = False) -> bytes:
        """The whole active FAT, read once (``refresh`` re-reads it)."""
        if self._fat is None or refresh:
            self._fat = self.pread(self.geo.fat_offset(self.geo.active_fat), self.geo.fat_bytes)
        return self._fat

    def forget(self) -> None:
        """Drop what was read (someone else - mtools - wrote to the filesystem)."""
        self._fat = None
        self._fat_sectors.clear()

    def _fat_bytes(self, pos: int, length: int) -> bytes:
        """``length`` bytes of the active FAT at ``pos``, reading single sectors when the FAT is not loaded."""
        if self._fat is not None:
            return self._fat[pos : pos + length]
        bps = self.geo.bytes_per_sector
        out = b""
        for sector in range(pos // bps, (pos + length - 1) // bps + 1):
            data = self._fat_sectors.get(sector)
            if data is None:
                data = self.pread(self.geo.fat_offset(self.geo.active_fat) + sector * bps, bps)
                self._fat_sectors[sector] = data
            out += data
        start = pos % bps
        return out[start : start + length]

    # ------------------------------------------------------------ the FAT
    def entry(self, cluster: int) -> int:
        bits = self.geo.fat_bits
        value: int
        if bits == 32:
            (value,) = struct.unpack("<I", self._fat_bytes(cluster * 4, 4))
            return value & 0x0FFFFFFF
        if bits == 16:
            (value,) = struct.unpack("<H", self._fat_bytes(cluster * 2, 2))
            return value
        (value,) = struct.unpack("<H", self._fat_bytes(cluster + cluster // 2, 2))
        return value >> 4 if cluster & 1 else value & 0xFFF

    def chain(self, start: int) -> list[int]:
        """The clusters of a chain starting at ``start`` (empty for cluster 0)."""
        if start == 0:
            return []
        clusters: list[int] = []
        cluster, limit = start, self.geo.cluster_count + 2
        while True:
            if not 2 <= cluster < limit:
                raise FatCorrupt(f"chain from cluster {start} leaves the volume at {cluster}")
            clusters.append(cluster)
            if len(clusters) > self.geo.cluster_count:
                raise FatCorrupt(f"chain from cluster {start} loops")
            nxt = self.entry(cluster)
            if nxt >= self.geo.eoc_min:
                return clusters
            if nxt in (0, 1) or nxt == self.geo.bad:
                raise FatCorrupt(f"chain from cluster {start} hits a free or bad cluster after {cluster}")
            cluster = nxt

    def free_clusters(self, fat: bytes | None = None) -> int:
        """Count the free clusters by scanning the active FAT (or ``fat``, a copy of it)."""
        fat = self.load_fat() if fat is None else fat
        count, bits = self.geo.cluster_count, self.geo.fat_bits
        if bits == 12:
            return sum(
                1
                for c in range(2, count + 2)
                if not (int.from_bytes(fat[c + c // 2 : c + c // 2 + 2], "little") >> (4 * (c & 1))) & 0xFFF
            )
        width = bits // 8
        end = (count + 2) * width
        # an entry is free when all its bytes are zero (FAT32: its low 28 bits); OR the byte
        # lanes together as big integers and count the zero bytes - exact and fast in C
        lanes = [fat[2 * width + k : end : width] for k in range(width)]
        if bits == 32:
            lanes[3] = lanes[3].translate(_LOW_NIBBLE)
        acc = 0
        for lane in lanes:
            acc |= int.from_bytes(lane, "little")
        return acc.to_bytes(count, "little").count(0)

    def fsinfo_free(self) -> int | None:
        """FAT32's recorded free-cluster count when it is present and plausible."""
        if self.geo.fat_bits != 32 or not self.geo.fsinfo_sector:
            return None
        info = self.pread(self.geo.offset + self.geo.fsinfo_sector * self.geo.bytes_per_sector, 512)
        free: int
        (lead,) = struct.unpack_from("<I", info, 0)
        struct_sig, free, _next = struct.unpack_from("<III", info, 484)
        if lead != 0x41615252 or struct_sig != 0x61417272 or free > self.geo.cluster_count:
            return None
        return free

    # ------------------------------------------------------------ directories
    def dir_extents(self, cluster: int | None) -> list[tuple[int, int]]:
        """Byte ranges (offset, length) of a directory; ``None`` is the root."""
        geo = self.geo
        if cluster is None:
            if geo.fat_bits != 32:
                return [(geo.root_dir_offset, geo.root_dir_bytes)]
            cluster = geo.root_cluster
        return [(geo.cluster_offset(c), geo.cluster_size) for c in self.chain(cluster)]

    def dir_entries(self, cluster: int | None = None) -> list[DirEntry]:
        """The live entries of a directory (not '.', '..', deleted ones or the volume label)."""
        return [e for e in self._walk(cluster) if not e.attr & ATTR_VOLUME and e.short_name not in (".", "..")]

    def volume_label(self) -> str | None:
        for entry in self._walk(None):
            if entry.attr & ATTR_VOLUME and not entry.attr & ATTR_DIR:
                return entry.short_name.replace(".", "") if len(entry.short_name) <= 12 else entry.short_name
        return None

    def _walk(self, cluster: int | None) -> Iterator[DirEntry]:
        return self.entries_in(self.dir_extents(cluster))

    def entries_in(self, extents: Iterable[tuple[int, int]]) -> Iterator[DirEntry]:
        """Every entry stored in a directory's byte ranges (labels and dot entries included)."""
        lfn: dict[int, str] = {}
        lfn_sum = -1
        lfn_slots: list[int] = []
        for base, length in extents:
            data = self.pread(base, length)
            for pos in range(0, length - 31, 32):
                slot = data[pos : pos + 32]
                first = slot[0]
                if first == 0x00:
                    return
                if first == 0xE5:
                    lfn, lfn_slots = {}, []
                    continue
                attr = slot[11]
                if attr & 0x3F == ATTR_LFN:
                    order = first & 0x1F
                    if first & 0x40:
                        lfn, lfn_slots, lfn_sum = {}, [], slot[13]
                    text = slot[1:11] + slot[14:26] + slot[28:32]
                    lfn[order] = text.decode("utf-16-le", "replace")
                    lfn_slots.append(base + pos)
                    continue
                raw_short = slot[:11]
                short = _short_name(raw_short, slot[12])
                if attr & ATTR_VOLUME and not attr & ATTR_DIR:
                    short = raw_short.decode("cp850", "replace").rstrip()
                name = short
                if lfn and lfn_sum == _lfn_checksum(raw_short) and sorted(lfn) == list(range(1, len(lfn) + 1)):
                    long = "".join(lfn[i] for i in sorted(lfn))
                    name = long.split("\x00", 1)[0]
                (hi,) = struct.unpack_from("<H", slot, 20)
                lo, size = struct.unpack_from("<HI", slot, 26)
                first_cluster = (hi << 16 | lo) if self.geo.fat_bits == 32 else lo
                yield DirEntry(name, short, attr, first_cluster, size, tuple(lfn_slots) + (base + pos,))
                lfn, lfn_slots = {}, []

    def subdir_cluster(self, entry: DirEntry) -> int:
        """The first cluster of a subdirectory entry; one that points at the root (or nowhere) is damage."""
        first = entry.first_cluster
        if first == 0 or (self.geo.fat_bits == 32 and first == self.geo.root_cluster):
            raise FatCorrupt(f"directory {entry.name!r} points back at the root directory")
        if not 2 <= first < self.geo.cluster_count + 2:
            raise FatCorrupt(f"directory {entry.name!r} starts at cluster {first}, outside the volume")
        return first

    def find(self, cluster: int | None, name: str, entries: list[DirEntry] | None = None) -> DirEntry | None:
        """The entry of directory ``cluster`` (its ``entries``, when already read) found under ``name``: the exact
        name first, else a FAT-equal one."""
        found = [e for e in (self.dir_entries(cluster) if entries is None else entries) if e.matches(name)]
        return next((e for e in found if e.name == name), found[0] if found else None)

    def lookup(self, rel: str) -> DirEntry | None:
        """Find ``rel`` ("a/b.txt") as FAT does (exact name preferred); None when any part is missing."""
        cluster: int | None = None
        parts = split_rel(rel)
        entry: DirEntry | None = None
        for i, part in enumerate(parts):
            entry = self.find(cluster, part)
            if entry is None:
                return None
            if i < len(parts) - 1:
                if not entry.is_dir:
                    return None
                cluster = self.subdir_cluster(entry)
        return entry

    def dir_cluster(self, rel: str) -> int | None:
        """The first cluster of directory ``rel`` ("" is the root, None)."""
        if not split_rel(rel, allow_empty=True):
            return None
        entry = self.lookup(rel)
        if entry is None or not entry.is_dir:
            raise FileNotFoundError(rel)
        return self.subdir_cluster(entry)

    def read_file(self, entry: DirEntry, *, limit: int = READ_LIMIT) -> bytes:
        """The file's bytes; one larger than ``limit`` is refused from its directory entry, unread."""
        if entry.size > limit:
            raise StickFileTooLarge(entry.name, entry.size, limit)
        clusters = self.chain(entry.first_cluster)
        if len(clusters) * self.geo.cluster_size < entry.size:
            raise FatCorrupt(f"{entry.name}: chain shorter than the file size")
        out = bytearray()
        for start, count in runs(clusters):
            out += self.pread(self.geo.cluster_offset(start), count * self.geo.cluster_size)
            if len(out) >= entry.size:
                break
        return bytes(out[: entry.size])


def runs(clusters: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs ``(first, count)`` of a cluster list (keeps order)."""
    out: list[tuple[int, int]] = []
    for cluster in clusters:
        if out and out[-1][0] + out[-1][1] == cluster:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((cluster, 1))
    return out


def split_rel(rel: str, *, allow_empty: bool = False) -> list[str]:
    """Split a relative stick path; refuse absolute paths, '..' and empty parts."""
    text = str(rel).replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or (not parts and not allow_empty):
        raise InvalidPath(f"not a path inside the stick: {rel!r}")
    return parts
