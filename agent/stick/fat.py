"""An unmounted FAT filesystem in an image file or on a block device, written with mtools.

The descriptor opened here is held for the target's lifetime and handed to every
mtools child (``-i /dev/fd/N``).  On a block device it is opened with
``O_EXCL``: while we hold it the kernel refuses to mount the device (or any of
its partitions), and a second panostage cannot claim it; mtools, which opens
without ``O_EXCL``, still can.  An image file is ``flock``ed.

Metadata reads (listing, state of a name, free space, cluster chains) are done
natively by :mod:`agent.stick.fatfs`; every change goes through mtools inside
an undo journal (:mod:`agent.stick.journal`) so a failed mtools call leaves the
filesystem exactly as it was.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterable

from agent.stick import blockio, fatcheck, names
from agent.stick.errors import (StickConflict, StickDamaged, StickFileTooLarge, StickIOError, StickNameError,
                                StickRefused)
from agent.stick.fatfs import DirEntry, FatCorrupt, FatReader, runs, split_rel
from agent.stick.fatgeo import Geometry, NotFat, Partition, parse_boot_sector
from agent.stick.fatopen import locate, open_held
from agent.stick.journal import Snapshot
from agent.stick.model import READ_LIMIT, Entry, FsInfo, WriteReport, refuse_look_alikes, stale_temp_of, temp_name
from agent.stick.mtools import ADDRESSABLE, Mtools, Wrap, check_name, dos_path, errno_in, memory_file
from agent.stick.steps import Stopwatch


def _entry(e: DirEntry) -> Entry:
    return Entry(e.name, "dir" if e.is_dir else "file", 0 if e.is_dir else e.size, e.readonly)


class FatTarget:
    """A FAT filesystem reached through an image file or a block device, never mounted."""

    def __init__(self, path: Path, fd: int, *, block: bool, writable: bool, geometry: Geometry,
                 partition: Partition | None = None, wrap: Wrap | None = None,
                 runtime_dir: Path | None = None, readback: str = "direct") -> None:
        if readback not in ("direct", "mtools"):
            raise ValueError(f"readback must be 'direct' or 'mtools', not {readback!r}")
        self.path = path
        self.readback = readback
        self.kind = "block" if block else "image"
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

    # ------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, *, offset: int | None = None, partition: int | None = None,
             wrap: Wrap | None = None, runtime_dir: Path | None = None, readback: str = "direct") -> "FatTarget":
        """Open and check an image file or an unmounted block device (a mounted one fails O_EXCL: refused)."""
        path = Path(path)
        what = f"opening {path}"
        try:
            st = os.stat(path)
        except OSError as exc:
            raise StickIOError.from_os("open", what, exc) from exc
        block = stat.S_ISBLK(st.st_mode)
        if not block and not stat.S_ISREG(st.st_mode):
            raise StickRefused(f"{path} is neither an image file nor a block device", reason="stick-not-fat")
        fd, writable = open_held(path, block, st)
        try:
            geo, part = locate(fd, path, block=block, offset=offset, partition=partition)
            return cls(path, fd, block=block, writable=writable, geometry=geo, partition=part, wrap=wrap,
                       runtime_dir=runtime_dir, readback=readback)
        except BaseException:
            os.close(fd)
            raise

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise StickIOError("open", f"{self.path}", detail="the target was closed")
        return self._fd

    def __repr__(self) -> str:
        return f"FatTarget({str(self.path)!r}, kind={self.kind!r}, offset={self.geo.offset})"

    # ------------------------------------------------------------ identity
    def _label(self) -> str | None:
        try:
            return self.reader.volume_label() or self.geo.boot_label
        except (OSError, FatCorrupt):
            return self.geo.boot_label

    def describe(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "path": str(self.path), "fstype": "vfat",
                                "fat_bits": self.geo.fat_bits, "size_bytes": self.geo.size_bytes}
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
            return FsInfo(fs_type="vfat", fat_bits=self.geo.fat_bits, label=self._label(), uuid=self.geo.uuid,
                          size_bytes=self.geo.cluster_count * self.geo.cluster_size,
                          free_bytes=free * self.geo.cluster_size, cluster_size=self.geo.cluster_size)

    # ------------------------------------------------------------ soundness and room
    def census(self) -> fatcheck.Census:
        """The census of the whole filesystem, taken once: our own writes keep a sound stick sound."""
        if self._census is None:
            sw = Stopwatch(f"checking the filesystem of {self.path}")
            with sw.step("census"):
                self._census = fatcheck.take(self.reader)
            self._changed = False
        return self._census

    def check_sound(self) -> list[str]:
        """Raise :class:`StickDamaged` when the filesystem is damaged; return what is odd but harmless."""
        census = self.census()
        if census.problems:
            raise StickDamaged(self.path, census.problems, block=self.block)
        return list(census.warnings)

    def check_room(self, name: str, size: int, *, freeing: Iterable[str] = ()) -> None:
        """Refuse, before anything exists, a ``name`` of ``size`` bytes that could not be written to the root
        once the root entries ``freeing`` are removed (counted as free: their clusters and slots)."""
        check_name(name)
        sw = Stopwatch(f"checking room for {name} on {self.path}")
        with sw.step("room"):
            if freeing:
                self.reader.forget()
            going = [e for e in (self.reader.find(None, n) for n in freeing) if e is not None and not e.is_dir]
            fresh = self._census is not None and not self._changed and not going
            room = self._census.room if fresh else fatcheck.room(self.reader, going)
        cluster = self.geo.cluster_size
        clusters = -(-size // cluster)
        slots = names.slots_for(temp_name(name, os.getpid()))
        short = room.shortfall(clusters, slots)
        if short == "space":
            free, needed = room.usable_free * cluster, clusters * cluster
            raise StickRefused(f"{self.path} has {free} bytes free; {name} needs {needed}", reason="stick-full",
                               exit_code=StickIOError.exit_code, hint="free some space or wipe the stick",
                               details={"free": free, "needed": needed})
        if short == "root":
            raise StickRefused(
                f"the root directory of {self.path} is full: {name} needs {slots} free entries in a row, the longest "
                f"run is {room.root_free_run} (a FAT{self.geo.fat_bits} root holds {self.geo.root_entries} entries)",
                reason="stick-root-full", hint="delete files from the stick's root, or wipe it (panostage stick wipe)",
                details={"slots_needed": slots, "longest_free_run": room.root_free_run})

    # ------------------------------------------------------------ reading
    def list_root(self) -> list[Entry]:
        return self.list_dir("")

    def list_dir(self, rel: str) -> list[Entry]:
        sw = Stopwatch(f"listing {rel or '/'} on {self.path}")
        with sw.step("list"):
            self.reader.forget()
            cluster = self.reader.dir_cluster(rel)
            return sorted((_entry(e) for e in self.reader.dir_entries(cluster)), key=lambda e: e.name)

    def lookup(self, rel: str) -> Entry | None:
        found = self._lookup(rel)
        return None if found is None else _entry(found)

    def _lookup(self, rel: str) -> DirEntry | None:
        sw = Stopwatch(f"looking up {rel} on {self.path}")
        with sw.step("lookup"):
            self.reader.forget()
            return self.reader.lookup(rel)

    def read(self, rel: str, *, bypass_cache: bool = True, limit: int = READ_LIMIT) -> bytes:
        """Read a file.

        ``bypass_cache`` (the read-back after a write): with ``readback="direct"`` (default) an
        independent FAT reader goes through an ``O_DIRECT`` descriptor, so directory, FAT and data
        all come from the medium and nobody's cache is disturbed; with ``readback="mtools"`` (or
        where O_DIRECT is unsupported) caches are dropped (fsync, DONTNEED, BLKFLSBUF) and
        ``mcopy ::file -`` reads it.  Without ``bypass_cache``: mcopy through the caches.
        A file larger than ``limit`` is refused from its directory entry (:class:`StickFileTooLarge`).
        """
        what = f"reading {rel} from {self.path}"
        if bypass_cache and self.readback == "direct":
            data = self._read_direct(rel, what, limit)
            if data is not None:
                self.last_read_mode = "O_DIRECT"
                return data
        sw = Stopwatch(what)
        with sw.step("drop_cache"):
            if bypass_cache:
                blockio.drop_cache(self.fd, block=self.block)
        entry = self._lookup(rel)
        if entry is None:
            raise StickIOError("lookup", what, errno=errno.ENOENT)
        if entry.is_dir:
            raise StickConflict(f"{rel} on the stick is a directory", reason="stick-not-a-file")
        if entry.size > limit:
            raise StickFileTooLarge(rel, entry.size, limit)
        with sw.step("read"):
            data = self.mtools.run("mcopy", self._addr(rel), "-", step="read", what=what).stdout
        if len(data) != entry.size:
            raise StickIOError("read", what, errno=errno.EIO,
                               detail=f"mcopy returned {len(data)} bytes, the directory says {entry.size}")
        self.last_read_mode = "mtools+drop-cache" if bypass_cache else "mtools"
        return data

    def _read_direct(self, rel: str, what: str, limit: int) -> bytes | None:
        """Read ``rel`` natively through a fresh O_DIRECT descriptor; None when O_DIRECT is unsupported."""
        try:
            fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None
            raise StickIOError.from_os("open", what, exc) from exc
        sw = Stopwatch(what)
        try:
            with sw.step("read"):
                try:
                    reader = FatReader(fd, self.geo, direct=True)
                    entry = reader.lookup(rel)
                    data = None if entry is None or entry.is_dir else reader.read_file(entry, limit=limit)
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        return None
                    raise
        finally:
            os.close(fd)
        if entry is None:
            raise StickIOError("lookup", what, errno=errno.ENOENT)
        if entry.is_dir:
            raise StickConflict(f"{rel} on the stick is a directory", reason="stick-not-a-file")
        return data

    # ------------------------------------------------------------ writing
    def require_writable(self) -> None:
        if not self.writable:
            raise StickRefused(f"{self.path} is read-only", reason="stick-read-only",
                               hint="flip the write-protect switch or make the image writable")

    def _journaled(self, sw: Stopwatch, snap: Snapshot, what: str, steps: list[tuple[str, Any]]) -> None:
        """Run ``steps`` (name, callable); on any failure restore ``snap``, flush, re-raise."""
        self._changed = True
        try:
            for name, action in steps:
                with sw.step(name):
                    action()
        except BaseException as exc:
            note = exc.details if isinstance(exc, StickIOError) else {}
            try:
                note["undone_bytes"] = snap.restore()
                os.fsync(self.fd)
            except OSError as undo_exc:
                note["undo_failed"] = str(undo_exc)
            self.reader.forget()
            raise

    def write_atomic(self, name: str, data: bytes, *, replace: bool = True) -> WriteReport:
        """mcopy to a temp name in the root, fsync, mren onto ``name``, fsync - all inside the undo journal."""
        self.require_writable()
        self.check_sound()
        dos_path(name)
        if len(split_rel(name)) != 1:
            raise StickNameError(f"write_atomic writes to the root only, not {name!r}")
        what = f"writing {name} to {self.path}"
        sw = Stopwatch(what)
        with sw.step("inspect"):
            self.reader.forget()
            root = self.reader.dir_entries(None)
            existing = self.reader.find(None, name, root)
            if existing is not None and existing.is_dir:
                raise StickConflict(f"{name} on the stick is a directory; it will not be replaced",
                                    reason="stick-name-is-dir", details={"entry": _entry(existing).to_dict()})
            if existing is not None and not replace:
                raise StickConflict(f"{name} already exists on the stick", reason="stick-name-exists")
            refuse_look_alikes(name, [e.name for e in root])
            stale = [e.name for e in root if not e.is_dir and stale_temp_of(e.name, name)]
        with sw.step("stale_temps"):
            scrubbed = sum(self.wipe(leftover) for leftover in stale)
        with sw.step("snapshot"):
            snap = Snapshot.take(self.reader, [None])
            old_clusters = self.reader.chain(existing.first_cluster) if existing else []
        with sw.step("space"):
            self.check_room(name, len(data))  # one rule with stage's early check (the census's room when unchanged)
        tmp = temp_name(name, os.getpid())
        with sw.step("memfd"):
            source = memory_file(data, runtime_dir=self.runtime_dir)
        try:
            def copy() -> None:
                self.mtools.run("mcopy", "-D", "o", "-", dos_path(tmp), stdin=source, step="copy", what=what)
                self.reader.forget()
                written = self.reader.lookup(tmp)
                if written is None or written.size != len(data):
                    raise StickIOError("copy", what, errno=errno.EIO,
                                       detail=f"mcopy left {written.size if written else 'no'} bytes, not {len(data)}")

            def rename() -> None:
                done = self.mtools.run("mren", "-D", "o", dos_path(tmp), dos_path(name), step="rename", what=what)
                self.reader.forget()
                # mren (4.0.x) exits 0 when its directory write fails (buffer_flush): check it took
                renamed = self.reader.lookup(name)
                if self.reader.lookup(tmp) is not None or renamed is None or renamed.name.lower() != name.lower() \
                        or renamed.size != len(data):
                    said = " ".join(done.stderr.split())
                    raise StickIOError("rename", what, errno=errno_in(said) or errno.EIO,
                                       detail=f"mren exited 0 but {name} is not in place: {said or 'no message'}")

            self._journaled(sw, snap, what, [("copy", copy), ("fsync", lambda: os.fsync(self.fd)),
                                             ("rename", rename), ("fsync_rename", lambda: os.fsync(self.fd))])
        finally:
            _close_memory(source)
        if old_clusters:
            with sw.step("scrub_old"):
                scrubbed += self._zero_free(old_clusters)
        return WriteReport(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                           replaced=existing is not None, durations_ms=sw.durations_ms, scrubbed_bytes=scrubbed)

    def _zero_free(self, clusters: list[int]) -> int:
        """Overwrite those of ``clusters`` that are free now with zeros (best effort); bytes zeroed.

        Not flushed here (the new file is already durable; this is hygiene that should not cost
        another flush on the hot path): the next fsync, or close(), takes the zeros to the medium.
        """
        try:
            self.reader.forget()
            free = [c for c in clusters if self.reader.entry(c) == 0]
            self._dirty = True
            return self._zero_clusters(free)
        except (OSError, FatCorrupt):
            return 0

    def _zero_clusters(self, clusters: list[int]) -> int:
        self._changed = True
        size = self.geo.cluster_size
        for first, count in runs(clusters):
            blockio.zero_range(self.fd, self.geo.cluster_offset(first), count * size)
        return len(clusters) * size

    def _path_dirs(self, parts: list[str]) -> list[int | None]:
        """The first clusters of the existing directories along ``parts`` (root included)."""
        found: list[int | None] = [None]
        for i in range(1, len(parts)):
            entry = self.reader.lookup("/".join(parts[:i]))
            if entry is None or not entry.is_dir:
                break
            found.append(self.reader.subdir_cluster(entry))
        return found

    def write(self, rel: str, data: bytes) -> None:
        """Write ``rel`` (replacing it), creating parent directories; journaled and flushed."""
        self.require_writable()
        self.check_sound()
        path = dos_path(rel)
        parts = split_rel(rel)
        what = f"writing {rel} to {self.path}"
        sw = Stopwatch(what)
        with sw.step("inspect"):
            self.reader.forget()
            existing = self.reader.lookup(rel)
            if existing is not None and existing.is_dir:
                raise StickConflict(f"{rel} on the stick is a directory", reason="stick-name-is-dir")
            snap = Snapshot.take(self.reader, self._path_dirs(parts))
        source = memory_file(data, runtime_dir=self.runtime_dir)
        try:
            def mkdirs() -> None:
                for i in range(1, len(parts)):
                    sub = "/".join(parts[:i])
                    entry = self.reader.lookup(sub)
                    if entry is None:
                        self.mtools.run("mmd", dos_path(sub), step="mkdir", what=what)
                        self.reader.forget()
                    elif not entry.is_dir:
                        raise StickConflict(f"{sub} on the stick is a file, not a directory",
                                            reason="stick-not-a-directory")

            def copy() -> None:
                if existing is not None and existing.readonly:
                    self.mtools.run("mattrib", "-r", path, step="copy", what=what)
                self.mtools.run("mcopy", "-D", "o", "-", path, stdin=source, step="copy", what=what)
                self.reader.forget()

            self._journaled(sw, snap, what, [("mkdir", mkdirs), ("copy", copy), ("fsync", lambda: os.fsync(self.fd))])
        finally:
            _close_memory(source)

    def remove(self, rel: str, *, missing_ok: bool = False) -> None:
        """Delete a file (read-only too) or an empty directory."""
        self.require_writable()
        self.check_sound()
        what = f"removing {rel} from {self.path}"
        sw = Stopwatch(what)
        with sw.step("inspect"):
            self.reader.forget()
            entry = self.reader.lookup(rel)
            if entry is None:
                if missing_ok:
                    return
                raise StickIOError("inspect", what, errno=errno.ENOENT)
            path = self._addr(rel)
            snap = Snapshot.take(self.reader, self._path_dirs(split_rel(rel)))

        def delete() -> None:
            if entry.readonly:
                self.mtools.run("mattrib", "-r", path, step="remove", what=what)
            self.mtools.run("mrd" if entry.is_dir else "mdel", path, step="remove", what=what)
            self.reader.forget()
            if self._still_there(rel, entry):  # mtools can exit 0 when its write failed
                raise StickIOError("remove", what, errno=errno.EIO, detail=f"{rel} is still there after mdel/mrd")

        self._journaled(sw, snap, what, [("remove", delete), ("fsync", lambda: os.fsync(self.fd))])

    def _addr(self, rel: str) -> str:
        """The mtools path of an existing entry: each part by its long name, else its 8.3 name - the first that
        mtools takes as typed and that finds no other entry of its directory; refused when neither does."""
        parts = split_rel(rel)
        out: list[str] = []
        cluster: int | None = None
        for i, part in enumerate(parts):
            entries = self.reader.dir_entries(cluster)
            entry = self.reader.find(cluster, part, entries)
            if entry is None:
                raise StickIOError("lookup", f"finding {rel} on {self.path}", errno=errno.ENOENT)
            name = next((n for n in (entry.name, entry.short_name) if ADDRESSABLE.fullmatch(n)
                         and not any(e is not entry and e.matches(n) for e in entries)), None)
            if name is None:
                raise StickConflict(f"{entry.name!r} on the stick cannot be named unambiguously to mtools",
                                    reason="stick-ambiguous-name", hint="rename or remove it with another tool, "
                                    "or erase the stick (panostage stick prepare)")
            out.append(name)
            if i < len(parts) - 1:
                cluster = self.reader.subdir_cluster(entry)
        return "::/" + "/".join(out)

    def _still_there(self, rel: str, entry: DirEntry) -> bool:
        """Is this very entry (same slot) still in its directory?"""
        parts = split_rel(rel)
        cluster = None if len(parts) == 1 else self.reader.dir_cluster("/".join(parts[:-1]))
        return any(e.slots[-1] == entry.slots[-1] for e in self.reader.dir_entries(cluster))

    def wipe(self, rel: str, *, missing_ok: bool = False) -> int:
        """Overwrite the file's clusters with zeros in place, flush, then delete it; returns bytes zeroed.

        Only clusters the census found owned by this file alone are zeroed (a damaged stick is refused).
        """
        self.require_writable()
        self.check_sound()
        what = f"wiping {rel} on {self.path}"
        sw = Stopwatch(what)
        with sw.step("inspect"):
            entry = self._lookup(rel)
            if entry is None:
                if missing_ok:
                    return 0
                raise StickIOError("inspect", what, errno=errno.ENOENT)
            if entry.is_dir:
                raise StickConflict(f"{rel} on the stick is a directory", reason="stick-not-a-file")
            self._addr(rel)  # a name mtools could not be given is refused before a byte is zeroed
            clusters = self.reader.chain(entry.first_cluster)
        with sw.step("zero"):
            zeroed = self._zero_clusters(clusters)
            os.fsync(self.fd)
        self.remove(rel)
        return zeroed

    # ------------------------------------------------------------ formatting
    def format(self, label: str | None = None) -> None:
        """mkfs.fat over the same extent, keeping FAT type, cluster size, volume id and (unless given) label."""
        self.require_writable()
        geo = self.geo
        if geo.offset % geo.bytes_per_sector:
            raise StickRefused(f"{self.path}: the filesystem starts at byte {geo.offset}, no multiple of its "
                               f"{geo.bytes_per_sector}-byte sectors; mkfs.fat places filesystems at whole sectors only",
                               reason="stick-unsupported-layout", hint="wipe it instead (without --format)")
        keep_label = self._label() if label is None else (label or None)
        argv = ["mkfs.fat", "-F", str(geo.fat_bits), "-S", str(geo.bytes_per_sector), "-s", str(geo.sectors_per_cluster),
                "-f", str(geo.num_fats), "-M", f"0x{geo.media:02X}"]
        if geo.fat_bits != 32:
            argv += ["-r", str(geo.root_entries)]
        if keep_label:
            argv += ["-n", keep_label]
        if geo.serial is not None:
            argv += ["-i", f"{geo.serial:08X}"]
        if geo.offset:
            argv.append(f"--offset={geo.offset // geo.bytes_per_sector}")
        if geo.hidden_sectors or geo.offset:
            argv += ["-h", str(geo.hidden_sectors)]
        if self.block:
            argv.append("-I")
        blocks = str(geo.size_bytes // 1024)
        what = f"formatting {self.path}"
        sw = Stopwatch(what)
        if self.block:
            # mkfs.fat insists on O_EXCL itself: hand over our claim for its run, then take it back
            argv += [str(self.path), blocks]
            with sw.step("release"):
                if os.stat(self.path).st_rdev != self._rdev:
                    raise StickRefused(f"{self.path} now names another device", reason="stick-replaced")
                os.fsync(self.fd)
                os.close(self._fd)
                self._fd = None
            try:
                with sw.step("mkfs"):
                    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
            finally:
                with sw.step("reclaim"):
                    try:
                        fd, _ = open_held(self.path, True, os.stat(self.path))
                    except StickRefused:
                        raise
                    if os.fstat(fd).st_rdev != self._rdev:
                        os.close(fd)
                        raise StickRefused(f"{self.path} now names another device", reason="stick-replaced")
                    self._fd = fd
        else:
            argv += [f"/dev/fd/{self.fd}", blocks]
            with sw.step("mkfs"):
                proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300,
                                      pass_fds=(self.fd,))
        if proc.returncode != 0:
            raise StickIOError("mkfs", what, detail=f"mkfs.fat exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        with sw.step("reread"):
            os.fsync(self.fd)
            try:
                self._set_geometry(parse_boot_sector(os.pread(self.fd, 512, geo.offset), geo.offset))
            except NotFat as exc:
                raise StickIOError("reread", what, detail=f"mkfs.fat exited 0 but no FAT is at byte {geo.offset}: "
                                   f"{exc.found}") from exc

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

    def __enter__(self) -> "FatTarget":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_memory(fd: int) -> None:
    """Close the memfd holding the bytes: nothing can be lost there, so a failing close is no failure
    (raised after a successful rename, it would hide that the archive is in place)."""
    try:
        os.close(fd)
    except OSError:
        pass
