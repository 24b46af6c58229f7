"""The Watcher and the policy against a real systemd-udevd, with loop devices holding FAT images (root).

Our loop devices only: every event is matched by sys path (other tests may attach their own).
Deadlines everywhere; the only waits are select() on the watcher's socket and polled conditions.
"""

from __future__ import annotations

import os
import secrets
import select
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import StickSettings
from agent.udev import StickEvent, Watcher, decide
from tests.fat_kit import loop_device, make_image, needs_root, run

pytestmark = [needs_root, pytest.mark.root]


def wait_event(
    watcher: Watcher, match: Callable[[StickEvent], bool], *, timeout: float = 30, seen: list[StickEvent] | None = None
) -> StickEvent:
    """Read the watcher until an event matches (every event read is appended to ``seen``)."""
    deadline = time.monotonic() + timeout
    log = seen if seen is not None else []
    while True:
        for event in log:
            if match(event):
                log.remove(event)
                return event
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching event within {timeout}s; got {[(e.action, e.syspath) for e in log]}")
        ready, _, _ = select.select([watcher.fileno()], [], [], left)
        if ready:
            log.extend(watcher.read())


def fresh_fat(tmp_path: Path, bits: int = 32, label: str = "PANOLOOP") -> tuple[Path, str]:
    volid = secrets.randbits(32) | 0x10000000  # unique per test: other sessions' images must not match
    image = make_image(tmp_path / "stick.img", bits, volid=f"{volid:08X}", label=label)
    return image, f"{volid >> 16:04X}-{volid & 0xFFFF:04X}"


def syspath_of(dev: str) -> str:
    return os.path.realpath(f"/sys/class/block/{Path(dev).name}")


def test_loop_fat_add_own_change_and_remove(udevd, tmp_path: Path) -> None:
    image, uuid = fresh_fat(tmp_path)
    udevd.settle()  # a loop device detached by an earlier test is fully processed: its old fs is not "known"
    with Watcher() as watcher:
        watcher.start()
        seen: list[StickEvent] = []
        with loop_device(image) as dev:
            syspath = syspath_of(dev)
            added = wait_event(
                watcher, lambda e: e.syspath == syspath and e.info is not None and e.info.fs_uuid == uuid, seen=seen
            )
            assert added.action == "add" and added.known is None  # attaching is a kernel "change": new fs -> add
            info = added.info
            assert (info.devnode, info.devtype, info.fs_type, info.fs_usage, info.fs_uuid, info.fs_label) == (
                dev,
                "disk",
                "vfat",
                "filesystem",
                uuid,
                "PANOLOOP",
            )
            assert not info.is_usb and not info.removable and info.identity == f"fs:{uuid}"
            assert watcher.known()[syspath] == info

            assert decide(info, StickSettings(), lambda i: True).reason == "not USB mass storage"
            lab = StickSettings(allow_non_usb=True)
            assert decide(info, lab, {f"fs:{uuid}"}.__contains__).admitted
            assert decide(info, lab, lambda i: False).reason == f"not enrolled: fs:{uuid}"

            # our own write: closing a read-write descriptor makes udev re-probe (udev watch) -> "change",
            # same filesystem, so the daemon can tell it from a media change
            udevd.settle()
            seen.clear()
            seen.extend(watcher.read())
            before = int(Path("/sys/kernel/uevent_seqnum").read_text())
            os.close(os.open(dev, os.O_RDWR))
            changed = wait_event(
                watcher,
                lambda e: e.syspath == syspath and int((e.info.properties if e.info else {}).get("SEQNUM", 0)) > before,
                seen=seen,
            )
            assert changed.action == "change" and not changed.media_changed
            assert changed.info.fs_uuid == changed.known.fs_uuid == uuid
        # detached (a loop device stays; it loses its filesystem): remove, with what was known
        removed = wait_event(watcher, lambda e: e.syspath == syspath and e.action == "remove", seen=seen)
        assert removed.known.fs_uuid == uuid and removed.known.devnode == dev
        assert removed.info is not None and not removed.info.has_filesystem
        assert syspath not in watcher.known()


def test_coldplug_reports_an_attached_loop_once(udevd, tmp_path: Path) -> None:
    image, uuid = fresh_fat(tmp_path)
    with loop_device(image) as dev:
        udevd.wait_properties(dev, lambda p: p.get("ID_FS_UUID") == uuid, what="the FAT filesystem")
        with Watcher() as watcher:
            mine = [e for e in watcher.start() if e.syspath == syspath_of(dev)]
            assert [(e.action, e.info.fs_uuid) for e in mine] == [("add", uuid)]
            udevd.trigger(dev, "add")  # an overlapping hotplug add for the same device: no second report
            udevd.trigger(dev, "change")  # ... while a change still comes through (and proves the add was read)
            seen: list[StickEvent] = []
            event = wait_event(watcher, lambda e: e.syspath == syspath_of(dev), seen=seen)
            assert event.action == "change" and event.info.fs_uuid == uuid


def test_overflowed_socket_is_resynchronised(udevd, tmp_path: Path) -> None:
    """A real ENOBUFS: a tiny receive buffer, a burst of events; the watcher re-enumerates and still
    reports that the filesystem went away."""
    image, uuid = fresh_fat(tmp_path)

    def tiny(ctx):
        import pyudev

        monitor = pyudev.Monitor.from_netlink(ctx, source="udev")
        monitor.set_receive_buffer_size(1)  # the kernel's minimum, a few KiB
        return monitor

    with loop_device(image) as dev:
        syspath = syspath_of(dev)
        udevd.wait_properties(dev, lambda p: p.get("ID_FS_UUID") == uuid, what="the FAT filesystem")
        watcher = Watcher(monitor_factory=tiny, receive_buffer_bytes=0)
        try:
            assert [e.action for e in watcher.start() if e.syspath == syspath] == ["add"]
            for _ in range(40):  # far more than the buffer holds
                Path(syspath, "uevent").write_text("change")
            udevd.settle()
            run("losetup", "-d", dev)
            udevd.wait_properties(dev, lambda p: "ID_FS_UUID" not in p, what="the detach")
            udevd.settle()
            seen: list[StickEvent] = []
            removed = wait_event(watcher, lambda e: e.syspath == syspath and e.action == "remove", seen=seen)
            assert removed.known.fs_uuid == uuid
            assert watcher.resyncs >= 1
        finally:
            watcher.close()
