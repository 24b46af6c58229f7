"""Block devices as udev sees them: a snapshot per device (:class:`StickInfo`), the stick policy
(:func:`decide`) and a coldplug + hotplug event source for a poll loop (:class:`Watcher`)."""

from agent.udev.info import (
    USB_STORAGE_DRIVERS,
    StickInfo,
    device_for_path,
    normalize_identity,
    partitions_of,
    stick_info,
)
from agent.udev.policy import Decision, decide, label_matches
from agent.udev.watcher import StickEvent, Watcher, same_filesystem, udev_monitor

__all__ = [
    "USB_STORAGE_DRIVERS",
    "Decision",
    "StickEvent",
    "StickInfo",
    "Watcher",
    "decide",
    "device_for_path",
    "label_matches",
    "normalize_identity",
    "partitions_of",
    "same_filesystem",
    "stick_info",
    "udev_monitor",
]
