"""Stick images for the VM tier, made on the host with mkfs.fat: every layout the stage path accepts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tests.fat_kit import make_image, make_mbr_image, run

#: (FAT bits, sector size) -> file-system size in MiB: enough clusters for the FAT type with one sector each.
FS_MIB = {(12, 512): 4, (12, 4096): 8, (16, 512): 32, (16, 4096): 64, (32, 512): 64, (32, 4096): 300}
MBR_TYPE = {12: 0x01, 16: 0x06, 32: 0x0C}
START_BYTES = 1 << 20  # partitions start at 1 MiB, as partitioning tools put them


@dataclass(frozen=True)
class Layout:
    bits: int
    sector: int
    partitioned: bool

    @property
    def name(self) -> str:
        return f"fat{self.bits}-{self.sector}-{'mbr' if self.partitioned else 'superfloppy'}"


ALL_LAYOUTS = [Layout(b, s, p) for b in (12, 16, 32) for s in (512, 4096) for p in (False, True)]


def fat_stick(path: Path, layout: Layout, volid: str) -> Path:
    """A FAT stick image in ``layout`` (whole device, or one MBR partition at 1 MiB)."""
    size_mib = FS_MIB[(layout.bits, layout.sector)]
    options = (
        ("-S", str(layout.sector))
        + (("-s", "1") if layout.bits > 12 else ())
        + (("-r", "512") if layout.bits < 32 else ())
    )
    if not layout.partitioned:
        return make_image(path, layout.bits, size=f"{size_mib}M", volid=volid, extra=options)
    start = START_BYTES // layout.sector
    count = size_mib * (1 << 20) // layout.sector
    make_mbr_image(path, [(MBR_TYPE[layout.bits], start, count)], size_mb=size_mib + 1)
    run(
        "mkfs.fat", "-F", str(layout.bits), *options, "-n", "PANOSTICK", "-i", volid,
        f"--offset={start}", "-h", str(start), str(path), str(count * layout.sector // 1024),
    )  # fmt: skip
    return path


def ext4_stick(path: Path) -> Path:
    """A stick with one Linux partition carrying ext4 (what a technician's own data stick often is)."""
    make_mbr_image(path, [(0x83, START_BYTES // 512, 15 << 11)], size_mb=16)
    run("mkfs.ext4", "-q", "-F", "-E", f"offset={START_BYTES}", str(path), "15M")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
