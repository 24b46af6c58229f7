"""2. Sticks that must be refused - read-only, full, something in the archive's place, not FAT - and
3. (CLI) a stick that goes away in the middle of the write.

Refusals happen before any device is provisioned, so the stick must be byte-for-byte
unchanged and no device may exist.  The stick going away is simulated on a loop device (a
block device target, written with mtools while held with O_EXCL): this VM has no device
mapper or SCSI debug driver to really pull one, so from a chosen call on (``FAULTKIT_VANISH``)
every I/O of the CLI on the stick's descriptor fails with EIO (re-opening it with ENODEV) and
every later mtools child runs under libfiu with all reads and writes failing with EIO.
"""

from __future__ import annotations

import os

import pytest

from agent.errors import ExitCode
from tests.fat_kit import loop_device, mtools
from tests.faults.matrix import Case, Expect, Stick, needs_fiu, needs_root, run, secret_needles, unique, vanish_at

REFUSED = ExitCode.STICK_REFUSED


def _case(kit, station, stick: Stick, prefix: str) -> Case:
    return Case(kit, station, stick, unique(prefix))


def test_read_only_image_file(kit, station, tmp_path):
    stick = Stick.fat(tmp_path / "stick.img")
    stick.image.chmod(0o444)
    case = _case(kit, station, stick, "ro-img")
    case.stage()
    case.check(Expect(REFUSED, cause=("read-only",), reason="stick-read-only", untouched=True))


@needs_root
def test_read_only_block_device(kit, station, tmp_path):
    stick = Stick.fat(tmp_path / "stick.img")
    case = _case(kit, station, stick, "ro-dev")
    with loop_device(stick.image, readonly=True) as dev:
        stick.spec = dev
        case.result = station.run(*case.stage_args())
    case.check(Expect(REFUSED, cause=("read-only",), reason="stick-read-only", untouched=True))


def test_full_stick(kit, station, tmp_path):
    stick = Stick.fat(tmp_path / "small.img", bits=12, size="200K")
    mtools("mcopy", "-i", str(stick.image), "-", "::/filler.bin", stdin=os.urandom(150 * 1024))
    case = _case(kit, station, stick, "full")
    case.stage()
    case.check(Expect(ExitCode.IO, cause=("bytes free",), reason="stick-full", untouched=True))


def test_symlink_at_the_name_is_never_followed(kit, station, tmp_path):
    stick = Stick.fat(tmp_path / "stickdir", "dir")
    precious = tmp_path / "precious.txt"
    precious.write_bytes(b"keep me")
    case = Case(kit, station, stick, unique("sym"))  # the name first: the symlink goes in its place
    (stick.image / f"certificates-omni_{case.name}.zip").symlink_to(precious)
    case.begin()
    case.stage()
    case.check(
        Expect(ExitCode.CONFLICT, cause=("a symlink", "never followed"), reason="stick-occupied", untouched=True)
    )
    assert precious.read_bytes() == b"keep me"


@pytest.mark.parametrize("what", ["empty-dir", "dir-with-files", "read-only-file"])
def test_something_else_at_the_name(kit, station, tmp_path, what):
    stick = Stick.fat(tmp_path / "stick.img")
    case = Case(kit, station, stick, unique("occ"))
    at = f"::/certificates-omni_{case.name}.zip"
    if what == "read-only-file":
        mtools("mcopy", "-i", str(stick.image), "-", at, stdin=b"an older archive, read-only")
        mtools("mattrib", "-i", str(stick.image), "+r", at)
    else:
        mtools("mmd", "-i", str(stick.image), at)
        if what == "dir-with-files":
            mtools("mcopy", "-i", str(stick.image), "-", f"{at}/keep.txt", stdin=b"someone's file")
    case.begin()
    case.stage()
    cause, reason = {
        "empty-dir": ("is a directory", "stick-occupied"),
        "dir-with-files": ("a directory with files in it", "stick-name-is-dir"),
        "read-only-file": ("a read-only file", "stick-occupied"),
    }[what]
    case.check(Expect(ExitCode.CONFLICT, cause=(cause,), reason=reason, untouched=True))


@pytest.mark.parametrize("what", ["random-bytes", "ext4-image", "plain-directory"])
def test_not_fat(kit, station, tmp_path, what):
    if what == "plain-directory":
        stick = Stick(tmp_path / "stickdir", "dir", str(tmp_path / "stickdir"))
        stick.image.mkdir()
    else:
        image = tmp_path / "stick.img"
        if what == "random-bytes":
            image.write_bytes(os.urandom(1 << 20))
        else:
            run("truncate", "-s", "16M", str(image))
            run("mkfs.ext4", "-q", "-F", str(image))
        stick = Stick(image, "raw", str(image))
    case = Case(kit, station, stick, unique("nofat"))
    with case.kit.faults(None):
        case.result = station.run(*[a for a in case.stage_args() if a != "--allow-non-fat"])
    case.check(
        Expect(
            REFUSED,
            cause=("not fat",) if what == "plain-directory" else ("not a fat",),
            reason="stick-not-fat",
            untouched=True,
        )
    )


# ---------------------------------------------------------------------------- 3. the stick goes away


@needs_root
@needs_fiu
def test_stick_gone_as_the_write_begins(kit, station, tmp_path):
    """Gone before mcopy's first write: nothing reaches the stick, the device is deleted again."""
    stick = Stick.fat(tmp_path / "stick.img", "block")
    case = _case(kit, station, stick, "gone-early")
    case.stage(env=vanish_at("memfd_create", 1))
    case.check(
        Expect(ExitCode.IO, cause=("step 'copy' failed",), hint=("pulled out",), reason="stick-io", untouched=True)
    )


@needs_root
@needs_fiu
def test_stick_gone_after_the_temporary_file_reached_it(kit, station, tmp_path):
    """Gone after mcopy wrote the temporary file (the flush that follows fails): the undo cannot
    reach the stick, so the temporary file stays on it - but it is complete (fsck clean), it is
    not the archive's name, and the stick's next hand-off scrubs it (zeros, then unlink)."""
    stick = Stick.fat(tmp_path / "stick.img", "block")
    case = _case(kit, station, stick, "gone-late")
    case.stage(env=vanish_at("fsync", 1))
    temp = rf"\.certificates-omni_{case.name}\.zip\.[0-9]+\.tmp"
    learnt = case.check(
        Expect(
            ExitCode.IO,
            cause=("step 'fsync' failed", "EIO"),
            hint=("pulled out",),
            reason="stick-io",
            allow_left=(temp,),
        )
    )
    [left] = learnt["left"]
    old = learnt["archives"]
    assert len(old) == 1 and mtools("mtype", "-i", str(stick.image), f"::/{left}").stdout == old[0]
    # plugged in again: the next hand-off of the same device scrubs the leftover and goes through
    case.begin()
    case.stage()
    again = case.check(Expect(scrubbed=(temp,)))
    raw = stick.image.read_bytes()
    for label, needle in secret_needles(old[0]).items():  # scrubbed: zeros, not just unlinked
        assert needle not in raw, f"the leftover's {label} is still on the stick"
    assert again["device_id"] != learnt["record"]["device"]["id"]  # a new device; the first was deleted
