"""Where a FAT filesystem keeps everything, read once from its boot sector, and which layouts we write.

:func:`parse_boot_sector` turns a boot sector into a :class:`Geometry`, the one reading of the
layout that the native reader, the undo journal, the census and every mtools call
(``-i drive@@offset``) share.  :func:`layout_problems` refuses the layouts on which two
readers could disagree about where things are (mtools, the Linux vfat driver that the
appliance uses, dosfstools' ``fsck.fat``) - so that nobody ever writes or zeroes a byte
another reader takes for something else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SECTOR_SIZES = (512, 1024, 2048, 4096)
#: MBR partition types that carry FAT.
FAT_PARTITION_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E, 0x11, 0x14, 0x16, 0x1B, 0x1C, 0x1E}
#: The largest cluster every FAT reader handles (Windows' and the FAT specification's limit).
MAX_CLUSTER_BYTES = 64 * 1024
#: FAT16 can address at most this many clusters (Linux: MAX_FAT16); more is refused by the kernel.
MAX_FAT16_CLUSTERS = 0xFFF4
MIN_FAT32_CLUSTERS = 65525
#: The most clusters we check and journal: the whole FAT is held in memory (4 bytes a cluster, 16 MiB here;
#: a 128 GiB stick with 32 KiB clusters), with the rest, under 100 MiB.
MAX_CLUSTERS = 4 * 1024 * 1024


class NotFat(Exception):
    """What was found instead of a FAT filesystem (``found`` is human readable)."""

    def __init__(self, found: str) -> None:
        super().__init__(found)
        self.found = found


@dataclass(frozen=True)
class Geometry:
    """Where everything is, in bytes from the start of the image or device."""

    offset: int
    bytes_per_sector: int
    sectors_per_cluster: int
    reserved_sectors: int
    num_fats: int
    root_entries: int
    total_sectors: int
    fat_sectors: int
    fat_bits: int
    cluster_count: int
    root_cluster: int  # FAT32 only, else 0
    fsinfo_sector: int  # FAT32 only, else 0
    active_fat: int  # index of the FAT in use (FAT32 may disable mirroring)
    mirrored: bool
    serial: int | None
    boot_label: str | None
    media: int
    hidden_sectors: int = 0
    #: The boot sector's "volume dirty" flag (set while mounted by Linux, cleared at unmount).
    dirty: bool = False
    backup_boot: int = 0  # FAT32: the sector holding the boot sector's copy

    @property
    def cluster_size(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    @property
    def size_bytes(self) -> int:
        return self.total_sectors * self.bytes_per_sector

    @property
    def fat_bytes(self) -> int:
        return self.fat_sectors * self.bytes_per_sector

    def fat_offset(self, index: int) -> int:
        return self.offset + (self.reserved_sectors + index * self.fat_sectors) * self.bytes_per_sector

    @property
    def root_dir_offset(self) -> int:
        """FAT12/16: the fixed root directory region."""
        return self.fat_offset(self.num_fats)

    @property
    def root_dir_bytes(self) -> int:
        return self.root_entries * 32

    @property
    def data_offset(self) -> int:
        root_sectors = -(-self.root_dir_bytes // self.bytes_per_sector)
        return self.root_dir_offset + root_sectors * self.bytes_per_sector

    def cluster_offset(self, cluster: int) -> int:
        return self.data_offset + (cluster - 2) * self.cluster_size

    @property
    def eoc_min(self) -> int:
        return {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[self.fat_bits]

    @property
    def bad(self) -> int:
        return {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}[self.fat_bits]

    @property
    def uuid(self) -> str | None:
        return None if self.serial is None else f"{self.serial >> 16:04X}-{self.serial & 0xFFFF:04X}"


def parse_boot_sector(sector: bytes, offset: int = 0) -> Geometry:
    """Parse a FAT boot sector; raise :class:`NotFat` when it is not one."""
    if len(sector) < 512:
        raise NotFat("too small to hold a filesystem")
    if sector[0] not in (0xEB, 0xE9):
        raise NotFat("no FAT boot sector (no x86 jump at byte 0)")
    bps, spc, reserved, nfats, root_entries, tot16, media, fatsz16 = struct.unpack_from("<HBHBHHBH", sector, 11)
    hidden, tot32 = struct.unpack_from("<II", sector, 28)
    fatsz32, ext_flags, _ver, root_cluster, fsinfo = struct.unpack_from("<IHHIH", sector, 36)
    if bps not in SECTOR_SIZES or spc == 0 or spc & (spc - 1) or reserved == 0 or nfats not in (1, 2, 3, 4):
        raise NotFat("no FAT boot sector (implausible BIOS parameter block)")
    if media not in (0xF0,) and media < 0xF8:
        raise NotFat("no FAT boot sector (bad media byte)")
    total = tot16 or tot32
    fatsz = fatsz16 or fatsz32
    if total == 0 or fatsz == 0:
        raise NotFat("no FAT boot sector (zero size)")
    root_sectors = -(-(root_entries * 32) // bps)
    data_sectors = total - (reserved + nfats * fatsz + root_sectors)
    if data_sectors <= 0:
        raise NotFat("no FAT boot sector (inconsistent sizes)")
    clusters = data_sectors // spc
    # like Linux, mtools and dosfstools: FAT32 is told by its BPB (no 16-bit FAT size), FAT12 vs
    # FAT16 by the cluster count (mkfs.fat makes FAT32 below the spec's 65525 clusters on request)
    bits = 32 if fatsz16 == 0 else 12 if clusters < 4085 else 16
    if bits == 32 and (root_entries != 0 or root_cluster < 2):
        raise NotFat("no FAT boot sector (FAT32 fields inconsistent)")
    if bits != 32 and root_entries == 0:
        raise NotFat("no FAT boot sector (FAT12/16 without a root directory)")
    if fatsz * bps * 8 < (clusters + 2) * bits:
        raise NotFat("no FAT boot sector (FAT too small for the clusters)")
    ext = 64 if bits == 32 else 36  # offset of BS_DrvNum
    serial = label = None
    if sector[ext + 2] == 0x29:
        (serial,) = struct.unpack_from("<I", sector, ext + 3)
        label = sector[ext + 7 : ext + 18].decode("cp850", "replace").rstrip(" \x00") or None
        if label == "NO NAME":
            label = None
    mirrored = not (bits == 32 and ext_flags & 0x80)
    dirty = bool(sector[ext + 1] & 0x01) if sector[ext + 2] in (0x28, 0x29) else False
    return Geometry(
        offset=offset,
        bytes_per_sector=bps,
        sectors_per_cluster=spc,
        reserved_sectors=reserved,
        num_fats=nfats,
        root_entries=root_entries,
        total_sectors=total,
        fat_sectors=fatsz,
        fat_bits=bits,
        cluster_count=clusters,
        root_cluster=root_cluster if bits == 32 else 0,
        fsinfo_sector=fsinfo if bits == 32 else 0,
        active_fat=0 if mirrored else (ext_flags & 0x0F),
        mirrored=mirrored,
        serial=serial,
        boot_label=label,
        media=media,
        hidden_sectors=hidden,
        dirty=dirty,
        backup_boot=struct.unpack_from("<H", sector, 50)[0] if bits == 32 else 0,
    )


def identify(head: bytes) -> str:
    """Name what a non-FAT volume holds, for error messages (``head``: its first 72 KiB or more)."""

    def at(off: int, magic: bytes) -> bool:
        return head[off : off + len(magic)] == magic

    if len(head) >= 1024 + 58 and at(1024 + 56, b"\x53\xef"):
        (features,) = struct.unpack_from("<I", head, 1024 + 0x60)
        (compat,) = struct.unpack_from("<I", head, 1024 + 0x5C)
        kind = "ext4" if features & 0x40 or features & 0x200 else "ext3" if compat & 0x4 else "ext2"
        return f"an {kind} filesystem"
    for off, magic, what in (
        (3, b"NTFS    ", "an NTFS filesystem"),
        (3, b"EXFAT   ", "an exFAT filesystem"),
        (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
        (0, b"XFSB", "an XFS filesystem"),
        (0, b"hsqs", "a squashfs image"),
        (0x10040, b"_BHRfS_M", "a btrfs filesystem"),
        (0x8001, b"CD001", "an ISO 9660 image"),
        (512, b"EFI PART", "a GPT partition table"),
        (0, b"PK\x03\x04", "a ZIP file, not a filesystem"),
    ):
        if at(off, magic):
            return what
    if len(head) >= 512 and at(510, b"\x55\xaa") and head[0] not in (0xEB, 0xE9):
        return "an MBR partition table"
    if not head.strip(b"\x00"):
        return "only zeros (no filesystem)"
    return "unrecognised data (no FAT boot sector)"


@dataclass(frozen=True)
class Partition:
    index: int  # 1-based, as in /dev/sdX<index>
    type: int
    start: int  # bytes
    size: int  # bytes


def mbr_partitions(sector: bytes) -> list[Partition]:
    """The primary partitions of an MBR (empty when the sector is not one)."""
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return []
    parts = []
    for i in range(4):
        status, ptype, lba, count = struct.unpack_from("<B3xB3xII", sector, 446 + 16 * i)
        if ptype and count and status in (0x00, 0x80):
            parts.append(Partition(i + 1, ptype, lba * 512, count * 512))
    return parts


def layout_problems(geo: Geometry) -> list[str]:
    """Why a parsed FAT layout is not one we write (empty: accepted).

    Each rule is one that the Linux vfat driver, mtools or ``fsck.fat`` enforces, or one on which
    they would compute different positions; see the README's "Stick layouts" for the list.
    """
    problems = []
    fat = f"FAT{geo.fat_bits}"
    if geo.cluster_size > MAX_CLUSTER_BYTES:
        problems.append(
            f"clusters of {geo.cluster_size // 1024} KiB (at most {MAX_CLUSTER_BYTES // 1024} KiB are "
            "read alike by every FAT reader)"
        )
    if geo.num_fats not in (1, 2):
        problems.append(f"{geo.num_fats} FAT copies (fsck.fat handles one or two)")
    if geo.fat_bits != 32:
        per_sector = geo.bytes_per_sector // 32
        if geo.root_entries % per_sector:
            problems.append(
                f"a root directory of {geo.root_entries} entries, not a whole number of "
                f"{geo.bytes_per_sector}-byte sectors (Linux refuses it; mtools and fsck.fat place the "
                "data area differently)"
            )
    if geo.fat_bits == 16 and geo.cluster_count > MAX_FAT16_CLUSTERS:
        problems.append(f"FAT16 with {geo.cluster_count} clusters (at most {MAX_FAT16_CLUSTERS})")
    if geo.cluster_count > MAX_CLUSTERS:
        problems.append(
            f"{geo.cluster_count} clusters (at most {MAX_CLUSTERS}: panostage holds the whole FAT in memory "
            "to check and journal it; format with larger clusters, or mount it and pass the mount point)"
        )
    if geo.fat_bits == 32:
        if geo.cluster_count < MIN_FAT32_CLUSTERS:
            problems.append(
                f"FAT32 with only {geo.cluster_count} clusters (at least {MIN_FAT32_CLUSTERS}): Linux reads "
                "it as FAT32, mtools as FAT16"
            )
        if not 2 <= geo.root_cluster < geo.cluster_count + 2:
            problems.append(f"a root directory at cluster {geo.root_cluster}, outside the volume")
        if not geo.mirrored:
            problems.append("FAT mirroring switched off (only one FAT copy is kept current)")
        if not 1 <= geo.fsinfo_sector < geo.reserved_sectors or geo.fsinfo_sector == geo.backup_boot:
            problems.append(
                f"its FSInfo sector at {geo.fsinfo_sector}, not a sector of the reserved area of its own "
                "(mtools writes FSInfo wherever this points: into the data or over the backup boot sector)"
            )
    return [f"{fat}: {p}" if not p.startswith(fat) else p for p in problems]
