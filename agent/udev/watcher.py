"""Block devices coming and going, as :class:`StickEvent` objects, for a poll loop.

No pyudev ``MonitorObserver`` (one exception in its callback kills its thread silently): the
daemon polls :meth:`Watcher.fileno` in its own loop and calls :meth:`Watcher.read`.  The udev
context and monitor come from injected factories (TuneD's ``inventory.py``), so tests can hand
in a umockdev testbed or wrap them.  Single-threaded: use one watcher from one thread.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import pyudev

from agent.udev.info import StickInfo, stick_info

LOG = logging.getLogger("agent.udev")

Action = Literal["add", "change", "remove"]
#: Events handled per :meth:`Watcher.read` at most; the socket stays readable for the rest.
MAX_PER_READ = 512


@dataclass(frozen=True)
class StickEvent:
    """A filesystem appeared (``add``), changed (``change``) or went away (``remove``).  A blank medium (no
    filesystem, not a partitioned disk: :attr:`StickInfo.blank`) is reported too, so it can be told why it is ignored.

    ``info`` is the device now (None when udev removed it; on a ``remove`` caused by a pulled
    medium or a wiped filesystem it is the device without its filesystem).  ``known`` is what
    the watcher knew about ``syspath`` before this event (None for a first ``add``).  A
    ``change`` whose ``info.fs_uuid``/``fs_type`` differ from ``known``'s is a media change; one
    with the same filesystem is a content change (also our own writes: udev watch).
    """

    action: Action
    syspath: str
    info: StickInfo | None
    known: StickInfo | None

    @property
    def media_changed(self) -> bool:
        """A ``change`` to another filesystem (another card in the reader, a reformat)."""
        return self.action == "change" and not same_filesystem(self.info, self.known)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "syspath": self.syspath,
            "info": self.info.to_dict() if self.info else None,
            "known": self.known.to_dict() if self.known else None,
        }


def same_filesystem(a: StickInfo | None, b: StickInfo | None) -> bool:
    """Both describe the same filesystem (type and UUID)."""
    return a is not None and b is not None and (a.fs_type, a.fs_uuid) == (b.fs_type, b.fs_uuid)


def receive_buffer_size(fd: int) -> int | None:
    """SO_RCVBUF of a socket (the kernel reports twice what was asked), or None if unreadable."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError:
        return None


def socket_error(fd: int) -> int | None:
    """Take the socket's pending error (SO_ERROR; reading it clears it), or None if unreadable."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError:
        return None


def udev_monitor(context: pyudev.Context) -> pyudev.Monitor:
    """The production monitor: udev-processed events only (``kernel`` ones lack ID_FS_*, ID_SERIAL_SHORT)."""
    return pyudev.Monitor.from_netlink(context, source="udev")


class Watcher:
    """Coldplug + hotplug of block devices that carry a filesystem (or a blank medium), deduplicated by sys path."""

    def __init__(
        self,
        *,
        context_factory: Callable[[], pyudev.Context] = pyudev.Context,
        monitor_factory: Callable[[pyudev.Context], pyudev.Monitor] = udev_monitor,
        receive_buffer_bytes: int = 128 << 20,
        log: logging.Logger = LOG,
        describe: Callable[[pyudev.Device], StickInfo] = stick_info,
    ) -> None:
        self._context_factory = context_factory
        self._monitor_factory = monitor_factory
        self._receive_buffer_bytes = receive_buffer_bytes
        self._log = log
        self._describe = describe
        self._context: pyudev.Context | None = None
        self._monitor: pyudev.Monitor | None = None
        self._known: dict[str, StickInfo] = {}
        self.skipped = 0  #: devices that could not be described (logged, never fatal)
        self.resyncs = 0  #: times the socket overflowed (ENOBUFS) and the state was rebuilt

    # ------------------------------------------------------------ lifetime
    def start(self) -> list[StickEvent]:
        """Listen first, then enumerate: the devices present, as ``add`` events.

        In that order nothing added in between is lost (it shows up in the enumeration, in the
        monitor's queue, or both: the duplicate is dropped by :meth:`read`).
        """
        if self._monitor is not None:
            raise RuntimeError("watcher already started")
        self._context = self._context_factory()
        self._monitor = self._listen(self._context)
        return self._scan()

    def _listen(self, context: pyudev.Context) -> pyudev.Monitor:
        monitor = self._monitor_factory(context)
        monitor.filter_by("block")
        self._raise_buffer(monitor)
        monitor.start()
        return monitor

    def _raise_buffer(self, monitor: pyudev.Monitor) -> None:
        """Enlarge the socket's receive buffer to ``receive_buffer_bytes``, never shrink it (libudev
        itself asks for 128 MiB where permitted).  EPERM (no CAP_NET_ADMIN) is logged, not fatal."""
        wanted = self._receive_buffer_bytes
        if not wanted:
            return
        current = receive_buffer_size(monitor.fileno())
        if current is not None and current >= wanted:
            self._log.debug("udev monitor: receive buffer already %d bytes", current)
            return
        try:
            monitor.set_receive_buffer_size(wanted)
        except OSError as exc:
            level = logging.INFO if exc.errno == errno.EPERM else logging.WARNING
            self._log.log(
                level,
                "udev monitor: cannot raise receive buffer to %d bytes (it stays %s): %s",
                wanted,
                current,
                exc.strerror or exc,
            )

    def fileno(self) -> int:
        """The monitor's socket: readable when :meth:`read` has something to do."""
        if self._monitor is None:
            raise RuntimeError("watcher not started")
        fileno: int = self._monitor.fileno()
        return fileno

    def close(self) -> None:
        """Drop the monitor (its socket closes with the last reference) and what was known."""
        self._monitor = None
        self._context = None
        self._known.clear()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def known(self) -> dict[str, StickInfo]:
        """What the watcher currently believes: sys path -> last description (a copy)."""
        return dict(self._known)

    # ------------------------------------------------------------ events
    def read(self) -> list[StickEvent]:
        """Drain what is ready, without blocking.  Never raises for one bad device.

        On a receive-buffer overflow (ENOBUFS: events were lost) the state is rebuilt from a
        fresh enumeration and the differences are reported as events.
        """
        if self._monitor is None:
            raise RuntimeError("watcher not started")
        events: list[StickEvent] = []
        for _ in range(MAX_PER_READ):
            try:
                device = self._monitor.poll(timeout=0)
            except OSError as exc:
                # libudev reports the overflow as ENOBUFS from recvmsg; pyudev's poll() sees POLLERR
                # first and raises an OSError without errno: the socket's pending error says which
                code = exc.errno if exc.errno is not None else socket_error(self._monitor.fileno())
                if code != errno.ENOBUFS:
                    raise
                self.resyncs += 1
                self._log.warning("udev monitor overflowed (events lost): re-enumerating block devices")
                events.extend(self._scan(resync=True))
                continue
            if device is None:
                break
            event = self._observe(device, device.action or "change")
            if event is not None:
                events.append(event)
        return events

    def _scan(self, resync: bool = False) -> list[StickEvent]:
        """Enumerate block devices as ``add``s; on ``resync``, also ``remove`` what vanished."""
        assert self._context is not None
        events = []
        seen = set()
        for device in self._enumerate():
            seen.add(device.sys_path)
            event = self._observe(device, "add")
            if event is not None:
                events.append(event)
        if resync:
            for syspath in sorted(set(self._known) - seen):
                events.append(StickEvent("remove", syspath, None, self._known.pop(syspath)))
        return events

    def _enumerate(self) -> Iterable[pyudev.Device]:
        assert self._context is not None
        devices: Iterable[pyudev.Device] = self._context.list_devices(subsystem="block")
        return devices

    def _observe(self, device: pyudev.Device, action: str) -> StickEvent | None:
        """Fold one device (from an event or the enumeration) into the map; the event to report, if any."""
        try:
            syspath = device.sys_path
        except Exception:  # noqa: BLE001 - contained: the watcher never dies of one device
            self._log.warning("udev: skipping an event without a sys path", exc_info=True)
            self.skipped += 1
            return None
        if action == "remove":
            known = self._known.pop(syspath, None)
            return StickEvent("remove", syspath, None, known) if known is not None else None
        if action not in ("add", "change"):
            return None  # bind/unbind/move/online/offline: nothing a filesystem cares about
        try:
            info = self._describe(device)
        except Exception as exc:  # noqa: BLE001 - contained
            self.skipped += 1
            self._log.warning(
                "udev: skipping %s of %s: cannot describe it: %s: %s",
                action,
                syspath,
                type(exc).__name__,
                exc,
                exc_info=self._log.isEnabledFor(logging.DEBUG),
            )
            return None
        known = self._known.get(syspath)
        if not info.has_filesystem and known is not None and known.has_filesystem:
            del self._known[syspath]  # medium pulled, filesystem wiped, loop device detached
            return StickEvent("remove", syspath, info, known)
        if not info.has_filesystem and not info.blank:
            if known is not None:  # a blank medium pulled
                del self._known[syspath]
                return StickEvent("remove", syspath, info, known)
            return None  # no medium, or a partitioned disk (its partitions are reported)
        self._known[syspath] = info
        if known is None:
            return StickEvent("add", syspath, info, None)
        if action == "add" and same_filesystem(info, known):
            return None  # coldplug and hotplug both saw it
        return StickEvent("change", syspath, info, known)
