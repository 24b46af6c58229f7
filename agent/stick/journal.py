"""An in-memory undo journal for FAT metadata around mtools writes.

mtools writes a new file in several ``write`` calls - directory sector and data
first, then each FAT copy, then FAT32's FSInfo - and stops at the first error.
A failure in between leaves a directory entry pointing into free clusters, or a
lost chain, or two FATs that disagree: ``fsck.fat`` complains.

Before a mutating mtools call we copy, in memory, every sector such a call can
change: the reserved region (boot sector, FSInfo, backup), the active FAT, and
the directories on the path being written.  On failure we write back exactly
the sectors that differ (the active FAT's copy goes to every mirrored FAT), so
the filesystem returns bit for bit to where it was; clusters the failed call
filled become free again.  Data clusters of existing files are never touched by
the operations we journal (new files go to free clusters), so the old content
behind restored metadata is intact.

The snapshot is also the exact free-cluster count used by the space check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from agent.stick.fatfs import FatReader


@dataclass
class Snapshot:
    reader: FatReader
    regions: list[tuple[int, bytes]] = field(default_factory=list)
    fat: bytes = b""

    @classmethod
    def take(cls, reader: FatReader, dir_clusters: list[int | None]) -> Snapshot:
        geo = reader.geo
        snap = cls(reader)
        snap.regions.append((geo.offset, reader.pread(geo.offset, geo.reserved_sectors * geo.bytes_per_sector)))
        snap.fat = reader.load_fat(refresh=True)
        seen: set[int] = set()
        for cluster in dir_clusters:
            for start, length in reader.dir_extents(cluster):
                if start not in seen:
                    seen.add(start)
                    snap.regions.append((start, reader.pread(start, length)))
        return snap

    def restore(self) -> int:
        """Write back every sector that changed; return how many bytes were written."""
        geo = self.reader.geo
        targets = [(start, data) for start, data in self.regions]
        copies = range(geo.num_fats) if geo.mirrored else [geo.active_fat]
        targets += [(geo.fat_offset(i), self.fat) for i in copies]
        written = 0
        for start, data in targets:
            written += _write_differences(self.reader, start, data, geo.bytes_per_sector)
        self.reader.forget()
        return written


def _write_differences(reader: FatReader, start: int, wanted: bytes, sector: int) -> int:
    current = reader.pread(start, len(wanted))
    if current == wanted:
        return 0
    written = 0
    block = 64 * sector
    for base in range(0, len(wanted), block):
        if current[base : base + block] == wanted[base : base + block]:
            continue
        for pos in range(base, min(base + block, len(wanted)), sector):
            if current[pos : pos + sector] != wanted[pos : pos + sector]:
                written += os.pwrite(reader.fd, wanted[pos : pos + sector], start + pos)
    return written
