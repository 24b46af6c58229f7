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

import os
import stat
import subprocess
from pathlib import Path

from agent.stick.errors import StickIOError, StickRefused
from agent.stick.fatgeo import NotFat, parse_boot_sector
from agent.stick.fatopen import locate, open_held
from agent.stick.fatwrite import FatWriting
from agent.stick.mtools import Wrap
from agent.stick.steps import Stopwatch


class FatTarget(FatWriting):
    """A FAT filesystem reached through an image file or a block device, never mounted.

    State and identity: :class:`agent.stick.fathandle.FatHandle`; census and room:
    :mod:`agent.stick.fatroom`; reading: :mod:`agent.stick.fatread`; writing: :mod:`agent.stick.fatwrite`.
    Here: opening one, and formatting it in place (which hands the held device to mkfs.fat and back).
    """

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        offset: int | None = None,
        partition: int | None = None,
        wrap: Wrap | None = None,
        runtime_dir: Path | None = None,
        readback: str = "direct",
    ) -> FatTarget:
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
            return cls(
                path,
                fd,
                block=block,
                writable=writable,
                geometry=geo,
                partition=part,
                wrap=wrap,
                runtime_dir=runtime_dir,
                readback=readback,
            )
        except BaseException:
            os.close(fd)
            raise

    def format(self, label: str | None = None) -> None:
        """mkfs.fat over the same extent, keeping FAT type, cluster size, volume id and (unless given) label."""
        self.require_writable()
        geo = self.geo
        if geo.offset % geo.bytes_per_sector:
            raise StickRefused(
                f"{self.path}: the filesystem starts at byte {geo.offset}, no multiple of its "
                f"{geo.bytes_per_sector}-byte sectors; mkfs.fat places filesystems at whole sectors only",
                reason="stick-unsupported-layout",
                hint="wipe it instead (without --format)",
            )
        keep_label = self._label() if label is None else (label or None)
        argv = [
            "mkfs.fat",
            "-F",
            str(geo.fat_bits),
            "-S",
            str(geo.bytes_per_sector),
            "-s",
            str(geo.sectors_per_cluster),
            "-f",
            str(geo.num_fats),
            "-M",
            f"0x{geo.media:02X}",
        ]
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
                os.close(self.fd)
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
                proc = subprocess.run(
                    argv, capture_output=True, text=True, check=False, timeout=300, pass_fds=(self.fd,)
                )
        if proc.returncode != 0:
            raise StickIOError("mkfs", what, detail=f"mkfs.fat exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        with sw.step("reread"):
            os.fsync(self.fd)
            try:
                self._set_geometry(parse_boot_sector(os.pread(self.fd, 512, geo.offset), geo.offset))
            except NotFat as exc:
                raise StickIOError(
                    "reread", what, detail=f"mkfs.fat exited 0 but no FAT is at byte {geo.offset}: {exc.found}"
                ) from exc

    def __enter__(self) -> FatTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
