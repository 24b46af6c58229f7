"""Fault injection with libfiu: writes and fsyncs fail (ENOSPC/EIO) at the first and at a later call.

Where the writes happen decides how faults get in:

* FatTarget's filesystem writes are done by mtools children: those run under ``fiu-run -x``
  (through the :class:`~agent.stick.mtools.Mtools` ``wrap`` seam), failing ``write`` in mcopy (the
  first call) or in mren (a later call, after the data is on the stick), or at a random call
  (libfiu's seeded PRNG) so mcopy stops half-way through its metadata.
* Our own calls (memfd write, fsync, a directory target's writes) fail inside a helper process
  started under ``fiu-run -x`` that arms libfiu through its C API to fail exactly the N-th call.

Every case: a clean StickIOError naming the step, no temporary file, the previous archive intact,
and ``fsck.fat -n`` clean.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ExitCode
from agent.stick import StickIOError, leftovers, open_target
from tests.fat_kit import fsck, mtools

pytestmark = pytest.mark.skipif(
    shutil.which("fiu-run") is None or not os.path.exists("/usr/lib/fiu/fiu_posix_preload.so"),
    reason="libfiu (fiu-utils) not installed",
)

NAME = "certificates-omni_lab-device-1.zip"
OLD = b"previous archive " * 40
HELPER = Path(__file__).with_name("fiu_helper.py")


def fiu_wrap(tools: tuple[str, ...], command: str, seed: int | None = None):
    def wrap(tool: str, argv: list[str]) -> list[str]:
        if tool not in tools:
            return argv
        prefix = ["fiu-run", "-x", "-f", "", "-c", command]
        return (["env", f"FIU_PRNG_SEED={seed}"] if seed is not None else []) + prefix + argv

    return wrap


def seeded(image: Path) -> Path:
    mtools("mcopy", "-i", str(image), "-", f"::{NAME}", stdin=OLD)
    return image


def assert_clean(image: Path | None, target_dir: Path | None = None) -> None:
    if image is not None:
        with open_target(image) as target:
            assert leftovers(target) == []
            assert target.read(NAME) == OLD
        fsck(image)
    if target_dir is not None:
        assert sorted(os.listdir(target_dir)) == [NAME]
        assert (target_dir / NAME).read_bytes() == OLD


@pytest.mark.parametrize("tool, step", [("mcopy", "copy"), ("mren", "rename")])
@pytest.mark.parametrize("err", ["ENOSPC", "EIO"])
def test_mtools_write_fails(image: Path, tool: str, step: str, err: str) -> None:
    """mcopy's first write fails, or - a later call - mren's, after the data reached the stick."""
    seeded(image)
    command = f"enable name=posix/io/rw/write,failinfo={getattr(errno, err)}"
    with open_target(image, wrap=fiu_wrap((tool,), command)) as target:
        with pytest.raises(StickIOError) as exc:
            target.write_atomic(NAME, os.urandom(5000))
        assert exc.value.step == step and exc.value.exit_code == ExitCode.IO
        assert exc.value.errno == getattr(errno, err)
        assert step in exc.value.message and os.strerror(getattr(errno, err)) in exc.value.message
    assert_clean(image)


def test_mcopy_stopping_half_way_is_undone(image: Path) -> None:
    """Random write failures (seeded) stop mcopy between its data, directory, FAT and FSInfo writes."""
    seeded(image)
    pristine = image.read_bytes()
    undone = []
    for seed in range(1, 13):
        image.write_bytes(pristine)
        wrap = fiu_wrap(("mcopy",), f"enable_random name=posix/io/rw/write,probability=0.5,failinfo={errno.EIO}", seed)
        with open_target(image, wrap=wrap) as target:
            try:
                target.write_atomic(NAME, os.urandom(20_000))
            except StickIOError as exc:
                assert exc.step in ("copy", "rename") and exc.errno == errno.EIO
                undone.append(exc.details.get("undone_bytes", 0))
            else:
                assert target.read(NAME) != OLD
                fsck(image)
                continue
        assert_clean(image)
    assert undone, "no seed made mcopy fail"
    assert any(n > 0 for n in undone), "no seed left a half-written filesystem to undo"


def run_helper(spec: Path, point: str, at: int, err: str, *, size: int = 5000, allow_non_fat: bool = False) -> dict:
    argv = [
        "fiu-run",
        "-x",
        "-f",
        "",
        sys.executable,
        str(HELPER),
        str(spec),
        "--name",
        NAME,
        "--size",
        str(size),
        "--point",
        point,
        "--at",
        str(at),
        "--errno",
        err,
    ] + (["--allow-non-fat"] if allow_non_fat else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    "point, at, err, step",
    [
        ("posix/io/rw/write", 1, "ENOSPC", "memfd"),  # the archive cannot even reach memory
        ("posix/io/sync/fsync", 1, "EIO", "fsync"),  # first flush, after mcopy
        ("posix/io/sync/fsync", 2, "EIO", "fsync_rename"),  # a later flush, after mren
    ],
)
def test_our_own_calls_fail_on_an_image(image: Path, point: str, at: int, err: str, step: str) -> None:
    seeded(image)
    result = run_helper(image, point, at, err)
    assert not result["ok"] and result["step"] == step and result["errno"] == getattr(errno, err)
    assert result["error"]["exit_code"] == ExitCode.IO
    assert_clean(image)


@pytest.mark.parametrize(
    "point, at, err, step, size",
    [
        ("posix/io/rw/write", 1, "ENOSPC", "write", 5000),  # first write
        ("posix/io/rw/write", 2, "EIO", "write", 3 * 1024 * 1024),  # a later write (1 MiB chunks)
        ("posix/io/sync/fsync", 1, "EIO", "fsync", 5000),  # file flush
        ("posix/io/sync/fsync", 2, "EIO", "fsync_dir", 5000),  # directory flush, after the rename
    ],
)
def test_directory_target_calls_fail(tmp_path: Path, point: str, at: int, err: str, step: str, size: int) -> None:
    root = tmp_path / "stick"
    root.mkdir()
    (root / NAME).write_bytes(OLD)
    result = run_helper(root, point, at, err, size=size, allow_non_fat=True)
    assert not result["ok"] and result["step"] == step and result["errno"] == getattr(errno, err)
    if step == "fsync_dir":
        # the rename had happened: the new file is wiped and removed, the old one was already replaced
        assert os.listdir(root) == []
    else:
        assert_clean(None, root)
