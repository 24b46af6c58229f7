"""Run one udev scenario inside a umockdev testbed and print what the code under test reports.

Started by tests/udev/test_umockdev.py as ``umockdev-wrapper PYTHON umockdev_child.py SCENARIO...``:
libudev (hence pyudev) only sees the testbed in a process running under umockdev's preload.
Output: one JSON object per line on stdout (``{"scenario": ..., "step": ..., ...}``), ``done`` closing
each scenario; the pytest side asserts.
``--probe`` checks that umockdev works here and exits 0 (77 with a reason on stdout if not).

No sleeps: an event is waited for by polling the watcher's fd with a deadline, and "nothing
else arrived" is shown with a barrier - a ``change`` fired on a sentinel device; events arrive
in order, so once the sentinel's shows up everything fired before it has been read.
"""

from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import json
import logging
import os
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

GI_CANDIDATES = [
    os.environ.get("PANOSTAGE_TEST_GI_DIR", ""),
    "/usr/lib/python3/dist-packages/gi",
    f"/usr/lib/python3.{sys.version_info.minor}/site-packages/gi",
    f"/usr/lib64/python3.{sys.version_info.minor}/site-packages/gi",
]


def load_gi():
    """Import the system's PyGObject into this (venv) interpreter without putting the whole system
    site-packages on sys.path: only the ``gi`` package is loaded, and only if its ``_gi`` extension
    was built for this interpreter's ABI."""
    try:
        import gi

        return gi
    except ImportError:
        pass
    for path in filter(None, GI_CANDIDATES):
        pkg = Path(path)
        if not any((pkg / f"_gi{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            continue
        spec = importlib.util.spec_from_file_location("gi", pkg / "__init__.py", submodule_search_locations=[str(pkg)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["gi"] = module
        spec.loader.exec_module(module)
        return module
    raise ImportError(
        f"no PyGObject for Python {sys.version_info.major}.{sys.version_info.minor} "
        f"(looked in {', '.join(filter(None, GI_CANDIDATES))}): apt-get install python3-gi"
    )


def under_preload() -> bool:
    return "umockdev-preload" in os.environ.get("LD_PRELOAD", "")


def probe() -> int:
    try:
        gi = load_gi()
        gi.require_version("UMockdev", "1.0")
        from gi.repository import UMockdev
    except (ImportError, ValueError) as exc:
        print(f"umockdev's Python bindings are not usable: {exc} (apt-get install gir1.2-umockdev-1.0 python3-gi)")
        return 77
    if not under_preload():
        print("not running under umockdev's preload (start with umockdev-wrapper)")
        return 77
    UMockdev.Testbed.new()
    return 0


if "--probe" in sys.argv:
    sys.exit(probe())

gi = load_gi()
gi.require_version("UMockdev", "1.0")
import pyudev  # noqa: E402
from gi.repository import UMockdev  # noqa: E402

from agent.config import StickSettings  # noqa: E402
from agent.udev import StickEvent, Watcher, decide, stick_info  # noqa: E402
from agent.udev.watcher import receive_buffer_size  # noqa: E402
from tests.udev import trees  # noqa: E402

DEADLINE = 5.0


# ------------------------------------------------------------------ plumbing
CURRENT = {"scenario": None}


def emit(step: str, **data: Any) -> None:
    print(json.dumps({"scenario": CURRENT["scenario"], "step": step, **data}, default=str), flush=True)


def events_json(events: list[StickEvent]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in events]


class LogTap(logging.Handler):
    """Keep the watcher's log records (the parent asserts that skips and EPERM were logged)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"level": record.levelname, "message": record.getMessage()})


TAP = LogTap()
logging.getLogger("agent.udev").addHandler(TAP)
logging.getLogger("agent.udev").setLevel(logging.INFO)


class Bed:
    """A umockdev testbed with the helpers the scenarios need."""

    def __init__(self) -> None:
        self.tb = UMockdev.Testbed.new()
        self.root = Path(self.tb.get_root_dir())

    def add(self, built: tuple[str, dict[str, str]]) -> dict[str, str]:
        """Add a tree; umockdev announces each new device itself (an ``add`` uevent, parents first)."""
        record, paths = built
        # umockdev aborts on a device that exists already: shared parents (hubs, PCI) go in once
        fresh = [
            para
            for para in record.split("\n\n")
            if para.strip() and not (self.root / "sys" / para.split("\n", 1)[0][3:].lstrip("/") / "uevent").exists()
        ]
        record = "\n\n".join(fresh) + "\n\n"
        if not self.tb.add_from_string(record):
            raise RuntimeError("umockdev refused a record")
        return paths

    def uevent(self, syspath: str, action: str) -> None:
        self.tb.uevent(syspath, action)

    def _uevent_file(self, syspath: str) -> Path:
        return self.root / syspath.lstrip("/") / "uevent"

    def props(self, syspath: str) -> dict[str, str]:
        lines = self._uevent_file(syspath).read_bytes().decode("utf-8", "surrogateescape").splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def set_props(
        self,
        syspath: str,
        set_: dict[str, str] | None = None,
        drop: tuple[str, ...] = (),
        keep_only: tuple[str, ...] | None = None,
    ) -> None:
        """Rewrite the device's properties (umockdev keeps them in the sysfs uevent file)."""
        props = self.props(syspath)
        if keep_only is not None:
            props = {k: v for k, v in props.items() if k in keep_only}
        for key in drop:
            props.pop(key, None)
        props.update(set_ or {})
        self._uevent_file(syspath).write_bytes(trees.uevent_lines(props))

    def append_raw(self, syspath: str, raw: bytes) -> None:
        with open(self._uevent_file(syspath), "ab") as handle:
            handle.write(raw)

    def unplug(self, paths: dict[str, str]) -> None:
        """Like the kernel: partitions first, remove events carrying only the kernel's properties."""
        for key in ("part", "disk"):
            if key in paths:
                self.set_props(paths[key], keep_only=("DEVNAME", "DEVTYPE", "MAJOR", "MINOR", "SUBSYSTEM"))
                self.uevent(paths[key], "remove")
        self.tb.remove_device(paths["disk"])


def wait_events(
    watcher: Watcher, until: Callable[[list[StickEvent]], bool], timeout: float = DEADLINE
) -> list[StickEvent]:
    """Read events until ``until(events)`` holds or the deadline passes (the parent then fails)."""
    events: list[StickEvent] = []
    deadline = time.monotonic() + timeout
    while not until(events):
        left = deadline - time.monotonic()
        if left <= 0:
            emit("timeout", got=events_json(events))
            break
        ready, _, _ = select.select([watcher.fileno()], [], [], left)
        if ready:
            events.extend(watcher.read())
    return events


def barrier(bed: Bed, watcher: Watcher, sentinel: str) -> list[StickEvent]:
    """Everything the watcher reports up to a change fired now on ``sentinel`` (which it must know)."""
    bed.uevent(sentinel, "change")
    events = wait_events(watcher, lambda evs: any(e.syspath == sentinel for e in evs))
    return [e for e in events if e.syspath != sentinel]


def sentinel_tree() -> tuple[str, dict[str, str]]:
    return trees.usb_stick(
        "sdz", port="2-9", host=30, minor=240, serial="SENTINEL", uuid="5E47-0000", label="SENTINEL", partitioned=False
    )


# ------------------------------------------------------------------ scenarios
def scenario_describe() -> None:
    """stick_info of every tree, and decide() with default settings (the parent runs the rest)."""
    bed = Bed()
    built = {
        "usb": trees.usb_stick("sdb"),
        "superfloppy": trees.usb_stick(
            "sdc", port="1-2", host=7, minor=32, serial="SUPER01", uuid="5555-0001", label="PANO 7", partitioned=False
        ),
        "ext4": trees.usb_stick(
            "sdd",
            port="1-3",
            host=10,
            minor=48,
            serial="EXT4STICK",
            fs_type="ext4",
            uuid="3f0e4a1c-9d3b-4c1e-8a61-2f6f0b6e1d2a",
            label="data",
        ),
        "sata": trees.sata_disk("sda"),
        "reader": trees.card_reader("sde"),
        "uas": trees.uas_without_usb_parent("sdf"),
        "noserial": trees.usb_stick(
            "sdg", port="1-5", host=11, minor=96, serial=None, uuid="7777-0001", label="PANONS", partitioned=False
        ),
        "blank": trees.usb_stick(
            "sdh", port="1-6", host=12, minor=112, serial="BLANK01", fs_type=None, partitioned=False
        ),
        "fixed-usb": trees.usb_stick(
            "sdi",
            port="1-7",
            host=13,
            minor=128,
            serial="USBSSD01",
            uuid="9999-0001",
            label="PANOSSD",
            partitioned=False,
            removable=False,
        ),
    }
    context = pyudev.Context()
    for name, (record, _) in built.items():
        paths = bed.add((record, _))
        for key, syspath in paths.items():
            info = stick_info(pyudev.Devices.from_sys_path(context, syspath))
            decision = decide(info, StickSettings(), lambda identity: False)
            emit("info", tree=name, node=key, info=info.to_dict(), decision=decision.to_dict())
    enumerated = sorted(d.sys_path for d in context.list_devices(subsystem="block"))
    emit("enumerated", syspaths=enumerated)


def scenario_coldplug() -> None:
    """Devices present before start are reported once, even when their add events also arrive."""
    bed = Bed()
    usb = bed.add(trees.usb_stick("sdb"))
    sata = bed.add(trees.sata_disk("sda"))
    sentinel = bed.add(sentinel_tree())["disk"]
    watcher = Watcher()
    emit("start", events=events_json(watcher.start()))
    for paths in (usb, sata):  # the hotplug events that overlap the coldplug
        for key in ("disk", "part"):
            bed.uevent(paths[key], "add")
    bed.uevent(sentinel, "add")
    emit("duplicates", events=events_json(barrier(bed, watcher, sentinel)))
    emit("known", syspaths=sorted(watcher.known()))
    watcher.close()


def scenario_hotplug() -> None:
    """Add a stick after start (disk + partition), then pull it (remove events carry almost nothing)."""
    bed = Bed()
    sentinel = bed.add(sentinel_tree())["disk"]
    watcher = Watcher()
    emit("start", events=events_json(watcher.start()))
    usb = bed.add(trees.usb_stick("sdb"))
    emit("add", events=events_json(barrier(bed, watcher, sentinel)), paths=usb)
    emit("known", syspaths=sorted(watcher.known()))
    bed.unplug(usb)
    emit("remove", events=events_json(barrier(bed, watcher, sentinel)))
    emit("known", syspaths=sorted(watcher.known()))
    watcher.close()


def scenario_media() -> None:
    """A card reader (superfloppy card): content change, card swapped, card pulled, card inserted."""
    bed = Bed()
    sentinel = bed.add(sentinel_tree())["disk"]
    reader = bed.add(trees.card_reader("sde"))["disk"]
    watcher = Watcher()
    emit("start", events=events_json(watcher.start()))
    bed.uevent(reader, "change")  # same card, e.g. our own write (udev watch)
    emit("same", events=events_json(barrier(bed, watcher, sentinel)))
    bed.set_props(
        reader,
        {
            "ID_FS_UUID": "BBBB-0002",
            "ID_FS_UUID_ENC": "BBBB-0002",
            "ID_FS_LABEL": "PANOCARD2",
            "ID_FS_LABEL_ENC": "PANOCARD2",
            "DISK_MEDIA_CHANGE": "1",
        },
    )
    bed.uevent(reader, "change")
    emit("swapped", events=events_json(barrier(bed, watcher, sentinel)))
    bed.set_props(
        reader,
        {"DISK_MEDIA_CHANGE": "1"},
        drop=(
            "ID_FS_TYPE",
            "ID_FS_USAGE",
            "ID_FS_UUID",
            "ID_FS_UUID_ENC",
            "ID_FS_LABEL",
            "ID_FS_LABEL_ENC",
            "ID_FS_VERSION",
        ),
    )
    bed.tb.set_attribute(reader, "size", "0")
    bed.uevent(reader, "change")
    emit("pulled", events=events_json(barrier(bed, watcher, sentinel)))
    bed.uevent(reader, "change")  # the empty reader polled again: nothing to report
    emit("empty", events=events_json(barrier(bed, watcher, sentinel)))
    bed.set_props(
        reader,
        {
            "ID_FS_TYPE": "vfat",
            "ID_FS_USAGE": "filesystem",
            "ID_FS_UUID": "CCCC-0003",
            "ID_FS_LABEL": "PANOCARD3",
            "DISK_MEDIA_CHANGE": "1",
        },
    )
    bed.tb.set_attribute(reader, "size", "2097152")
    bed.uevent(reader, "change")
    emit("inserted", events=events_json(barrier(bed, watcher, sentinel)))
    watcher.close()


def _break(bed: Bed, paths: dict[str, str]) -> None:
    # a property value that is not UTF-8: pyudev cannot decode it, so stick_info raises
    bed.append_raw(paths["disk"], b"ID_MODEL=Fl\xe4sh\xff\n")


def scenario_broken() -> None:
    """A device stick_info cannot describe is skipped (coldplug and hotplug); the watcher goes on."""
    bed = Bed()
    sentinel = bed.add(sentinel_tree())["disk"]
    good = bed.add(trees.usb_stick("sdb"))
    _break(
        bed,
        bed.add(
            trees.usb_stick(
                "sdx", port="1-8", host=20, minor=160, serial="BROKEN1", uuid="BAD0-0001", partitioned=False
            )
        ),
    )
    watcher = Watcher()
    emit("start", events=events_json(watcher.start()), skipped=watcher.skipped)
    # hotplug: the partition's event is fine, but its disk (read from sysfs by stick_info) is not
    paths = bed.add(trees.usb_stick("sdy", port="1-9", host=21, minor=176, serial="BROKEN2", uuid="BAD0-0002"))
    _break(bed, paths)
    bed.uevent(paths["part"], "change")
    after = bed.add(
        trees.usb_stick("sdg", port="1-5", host=11, minor=96, serial="AFTER01", uuid="AF7E-0001", partitioned=False)
    )
    emit(
        "hotplug",
        events=events_json(barrier(bed, watcher, sentinel)),
        skipped=watcher.skipped,
        after=after,
        good=good,
        broken=paths,
        logs=TAP.records,
    )
    watcher.close()


class Hooked:
    """Wrap a pyudev object; run ``hook`` once right after the wrapped step finishes."""

    def __init__(self, inner: Any, fire: Callable[[], None]) -> None:
        self._inner = inner
        self._fire = fire

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class HookedMonitor(Hooked):
    def start(self) -> None:
        self._inner.start()
        self._fire()


class HookedContext(Hooked):
    def list_devices(self, **kwargs: Any):
        yield from self._inner.list_devices(**kwargs)
        self._fire()


class EnumerateFirst(Watcher):
    """The mistake the order test must catch: enumerate, then start listening."""

    def start(self) -> list[StickEvent]:
        self._context = self._context_factory()
        events = self._scan()
        self._monitor = self._listen(self._context)
        return events


def scenario_order() -> None:
    """A device added between "start listening" and "enumerate" is not lost.

    The hook adds a stick (and fires its add events) right after whichever of the two steps the
    watcher does first.  Listening first: the monitor queues the events (and the enumeration may
    see the device too).  Enumerating first: the events go to nobody and the scan is over - the
    stick is lost.  ``EnumerateFirst`` runs the same test as a control, to show it can fail.
    """
    bed = Bed()
    sentinel = bed.add(sentinel_tree())["disk"]
    for variant, cls, name, minor in (
        ("listen-first", Watcher, "sdb", 16),
        ("enumerate-first", EnumerateFirst, "sdk", 144),
    ):
        fired: list[dict[str, str]] = []

        def fire(name: str = name, minor: int = minor, fired: list[dict[str, str]] = fired) -> None:
            if not fired:
                fired.append(
                    bed.add(
                        trees.usb_stick(
                            name,
                            port=f"3-{minor}",
                            host=minor,
                            minor=minor,
                            serial=f"RACE{minor}",
                            uuid=f"ACE0-{minor:04d}",
                        )
                    )
                )

        watcher = cls(
            context_factory=lambda: HookedContext(pyudev.Context(), fire),
            monitor_factory=lambda ctx: HookedMonitor(pyudev.Monitor.from_netlink(ctx._inner, source="udev"), fire),
        )
        started = watcher.start()
        later = barrier(bed, watcher, sentinel)
        emit("order", variant=variant, start=events_json(started), read=events_json(later), paths=fired[0])
        watcher.close()


class RecordingMonitor(Hooked):
    """Records the receive-buffer request; optionally refuses it like an unprivileged process (EPERM),
    or makes the next poll fail with ENOBUFS like an overflowed netlink socket."""

    def __init__(self, inner: Any, *, refuse: bool = False) -> None:
        super().__init__(inner, lambda: None)
        self.requested: list[int] = []
        self.refuse = refuse
        self.overflow = False

    def set_receive_buffer_size(self, size: int) -> None:
        self.requested.append(size)
        if self.refuse:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        self._inner.set_receive_buffer_size(size)

    def poll(self, timeout: float | None = None) -> Any:
        if self.overflow:
            self.overflow = False
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return self._inner.poll(timeout)


def scenario_buffer() -> None:
    """The receive buffer is raised where permitted (never shrunk); EPERM is logged and the watcher works on."""
    bed = Bed()
    sentinel = bed.add(sentinel_tree())["disk"]
    for n, (variant, wanted, refuse) in enumerate(
        (("raise", 384 << 20, False), ("keep", 4 << 20, False), ("eperm", 384 << 20, True)), start=1
    ):
        monitors: list[RecordingMonitor] = []

        def factory(
            ctx: pyudev.Context, refuse: bool = refuse, monitors: list[RecordingMonitor] = monitors
        ) -> RecordingMonitor:
            monitors.append(RecordingMonitor(pyudev.Monitor.from_netlink(ctx, source="udev"), refuse=refuse))
            return monitors[0]

        watcher = Watcher(monitor_factory=factory, receive_buffer_bytes=wanted)
        watcher.start()
        paths = bed.add(
            trees.usb_stick(
                f"sd{'bcd'[n - 1]}", port=f"4-{n}", host=40 + n, minor=16 * n, serial=f"BUF{n}", uuid=f"B0F0-000{n}"
            )
        )
        events = barrier(bed, watcher, sentinel)
        emit(
            "buffer",
            variant=variant,
            wanted=wanted,
            requested=monitors[0].requested,
            rcvbuf=receive_buffer_size(watcher.fileno()),
            events=events_json(events),
            paths=paths,
            logs=list(TAP.records),
        )
        TAP.records.clear()
        watcher.close()


def scenario_resync() -> None:
    """ENOBUFS (events lost): the watcher re-enumerates and reports the differences."""
    bed = Bed()
    sentinel = bed.add(sentinel_tree())["disk"]
    gone = bed.add(trees.usb_stick("sdb"))
    swapped = bed.add(trees.card_reader("sde"))["disk"]
    monitors: list[RecordingMonitor] = []

    def factory(ctx: pyudev.Context) -> RecordingMonitor:
        monitors.append(RecordingMonitor(pyudev.Monitor.from_netlink(ctx, source="udev")))
        return monitors[0]

    watcher = Watcher(monitor_factory=factory)
    emit("start", events=events_json(watcher.start()))
    # what happens while the socket overflows (umockdev still queues these events; after the resync
    # they are recognised as already known)
    bed.tb.remove_device(gone["disk"])
    new = bed.add(
        trees.usb_stick("sdg", port="1-5", host=11, minor=96, serial="NEW01", uuid="0E40-0001", partitioned=False)
    )
    bed.set_props(swapped, {"ID_FS_UUID": "BBBB-0002"})
    monitors[0].overflow = True
    bed.uevent(sentinel, "change")  # makes the fd readable; the poll then fails with ENOBUFS
    events = wait_events(watcher, lambda evs: len(evs) >= 3)
    events += barrier(bed, watcher, sentinel)
    emit(
        "resync",
        events=events_json(events),
        resyncs=watcher.resyncs,
        gone=gone,
        new=new,
        swapped=swapped,
        logs=TAP.records,
    )
    watcher.close()


SCENARIOS = {name[len("scenario_") :]: func for name, func in globals().items() if name.startswith("scenario_")}

if __name__ == "__main__":
    if not under_preload():
        sys.exit("run me under umockdev-wrapper")
    for wanted in sys.argv[1:]:  # each in a fresh testbed (the previous one is deleted with its Bed)
        CURRENT["scenario"] = wanted
        TAP.records.clear()
        SCENARIOS[wanted]()
        emit("done")
