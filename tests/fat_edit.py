"""Byte edits of a FAT image, as a hostile or damaged stick would carry them (tests only).

Positions come from the boot sector (mkfs.fat made the image; the reader's geometry has been
checked against mtools in tests/stick/test_geometry_agreement.py).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from agent.stick.fatfs import DirEntry, FatReader
from agent.stick.fatgeo import Geometry, parse_boot_sector


class FatImage:
    """An image file opened for byte edits."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            self.geo: Geometry = parse_boot_sector(handle.read(512))

    def _reader(self, handle) -> FatReader:
        return FatReader(handle.fileno(), self.geo)

    def entry(self, rel: str) -> DirEntry:
        with open(self.path, "rb") as handle:
            found = self._reader(handle).lookup(rel)
        assert found is not None, f"{rel} is not on {self.path}"
        return found

    def chain(self, rel: str) -> list[int]:
        with open(self.path, "rb") as handle:
            reader = self._reader(handle)
            return reader.chain(reader.lookup(rel).first_cluster)

    def poke(self, offset: int, data: bytes) -> None:
        with open(self.path, "r+b") as handle:
            handle.seek(offset)
            handle.write(data)

    def set_first_cluster(self, rel: str, cluster: int) -> None:
        slot = self.entry(rel).slots[-1]
        self.poke(slot + 26, struct.pack("<H", cluster & 0xFFFF))
        if self.geo.fat_bits == 32:
            self.poke(slot + 20, struct.pack("<H", cluster >> 16))

    def set_size(self, rel: str, size: int) -> None:
        self.poke(self.entry(rel).slots[-1] + 28, struct.pack("<I", size))

    def set_fat(self, cluster: int, value: int, copies: tuple[int, ...] | None = None) -> None:
        """FAT[cluster] = value in the given copies (default: all)."""
        geo = self.geo
        for index in copies if copies is not None else range(geo.num_fats):
            base = geo.fat_offset(index)
            if geo.fat_bits == 32:
                self.poke(base + cluster * 4, struct.pack("<I", value))
            elif geo.fat_bits == 16:
                self.poke(base + cluster * 2, struct.pack("<H", value))
            else:
                pos = base + cluster + cluster // 2
                with open(self.path, "r+b") as handle:
                    handle.seek(pos)
                    old = int.from_bytes(handle.read(2), "little")
                    new = (old & 0x000F) | (value << 4) if cluster & 1 else (old & 0xF000) | value
                    handle.seek(pos)
                    handle.write(new.to_bytes(2, "little"))

    def set_bpb(self, offset: int, fmt: str, value: int) -> None:
        self.poke(offset, struct.pack(fmt, value))

    def set_dirty(self) -> None:
        """The boot sector's dirty flag, as Linux leaves it on a stick pulled while mounted."""
        self.poke(65 if self.geo.fat_bits == 32 else 37, b"\x01")


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
