"""The held root of a mounted stick: is it a FAT stick's root, what it is, is it writable, walking below it.

Every operation is relative to a descriptor opened on the stick's root when the target is
opened (see :mod:`agent.stick.directory`); walking below it never follows a symlink.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agent import paths
from agent.stick.checks import permission_denied
from agent.stick.errors import StickConflict, StickIOError, StickRefused
from agent.stick.fatfs import FatReader, split_rel
from agent.stick.fatgeo import NotFat, parse_boot_sector
from agent.stick.model import Entry, EntryKind, FsInfo, TargetKind
from agent.stick.mounts import FAT_FSTYPES, Mount, device_rdev, mount_of

CHUNK = 1 << 20
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def kind_of(mode: int) -> EntryKind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def entry_from_stat(name: str, st: os.stat_result) -> Entry:
    """An :class:`Entry` from an lstat result (only a regular file has a size; read-only: no write bit)."""
    return Entry(name, kind_of(st.st_mode), st.st_size if stat.S_ISREG(st.st_mode) else 0, not st.st_mode & 0o222)


def mounted_hint(mountpoint: Path, device: str | None) -> str:
    """What to do when this user may not write a mounted stick's root (its mount options decide, on FAT)."""
    group = paths.STICK_GROUP
    unmount = f"or unmount it and pass {device} (the {group} group may write unmounted sticks)" if device else ""
    return (
        f"mount it for this user (FAT: mount options `uid=<user>`, or `gid={group},umask=007` with this user in "
        f"the {group} group) or give it access to {mountpoint}" + (f", {unmount}" if unmount else "")
    )


@dataclass(frozen=True)
class BootIdentity:
    """What the mounted device's boot sector says (each part unknown when it could not be read)."""

    fat_bits: int | None = None
    uuid: str | None = None
    label: str | None = None
    rdev: int | None = None


class DirectoryRoot:
    """The root directory of a mounted stick (or, with ``allow_non_fat``, any directory)."""

    kind: TargetKind = "directory"

    def __init__(self, path: str | Path, *, allow_non_fat: bool = False) -> None:
        self.path = Path(os.path.realpath(path))
        self.allow_non_fat = allow_non_fat
        self.last_read_mode: str | None = None
        self.mount: Mount | None = mount_of(self.path)
        self._root: int | None = None
        try:
            self._root = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise permission_denied(self.path, want="read", block=False, code=exc.errno) from exc
            raise StickIOError.from_os("open", f"stick directory {self.path}", exc) from exc
        self._identity: BootIdentity | None = None
        try:
            self._check_fat()
        except BaseException:
            self.close()
            raise

    @property
    def _dfd(self) -> int:
        """The held descriptor of the stick's root (every path is relative to it); refused once closed."""
        if self._root is None:
            raise StickIOError("open", f"{self.path}", detail="the target was closed")
        return self._root

    # ------------------------------------------------------------ identity and checks
    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def fat(self) -> bool:
        return self.mount is not None and (self.mount.fstype in FAT_FSTYPES or self._fuseblk_fat())

    def _fuseblk_fat(self) -> bool:
        return self.mount is not None and self.mount.fstype == "fuseblk" and self._boot_identity().fat_bits is not None

    def _check_fat(self) -> None:
        if self.allow_non_fat:
            return
        if self.mount is None:
            raise StickRefused(f"{self.path} is on no known mount", reason="stick-not-fat")
        if not self.fat:
            raise StickRefused(
                f"{self.path} is on a {self.mount.fstype} filesystem ({self.mount.device}), not FAT",
                reason="stick-not-fat",
                hint="the appliance reads FAT32 only: format the stick as FAT32",
                details={"fstype": self.mount.fstype, "device": self.mount.device},
            )
        if self.path != self.mount.mountpoint:
            raise StickRefused(
                f"{self.path} is not the root of the stick (mounted at {self.mount.mountpoint})",
                reason="stick-not-root",
                hint=f"use {self.mount.mountpoint}: the archive must sit in the root directory",
            )

    def require_writable(self) -> None:
        """Refuse a write: ``stick-read-only`` for a read-only mount or a root nobody may write,
        ``stick-permission-denied`` when only this user may not (its owner, group and mode named)."""
        hint = "flip the write-protect switch, remount read-write, or use another stick"
        if os.fstatvfs(self._dfd).f_flag & os.ST_RDONLY:
            raise StickRefused(f"{self.path} is mounted read-only", reason="stick-read-only", hint=hint)
        st = os.fstat(self._dfd)
        if not st.st_mode & 0o222:
            raise StickRefused(
                f"{self.path} is read-only (mode {stat.S_IMODE(st.st_mode):04o}: nobody may write it)",
                reason="stick-read-only",
                hint=hint,
            )
        if not os.access(self.path, os.W_OK, effective_ids=True):
            device = self.mount.device if self.mount else None
            mount_hint = mounted_hint(self.path, device) if self.fat else None  # FAT: the mount options decide
            raise permission_denied(self.path, want="write", block=False, hint=mount_hint)

    def _boot_identity(self) -> BootIdentity:
        """Label, serial and FAT type from the mounted device's boot sector (when readable)."""
        if self._identity is not None:
            return self._identity
        ident = BootIdentity()
        device = self.mount.device if self.mount else ""
        if device_rdev(device) is not None:
            try:
                fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    geo = parse_boot_sector(os.pread(fd, 512, 0))
                    label = FatReader(fd, geo).volume_label() or geo.boot_label
                    ident = BootIdentity(fat_bits=geo.fat_bits, uuid=geo.uuid, label=label, rdev=device_rdev(device))
                finally:
                    os.close(fd)
            except (OSError, NotFat, ValueError):  # identity is best-effort
                ident = BootIdentity(rdev=device_rdev(device))
        self._identity = ident
        return ident

    def describe(self) -> dict[str, str | int]:
        ident = self._boot_identity() if self.fat else BootIdentity()
        data: dict[str, str | int] = {"kind": self.kind, "path": str(self.path)}
        if self.mount:
            data.update(device=self.mount.device, fstype=self.mount.fstype, mountpoint=str(self.mount.mountpoint))
        if ident.uuid:
            data["fs_uuid"] = ident.uuid
        if ident.label:
            data["label"] = ident.label
        if ident.fat_bits:
            data["fat_bits"] = ident.fat_bits
        if ident.rdev is not None:
            data["rdev"] = f"{os.major(ident.rdev)}:{os.minor(ident.rdev)}"
        return data

    def fs_info(self) -> FsInfo:
        st = os.fstatvfs(self._dfd)
        ident = self._boot_identity() if self.fat else BootIdentity()
        fstype = "vfat" if self.fat else (self.mount.fstype if self.mount else "unknown")
        known = st.f_blocks > 0
        return FsInfo(
            fs_type=fstype,
            fat_bits=ident.fat_bits,
            label=ident.label,
            uuid=ident.uuid,
            size_bytes=st.f_blocks * st.f_frsize,
            free_bytes=st.f_bavail * st.f_frsize if known else None,
            cluster_size=st.f_bsize or 512,
        )

    # ------------------------------------------------------------ walking
    def _open_dir(self, parts: list[str], *, create: bool = False) -> int:
        """A descriptor for the directory ``parts`` below the root (the root itself is dup'ed)."""
        fd = os.dup(self._dfd)
        try:
            for part in parts:
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    os.fsync(fd)
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise StickConflict(
                            f"{part} on the stick is not a directory (a symlink is never followed)",
                            reason="stick-not-a-directory",
                        ) from exc
                    raise
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _parent(self, rel: str, *, create: bool = False) -> tuple[int, str]:
        parts = split_rel(rel)
        return self._open_dir(parts[:-1], create=create), parts[-1]

    def _entries(self, dfd: int) -> list[Entry]:
        out = []
        with os.scandir(dfd) as it:
            for item in it:
                st = item.stat(follow_symlinks=False)
                out.append(entry_from_stat(item.name, st))
        return sorted(out, key=lambda e: e.name)

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._root is not None:
            os.close(self._root)
            self._root = None
