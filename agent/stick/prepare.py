"""``stick prepare``: format a whole block device as one FAT filesystem, ready to be enrolled.

Safety, in order: a block device and a whole disk (not a partition); mounted nowhere (itself or
a partition, any mount namespace we can see); removable unless forced; then held with ``O_EXCL``
(the kernel refuses mounts and other exclusive openers meanwhile) while the old signatures at
both ends are zeroed.  The claim is handed to ``mkfs.fat`` for its run (it insists on
``O_EXCL`` itself) and taken back afterwards; a device that changed in between (another medium,
another loop backing file: sysfs ``diskseq``, size or device number differ) is refused.

FAT type: FAT32 from 64 MiB up (the appliance's documented format; 64 MiB leaves mkfs.fat's
default clusters comfortably above FAT32's 65525-cluster minimum).  A smaller device gets FAT16
- a spec-valid FAT32 needs 65525 clusters, and an undersized "FAT32" is read as FAT16 by readers
that follow the specification - with a warning: that is for tests and labs, not for appliances.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ExitCode, PanostageError
from agent.stick import blockio
from agent.stick.errors import StickIOError, StickRefused
from agent.stick.fatgeo import NotFat, parse_boot_sector
from agent.stick.fatopen import refuse_busy
from agent.stick.mounts import mounts_of_device

FAT32_MIN_BYTES = 64 << 20
MIN_BYTES = 4 << 20
APPLIANCE_MIN_BYTES = 1_000_000_000  # "1 GB or more" (FACTS)
FAT32_MIN_CLUSTERS = 65525
WIPE_BYTES = 1 << 20  # zeroed at both ends: MBR/GPT (and its backup), old filesystem signatures
BLKRRPART = 0x125F
DEFAULT_LABEL = "PANOSTAGE"
#: Characters FAT allows in a volume label (upper case; DOS upper-cases on its own).
_LABEL_OK = re.compile(r"^[A-Z0-9 !#$%&'()\-@^_`{}~]{1,11}$")


class LabelError(PanostageError):
    exit_code = ExitCode.VALIDATION
    reason = "stick-label"


@dataclass(frozen=True)
class Medium:
    """What makes "the same device" (sysfs ``diskseq`` changes with every new medium or loop file)."""

    rdev: int
    diskseq: str | None
    size: int


@dataclass
class Prepared:
    device: str
    size_bytes: int
    fat_bits: int
    label: str
    fs_uuid: str
    removable: bool
    forced: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fat_label(label: str) -> str:
    """A valid FAT volume label (upper-cased), or :class:`LabelError`."""
    text = label.strip().upper()
    if not _LABEL_OK.match(text):
        raise LabelError(
            f"{label!r} is not a FAT volume label", hint="1-11 characters: letters, digits, spaces and !#$%&'()-@^_`{}~"
        )
    return text


def sysfs_dir(rdev: int) -> Path:
    return Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def medium_of(fd: int) -> Medium:
    rdev = os.fstat(fd).st_rdev
    return Medium(rdev, _read(sysfs_dir(rdev) / "diskseq"), blockio.size_of(fd))


def check_device(path: Path, *, force: bool) -> tuple[os.stat_result, bool, list[str]]:
    """Refuse what must not be formatted; (stat, removable, warnings) for the rest."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise StickIOError.from_os("open", f"opening {path}", exc) from exc
    if not stat.S_ISBLK(st.st_mode):
        raise StickRefused(
            f"{path} is not a block device",
            reason="stick-not-block",
            hint="pass the stick's device, e.g. /dev/sdb (`lsblk -o NAME,TRAN,RM,SIZE,MODEL`)",
        )
    sys_dir = sysfs_dir(st.st_rdev)
    if (sys_dir / "partition").exists():
        disk = Path(os.path.realpath(sys_dir)).parent.name
        raise StickRefused(
            f"{path} is a partition: prepare formats a whole stick",
            reason="stick-partition",
            hint=f"pass the whole device (/dev/{disk})",
        )
    mounted = mounts_of_device(st.st_rdev)
    if mounted:
        where = ", ".join(f"{m.device} on {m.mountpoint}" for m in mounted)
        raise StickRefused(
            f"{path} is mounted ({where})", reason="stick-mounted", hint="unmount it (and every partition of it) first"
        )
    removable = _read(sys_dir / "removable") == "1"
    warnings = []
    if not removable:
        if not force:
            raise StickRefused(
                f"{path} is not a removable device",
                reason="stick-not-removable",
                hint="check it is the stick you mean (`lsblk -o NAME,TRAN,RM,SIZE,MODEL`); "
                "some USB sticks report fixed media: then add --force",
            )
        warnings.append(f"{path} is not removable; formatting anyway (--force)")
    return st, removable, warnings


def _open_excl(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        refuse_busy(path, exc, hint="unmount it, stop what holds it")


def _same(path: Path, fd: int, before: Medium) -> None:
    now = medium_of(fd)
    if os.stat(path).st_rdev != before.rdev or now != before:
        raise StickRefused(
            f"{path} changed while it was being prepared (another medium or device)",
            reason="stick-replaced",
            hint="check which stick is plugged in and start again",
            details={"before": before.__dict__, "now": now.__dict__},
        )


def _mkfs(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)


def volume_uuid(volume_id: int) -> str:
    """The FAT volume id as blkid/udev spell it (``ID_FS_UUID``): ``1234-ABCD``."""
    return f"{volume_id >> 16:04X}-{volume_id & 0xFFFF:04X}"


def prepare(
    path: str | Path,
    *,
    label: str = DEFAULT_LABEL,
    force: bool = False,
    volume_id: int | None = None,
    before_format: Callable[[str], None] | None = None,
) -> Prepared:
    """Format the whole device ``path`` as FAT (see the module docstring).

    ``before_format(fs_uuid)`` runs once every check has passed, before the first byte is written:
    the place to enroll the stick, so that a daemon watching udev admits it as soon as mkfs.fat's
    close makes udev announce the new filesystem.
    """
    path = Path(path)
    label = fat_label(label)
    st, removable, warnings = check_device(path, force=force)
    serial = secrets.randbits(32) if volume_id is None else volume_id
    fd = _open_excl(path)
    try:
        if blockio.block_readonly(fd):
            raise StickRefused(f"{path} is read-only (write-protect switch?)", reason="stick-read-only")
        before = medium_of(fd)
        if before.rdev != st.st_rdev:
            raise StickRefused(f"{path} changed while it was being opened", reason="stick-replaced")
        size = before.size
        if size < MIN_BYTES:
            raise StickRefused(
                f"{path} is too small ({size} bytes; at least {MIN_BYTES} needed)", reason="stick-too-small"
            )
        bits = 32 if size >= FAT32_MIN_BYTES else 16
        if bits == 16:
            warnings.append(
                f"{path} is smaller than {FAT32_MIN_BYTES >> 20} MiB: formatted FAT16, not the FAT32 "
                "the appliance expects (fine for tests)"
            )
        if size < APPLIANCE_MIN_BYTES:
            warnings.append(f"{path} holds {size} bytes; the appliance documentation asks for 1 GB or more")
        if before_format is not None:
            before_format(volume_uuid(serial))
        blockio.zero_range(fd, 0, min(WIPE_BYTES, size))
        blockio.zero_range(fd, max(0, size - WIPE_BYTES), min(WIPE_BYTES, size))
        os.fsync(fd)
        _same(path, fd, before)
    finally:
        os.close(fd)
    # mkfs.fat opens the device with O_EXCL itself: our claim is released only for its run
    argv = ["mkfs.fat", "-F", str(bits), "-n", label, "-i", f"{serial:08X}", "-I", str(path)]
    try:
        proc = _mkfs(argv)
    except FileNotFoundError as exc:
        raise StickIOError(
            "mkfs", f"formatting {path}", detail="mkfs.fat not found", hint="apt-get install dosfstools"
        ) from exc
    if proc.returncode != 0:
        busy = "busy" in proc.stderr.lower() or "exclusively" in proc.stderr.lower()
        if busy:
            raise StickRefused(
                f"{path} was claimed by someone else during formatting: {proc.stderr.strip()[-300:]}",
                reason="stick-busy",
            )
        raise StickIOError(
            "mkfs", f"formatting {path}", detail=f"mkfs.fat exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
        )
    fd = _open_excl(path)
    try:
        _same(path, fd, before)
        try:
            geo = parse_boot_sector(os.pread(fd, 512, 0))
        except NotFat as exc:
            raise StickIOError("verify", f"formatting {path}", detail=f"no FAT after mkfs.fat: {exc.found}") from exc
        if geo.fat_bits != bits or geo.serial != serial or (bits == 32 and geo.cluster_count < FAT32_MIN_CLUSTERS):
            raise StickIOError(
                "verify",
                f"formatting {path}",
                detail=f"mkfs.fat made FAT{geo.fat_bits} with {geo.cluster_count} clusters, "
                f"volume id {geo.serial}; wanted FAT{bits}, {serial:08X}",
            )
        os.fsync(fd)
        try:  # drop partitions the kernel still shows from the old table (not for loop devices: EINVAL)
            fcntl.ioctl(fd, BLKRRPART)
        except OSError:
            pass
    finally:
        os.close(fd)  # closing a read-write descriptor: udev re-probes (udev watch) and sees the new filesystem
    return Prepared(
        device=str(path),
        size_bytes=size,
        fat_bits=bits,
        label=label,
        fs_uuid=geo.uuid or "",
        removable=removable,
        forced=force and not removable,
        warnings=warnings,
    )
