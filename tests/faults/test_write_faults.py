"""1. The stick write fails (ENOSPC, EIO) at the first and at a later call - the real CLI.

How the faults get in (the same ``panostage stage`` process in every case, against the
served authority; the seams are armed from the environment by ``tests/faults/shim``):

* FAT image target, mtools children: each ``mcopy`` or ``mren`` the CLI starts runs under
  ``fiu-run -x`` with ``write`` (or ``close``) failing: mcopy's first write is the first call
  of the stick write; mren's comes later, after the temporary file is on the stick and flushed.
* FAT image target, our own calls: the CLI runs under ``fiu-run -x`` (libfiu preloaded, nothing
  enabled) and libfiu fails the N-th ``write``/``fsync``/``close`` *inside write_atomic only*
  (armed through libfiu's C API around that call): write #1 puts the archive into its memfd,
  fsync #1 flushes mcopy's work, fsync #2 mren's, close #1 is the memfd's, after the rename.
* Mounted FAT target (fusefat; this kernel has no vfat), our own calls: write #1 is the archive
  (~2 KB, one call: there is no later write), fsync #1 the file, fsync #2 the directory after
  the rename, close #1 the file after its fsync.  ``rename`` is ``renameat`` here, which libfiu
  1.1 does not wrap: it is failed at the Python level (``os.replace`` raising OSError).
"""

from __future__ import annotations

import re

import pytest

from agent.errors import ExitCode
from tests.fat_kit import mtools
from tests.faults.matrix import Case, Expect, Stick, call_fault, mtools_fault, needs_fiu, needs_root, own_fault, unique

pytestmark = [needs_fiu]

IO = ExitCode.IO


def io_error(step: str, errno_name: str) -> Expect:
    return Expect(IO, cause=(f"step '{step}' failed", errno_name), reason="stick-io")


# (tool, libfiu point, errno, the step that must be named)
CHILDREN = [
    ("mcopy", "posix/io/rw/write", "ENOSPC", "copy"),
    ("mcopy", "posix/io/rw/write", "EIO", "copy"),
    ("mren", "posix/io/rw/write", "ENOSPC", "rename"),
    ("mren", "posix/io/rw/write", "EIO", "rename"),
    ("mcopy", "posix/io/oc/close", "EIO", None),  # mtools ignores close errors: the write is
    ("mcopy", "posix/io/oc/close", "ENOSPC", None),  # complete, read back and verified
    ("mren", "posix/io/oc/close", "EIO", None),
    ("mren", "posix/io/oc/close", "ENOSPC", None),
]


@pytest.mark.parametrize(
    "tool, point, err, step", CHILDREN, ids=[f"{t}-{p.rsplit('/', 1)[1]}-{e}" for t, p, e, _ in CHILDREN]
)
def test_mtools_child_fails_on_an_image(kit, station, tmp_path, tool, point, err, step):
    case = Case(kit, station, Stick.fat(tmp_path / "stick.img"), unique(f"w-{tool}"))
    case.stage(env=mtools_fault(tool, point, err))
    case.check(io_error(step, err) if step else Expect())


# (libfiu point, which call inside write_atomic, errno, step named, or None: the write survives it);
# close is counted only where write_atomic itself calls it (subprocess closes pipes too)
OWN_ON_IMAGE = [
    ("posix/io/rw/write", 1, "ENOSPC", "memfd"),
    ("posix/io/rw/write", 1, "EIO", "memfd"),
    ("posix/io/sync/fsync", 1, "ENOSPC", "fsync"),
    ("posix/io/sync/fsync", 1, "EIO", "fsync"),
    ("posix/io/sync/fsync", 2, "ENOSPC", "fsync_rename"),
    ("posix/io/sync/fsync", 2, "EIO", "fsync_rename"),
    ("posix/io/oc/close", 1, "EIO", None),  # the memfd's, after the rename: nothing to lose
    ("posix/io/oc/close", 1, "ENOSPC", None),
]


@pytest.mark.parametrize(
    "point, at, err, step", OWN_ON_IMAGE, ids=[f"{p.rsplit('/', 1)[1]}{a}-{e}" for p, a, e, _ in OWN_ON_IMAGE]
)
def test_own_call_fails_on_an_image(kit, station, tmp_path, point, at, err, step):
    case = Case(kit, station, Stick.fat(tmp_path / "stick.img"), unique("w-own"))
    env, prefix = own_fault(point, at, err, site="write_atomic" if point.endswith("close") else None)
    case.stage(env=env, prefix=prefix)
    case.check(io_error(step, err) if step else Expect())


OWN_ON_MOUNT = [
    ("posix/io/rw/write", 1, "ENOSPC", "write"),
    ("posix/io/rw/write", 1, "EIO", "write"),
    ("posix/io/sync/fsync", 1, "ENOSPC", "fsync"),
    ("posix/io/sync/fsync", 1, "EIO", "fsync"),
    ("posix/io/sync/fsync", 2, "ENOSPC", "fsync_dir"),
    ("posix/io/sync/fsync", 2, "EIO", "fsync_dir"),
    ("posix/io/oc/close", 1, "EIO", "fsync"),  # the temporary file's, after its fsync
    ("posix/io/oc/close", 1, "ENOSPC", "fsync"),
]


@needs_root
@pytest.mark.parametrize(
    "point, at, err, step", OWN_ON_MOUNT, ids=[f"{p.rsplit('/', 1)[1]}{a}-{e}" for p, a, e, _ in OWN_ON_MOUNT]
)
def test_own_call_fails_on_a_mounted_stick(kit, station, tmp_path, point, at, err, step):
    case = Case(kit, station, Stick.fat(tmp_path / "stick.img", "mount"), unique("w-mnt"))
    env, prefix = own_fault(point, at, err, site="write_atomic" if point.endswith("close") else None)
    case.stage(env=env, prefix=prefix)
    case.check(io_error(step, err))


@needs_root
@pytest.mark.parametrize("err", ["ENOSPC", "EIO"])
def test_rename_fails_on_a_mounted_stick(kit, station, tmp_path, err):
    case = Case(kit, station, Stick.fat(tmp_path / "stick.img", "mount"), unique("w-ren"))
    case.stage(env=call_fault("os.replace", 1, err))
    case.check(io_error("rename", err))


@needs_root
def test_a_failure_after_the_rename_takes_the_archive_back(kit, station, tmp_path):
    """An older file at the archive's name is replaced (rename over it); then a close fails (the
    old file's, kept open to scrub its content): the write reports failure after our archive is in
    place.  The hand-off fails, so the archive must not stay on the stick for a deleted device."""
    stick = Stick.fat(tmp_path / "stick.img", "mount")
    case = Case(kit, station, stick, unique("w-late"))
    name = f"certificates-omni_{case.name}.zip"
    mtools("mcopy", "-i", str(stick.image), "-", f"::/{name}", stdin=b"an older file at the name")
    case.begin()
    env, prefix = own_fault("posix/io/oc/close", 2, "EIO", site="write_atomic")
    case.stage(env=env, prefix=prefix)
    case.check(Expect(IO, cause=("step 'scrub_old' failed", "EIO"), reason="stick-io", scrubbed=(re.escape(name),)))
