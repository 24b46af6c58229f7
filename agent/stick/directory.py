"""A stick mounted by the kernel (or FUSE): plain system calls on a held directory descriptor.

Every operation is relative to a descriptor opened on the stick's root when the
target is opened.  Should the stick be unmounted afterwards, the path would name
an ordinary directory on the workstation's disk; the descriptor still names the
stick (or fails with an I/O error), so key material can never land on the
workstation by accident.  Symlinks are never followed (``O_NOFOLLOW``, lstat).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Any, Iterable

from agent.stick import blockio, names
from agent.stick.errors import StickConflict, StickFileTooLarge, StickIOError, StickRefused
from agent.stick.fatfs import FatReader, split_rel
from agent.stick.fatgeo import NotFat, parse_boot_sector
from agent.stick.model import READ_LIMIT, Entry, FsInfo, WriteReport, refuse_look_alikes, stale_temp_of, temp_name
from agent.stick.mounts import FAT_FSTYPES, Mount, device_rdev, mount_of
from agent.stick.mtools import check_name
from agent.stick.steps import Stopwatch

CHUNK = 1 << 20
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


class DirectoryTarget:
    """The root directory of a mounted stick (or, with ``allow_non_fat``, any directory)."""

    kind = "directory"

    def __init__(self, path: str | Path, *, allow_non_fat: bool = False) -> None:
        self.path = Path(os.path.realpath(path))
        self.allow_non_fat = allow_non_fat
        self.last_read_mode: str | None = None
        self.mount: Mount | None = mount_of(self.path)
        try:
            self._dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StickIOError.from_os("open", f"stick directory {self.path}", exc) from exc
        self._identity: dict[str, Any] | None = None
        try:
            self._check_fat()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ identity and checks
    def __repr__(self) -> str:
        return f"DirectoryTarget({str(self.path)!r})"

    @property
    def fat(self) -> bool:
        return self.mount is not None and (self.mount.fstype in FAT_FSTYPES or self._fuseblk_fat())

    def _fuseblk_fat(self) -> bool:
        return self.mount is not None and self.mount.fstype == "fuseblk" and self._boot_identity().get("fat_bits") is not None

    def _check_fat(self) -> None:
        if self.allow_non_fat:
            return
        if self.mount is None:
            raise StickRefused(f"{self.path} is on no known mount", reason="stick-not-fat")
        if not self.fat:
            raise StickRefused(
                f"{self.path} is on a {self.mount.fstype} filesystem ({self.mount.device}), not FAT",
                reason="stick-not-fat", hint="the appliance reads FAT32 only: format the stick as FAT32",
                details={"fstype": self.mount.fstype, "device": self.mount.device},
            )
        if self.path != self.mount.mountpoint:
            raise StickRefused(
                f"{self.path} is not the root of the stick (mounted at {self.mount.mountpoint})",
                reason="stick-not-root", hint=f"use {self.mount.mountpoint}: the archive must sit in the root directory",
            )

    def _readonly_reason(self) -> str | None:
        if os.fstatvfs(self._dfd).f_flag & os.ST_RDONLY:
            return "is mounted read-only"
        st = os.fstat(self._dfd)
        if not os.access(self.path, os.W_OK) or not st.st_mode & 0o222:
            return "is not writable (permissions)"
        return None

    def check_sound(self) -> list[str]:
        """A mounted stick's structures are the kernel's to check and repair: nothing to add here."""
        return []

    def check_room(self, name: str, size: int, *, freeing: Iterable[str] = ()) -> None:
        """Refuse, before anything exists, a ``name`` of ``size`` bytes that would not fit once the root files
        ``freeing`` are removed: its length, the free space, and a free directory slot (proved by creating and
        removing the temporary name; with files still to be removed a full directory is left to the kernel)."""
        check_name(name)
        self.require_writable()
        from agent.stick.checks import check_space

        going = [e for e in (self.lookup(n) for n in freeing) if e is not None and e.kind == "file"]
        info = self.fs_info()
        if info.free_bytes is not None:
            cluster = max(info.cluster_size, 1)
            info = dataclasses.replace(info, free_bytes=info.free_bytes + sum(-(-e.size // cluster) * cluster
                                                                              for e in going))
        check_space(self, size, info)
        probe = temp_name(name, os.getpid())
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=self._dfd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and going:
                return
            if exc.errno == errno.ENOSPC:
                raise StickRefused(f"the root directory of {self.path} has no room for {name}", reason="stick-root-full",
                                   hint="delete files from the stick's root, or wipe it (panostage stick wipe)") from exc
            if exc.errno != errno.EEXIST:
                raise StickIOError.from_os("room", f"checking room for {name} on {self.path}", exc) from exc
            return
        os.close(fd)
        os.unlink(probe, dir_fd=self._dfd)

    def require_writable(self) -> None:
        why = self._readonly_reason()
        if why:
            raise StickRefused(f"{self.path} {why}", reason="stick-read-only",
                               hint="flip the write-protect switch, remount read-write, or use another stick")

    def _boot_identity(self) -> dict[str, Any]:
        """Label, serial and FAT type from the mounted device's boot sector (when readable)."""
        if self._identity is not None:
            return self._identity
        ident: dict[str, Any] = {}
        device = self.mount.device if self.mount else ""
        if device_rdev(device) is not None:
            try:
                fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    geo = parse_boot_sector(os.pread(fd, 512, 0))
                    label = FatReader(fd, geo).volume_label() or geo.boot_label
                    ident = {"fat_bits": geo.fat_bits, "uuid": geo.uuid, "label": label, "rdev": device_rdev(device)}
                finally:
                    os.close(fd)
            except (OSError, NotFat, ValueError):  # identity is best-effort
                ident = {"rdev": device_rdev(device)}
        self._identity = ident
        return ident

    def describe(self) -> dict[str, Any]:
        ident = self._boot_identity() if self.fat else {}
        data: dict[str, Any] = {"kind": self.kind, "path": str(self.path)}
        if self.mount:
            data.update(device=self.mount.device, fstype=self.mount.fstype, mountpoint=str(self.mount.mountpoint))
        if ident.get("uuid"):
            data["fs_uuid"] = ident["uuid"]
        if ident.get("label"):
            data["label"] = ident["label"]
        if ident.get("fat_bits"):
            data["fat_bits"] = ident["fat_bits"]
        if ident.get("rdev") is not None:
            data["rdev"] = f"{os.major(ident['rdev'])}:{os.minor(ident['rdev'])}"
        return data

    def fs_info(self) -> FsInfo:
        st = os.fstatvfs(self._dfd)
        ident = self._boot_identity() if self.fat else {}
        fstype = "vfat" if self.fat else (self.mount.fstype if self.mount else "unknown")
        known = st.f_blocks > 0
        return FsInfo(fs_type=fstype, fat_bits=ident.get("fat_bits"), label=ident.get("label"), uuid=ident.get("uuid"),
                      size_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bavail * st.f_frsize if known else None,
                      cluster_size=st.f_bsize or 512)

    # ------------------------------------------------------------ walking
    def _open_dir(self, parts: list[str], *, create: bool = False) -> int:
        """A descriptor for the directory ``parts`` below the root (the root itself is dup'ed)."""
        fd = os.dup(self._dfd)
        try:
            for part in parts:
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    os.fsync(fd)
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise StickConflict(f"{part} on the stick is not a directory (a symlink is never followed)",
                                            reason="stick-not-a-directory") from exc
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
                out.append(Entry(item.name, _kind(st.st_mode), st.st_size if stat.S_ISREG(st.st_mode) else 0,
                                 not st.st_mode & 0o222))
        return sorted(out, key=lambda e: e.name)

    # ------------------------------------------------------------ reading
    def list_root(self) -> list[Entry]:
        return self.list_dir("")

    def list_dir(self, rel: str) -> list[Entry]:
        sw = Stopwatch(f"listing {rel or '/'} on {self.path}")
        with sw.step("list"):
            fd = self._open_dir(split_rel(rel, allow_empty=True))
            try:
                return self._entries(fd)
            finally:
                os.close(fd)

    def lookup(self, rel: str) -> Entry | None:
        try:
            fd, leaf = self._parent(rel)
        except (FileNotFoundError, StickConflict):
            return None
        try:
            try:
                st = os.lstat(leaf, dir_fd=fd)
            except FileNotFoundError:
                return None
            entries = self._entries(fd)
            stored = next((e.name for e in entries if e.name == leaf), None)
            if stored is None and self.fat:
                stored = next((e.name for e in entries if names.same(e.name, leaf)), leaf)
            return Entry(stored or leaf, _kind(st.st_mode), st.st_size if stat.S_ISREG(st.st_mode) else 0,
                         not st.st_mode & 0o222)
        finally:
            os.close(fd)

    def read(self, rel: str, *, bypass_cache: bool = True, limit: int = READ_LIMIT) -> bytes:
        """Read a file; with ``bypass_cache`` the bytes come from the medium (O_DIRECT, else fsync+DONTNEED).

        A file larger than ``limit`` is refused from its size (:class:`StickFileTooLarge`), unread.
        """
        what = f"reading {rel} from {self.path}"
        step = "open"
        fd_dir = fd = None
        try:
            fd_dir, leaf = self._parent(rel)
            mode = "cached"
            if bypass_cache:
                try:
                    fd = os.open(leaf, os.O_RDONLY | os.O_DIRECT | os.O_NONBLOCK | _NOFOLLOW, dir_fd=fd_dir)
                    mode = "O_DIRECT"
                except OSError as exc:
                    if exc.errno != errno.EINVAL:  # the filesystem has no O_DIRECT
                        raise
            if fd is None:  # O_NONBLOCK: a FIFO at the name must not hang us (regular files ignore it)
                fd = os.open(leaf, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=fd_dir)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StickConflict(f"{rel} on the stick is not a regular file", reason="stick-not-a-file")
            if st.st_size > limit:
                raise StickFileTooLarge(rel, st.st_size, limit)
            step = "read"
            data = None
            if mode == "O_DIRECT":
                try:
                    data = blockio.read_direct(fd, st.st_size)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    os.close(fd)
                    fd = os.open(leaf, os.O_RDONLY | _NOFOLLOW, dir_fd=fd_dir)
                    mode = "cached"
            if data is None:
                if bypass_cache:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    mode = "fadvise"
                data = _read_all(fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StickConflict(f"{rel} on the stick is a symlink; it is never followed",
                                    reason="stick-symlink") from exc
            raise StickIOError.from_os(step, what, exc) from exc
        finally:
            for one in (fd, fd_dir):
                if one is not None:
                    os.close(one)
        self.last_read_mode = mode
        return data

    # ------------------------------------------------------------ writing
    def write_atomic(self, name: str, data: bytes, *, replace: bool = True) -> WriteReport:
        """Temp file (O_EXCL) in the root, write, fsync, rename over ``name``, fsync the directory.

        On any failure nothing of ours is left: the temp file is removed, and if the
        failure came after the rename, the new file is wiped as well.  A replaced older
        file is overwritten with zeros once the new one is in place.
        """
        check_name(name)
        self.require_writable()
        what = f"writing {name} to {self.path}"
        sw = Stopwatch(what)
        with sw.step("inspect"):
            existing = self.lookup(name)
            if existing is not None and existing.kind != "file":
                raise StickConflict(f"{name} on the stick is a {existing.kind}; it will not be replaced",
                                    reason=f"stick-name-is-{existing.kind}", details={"entry": existing.to_dict()})
            if existing is not None and not replace:
                raise StickConflict(f"{name} already exists on the stick", reason="stick-name-exists")
            if self.fat:
                refuse_look_alikes(name, [e.name for e in self._entries(self._dfd)])
        scrubbed = 0
        with sw.step("stale_temps"):
            scrubbed += self._remove_stale_temps(name)
        tmp = temp_name(name, os.getpid())
        fd = old_fd = None
        renamed = False
        try:
            with sw.step("create"):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=self._dfd)
            with sw.step("write"):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view[:CHUNK]):]
            with sw.step("fsync"):
                os.fsync(fd)
                os.close(fd)
                fd = None
            if existing is not None:
                try:  # kept open to overwrite the old content once it is replaced
                    old_fd = os.open(existing.name, os.O_RDWR | _NOFOLLOW, dir_fd=self._dfd)
                except OSError:
                    old_fd = None
            with sw.step("rename"):
                os.replace(tmp, name, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
                renamed = True
            with sw.step("fsync_dir"):
                os.fsync(self._dfd)
        except BaseException:
            if fd is not None:
                os.close(fd)
            if old_fd is not None:
                os.close(old_fd)
            self._best_effort_cleanup(name if renamed else tmp, wipe=renamed)
            raise
        if old_fd is not None:
            with sw.step("scrub_old"):
                try:
                    if os.fstat(old_fd).st_nlink == 0:
                        scrubbed += _zero_fd(old_fd)
                except OSError:
                    pass  # best effort: the new archive is in place
                finally:
                    os.close(old_fd)
        return WriteReport(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                           replaced=existing is not None, durations_ms=sw.durations_ms, scrubbed_bytes=scrubbed)

    def _remove_stale_temps(self, name: str) -> int:
        scrubbed = 0
        for entry in self._entries(self._dfd):
            if entry.kind == "file" and stale_temp_of(entry.name, name):
                scrubbed += self.wipe(entry.name)
        return scrubbed

    def _best_effort_cleanup(self, leaf: str, *, wipe: bool) -> None:
        try:
            if wipe:
                fd = os.open(leaf, os.O_RDWR | _NOFOLLOW, dir_fd=self._dfd)
                try:
                    _zero_fd(fd)
                finally:
                    os.close(fd)
            os.unlink(leaf, dir_fd=self._dfd)
            os.fsync(self._dfd)
        except OSError:
            pass

    def write(self, rel: str, data: bytes) -> None:
        """Write a file (creating parent directories), fsync it and its directory."""
        for part in split_rel(rel):
            check_name(part)
        self.require_writable()
        sw = Stopwatch(f"writing {rel} to {self.path}")
        with sw.step("open"):
            dfd, leaf = self._parent(rel, create=True)
        try:
            with sw.step("open"):
                fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o644, dir_fd=dfd)
            try:
                with sw.step("write"):
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view[:CHUNK]):]
                with sw.step("fsync"):
                    os.fsync(fd)
            finally:
                os.close(fd)
            with sw.step("fsync_dir"):
                os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove(self, rel: str, *, missing_ok: bool = False) -> None:
        """Remove a file or an empty directory."""
        self.require_writable()
        sw = Stopwatch(f"removing {rel} from {self.path}")
        try:
            with sw.step("remove"):
                dfd, leaf = self._parent(rel)
                try:
                    if stat.S_ISDIR(os.lstat(leaf, dir_fd=dfd).st_mode):
                        os.rmdir(leaf, dir_fd=dfd)
                    else:
                        os.unlink(leaf, dir_fd=dfd)
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except StickIOError as exc:
            if not (missing_ok and exc.errno == errno.ENOENT):
                raise

    def wipe(self, rel: str, *, missing_ok: bool = False) -> int:
        """Overwrite a file in place with zeros of the same length, fsync, then unlink it; returns bytes zeroed."""
        self.require_writable()
        sw = Stopwatch(f"wiping {rel} on {self.path}")
        try:
            with sw.step("open"):
                dfd, leaf = self._parent(rel)
        except StickIOError as exc:
            if missing_ok and exc.errno == errno.ENOENT:
                return 0
            raise
        try:
            try:
                with sw.step("open"):
                    fd = os.open(leaf, os.O_RDWR | _NOFOLLOW, dir_fd=dfd)
            except StickIOError as exc:
                if exc.errno == errno.ELOOP:
                    raise StickConflict(f"{rel} is a symlink; it is never followed", reason="stick-symlink") from exc
                if missing_ok and exc.errno == errno.ENOENT:
                    return 0
                raise
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise StickConflict(f"{rel} is not a regular file", reason="stick-not-a-file")
                with sw.step("zero"):
                    zeroed = _zero_fd(fd)
            finally:
                os.close(fd)
            with sw.step("unlink"):
                os.unlink(leaf, dir_fd=dfd)
                os.fsync(dfd)
        finally:
            os.close(dfd)
        return zeroed

    def format(self, label: str | None = None) -> None:
        raise StickRefused(f"{self.path} is a mounted directory; only an unmounted FAT image or device can be formatted",
                           reason="stick-mounted", hint="unmount the stick and pass its device")

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        if getattr(self, "_dfd", None) is not None:
            os.close(self._dfd)
            self._dfd = None

    def __enter__(self) -> "DirectoryTarget":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _zero_fd(fd: int) -> int:
    """Overwrite an open file's whole length with zeros and fsync; returns the length."""
    size = os.fstat(fd).st_size
    blockio.zero_range(fd, 0, size)
    os.fsync(fd)
    return size
