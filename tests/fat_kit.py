"""Helpers for the stick tests: real FAT images (mkfs.fat), loop devices, mounts, fsck."""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.stick.mtools import BASE_ENV, missing_tools
from tests.helpers import wait_until as wait_for  # re-exported: the kit's name for it

MISSING = missing_tools() + [t for t in ("mkfs.fat", "fsck.fat") if shutil.which(t) is None]
if MISSING:
    pytest.skip(
        f"mtools/dosfstools missing: {', '.join(MISSING)} (apt-get install mtools dosfstools)", allow_module_level=True
    )

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (loop devices, mounts)")

SIZES = {12: "4M", 16: "16M", 32: "64M"}


def run(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, **kwargs)


def mtools_env() -> dict[str, str]:
    return {**os.environ, **BASE_ENV}


def make_image(
    path: Path,
    bits: int = 32,
    *,
    size: str | None = None,
    label: str | None = "PANOSTICK",
    volid: str = "1234ABCD",
    extra: tuple[str, ...] = (),
) -> Path:
    """A fresh FAT image made by mkfs.fat."""
    path.unlink(missing_ok=True)
    run("truncate", "-s", size or SIZES[bits], str(path))
    args = ["mkfs.fat", "-F", str(bits), "-i", volid, *extra]
    if label:
        args += ["-n", label]
    run(*args, str(path))
    return path


def make_mbr_image(path: Path, parts: list[tuple[int, int, int]], size_mb: int = 48) -> Path:
    """An image with an MBR; ``parts`` = [(type, start_sector, sectors)]."""
    path.unlink(missing_ok=True)
    run("truncate", "-s", f"{size_mb}M", str(path))
    mbr = bytearray(512)
    for i, (ptype, start, count) in enumerate(parts):
        struct.pack_into("<B3sB3sII", mbr, 446 + 16 * i, 0, b"\0\0\0", ptype, b"\0\0\0", start, count)
    mbr[510:512] = b"\x55\xaa"
    with open(path, "r+b") as handle:
        handle.write(mbr)
    return path


def mkfs_at(path: Path, start: int, count: int, bits: int = 32, label: str = "PART", volid: str = "11112222") -> None:
    run(
        "mkfs.fat",
        "-F",
        str(bits),
        "-n",
        label,
        "-i",
        volid,
        f"--offset={start}",
        "-h",
        str(start),
        str(path),
        str(count // 2),
    )


def mtools(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), input=stdin, capture_output=True, env=mtools_env(), check=True)


def fsck(path: Path | str, offset: int = 0, length: int | None = None) -> str:
    """``fsck.fat -n`` (never changes anything); returns its output, fails the test unless clean."""
    target = Path(path)
    if offset:
        part = target.with_name(target.name + ".part")
        with open(target, "rb") as src, open(part, "wb") as dst:
            src.seek(offset)
            dst.write(src.read(length) if length else src.read())
        target = part
    proc = run("fsck.fat", "-n", str(target), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"fsck.fat -n {target} is not clean:\n{out}"
    return out


def raw_contains(path: Path | str, needle: bytes) -> bool:
    with open(path, "rb") as handle:
        return needle in handle.read()


@contextlib.contextmanager
def loop_device(image: Path, *, readonly: bool = False) -> Iterator[str]:
    args = ["losetup", "-f", "--show"] + (["-r"] if readonly else []) + [str(image)]
    proc = run(*args, check=False)
    if proc.returncode != 0:
        pytest.skip(f"no loop device available: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield dev
    finally:
        run("losetup", "-d", dev, check=False)
        wait_for(lambda: not _loop_attached(dev, image), what=f"{dev} to detach")


def _loop_attached(dev: str, image: Path) -> bool:
    backing = Path(f"/sys/block/{Path(dev).name}/loop/backing_file")
    try:
        return backing.read_text().strip().removesuffix(" (deleted)") == str(image)
    except OSError:
        return False


@contextlib.contextmanager
def mounted(source: str, where: Path, *options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    proc = run("mount", *options, source, str(where), check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        run("umount", "-l", str(where), check=False)


def ext4_image(path: Path, size: str = "16M") -> Path:
    run("truncate", "-s", size, str(path))
    run("mkfs.ext4", "-q", "-F", str(path))
    return path
