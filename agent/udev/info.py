"""What udev knows about one block device, as a plain immutable snapshot (:class:`StickInfo`)."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pyudev

#: ``ID_USB_DRIVER`` values that mean USB mass storage (``ID_BUS`` is not trusted: FACTS).
USB_STORAGE_DRIVERS = frozenset({"usb-storage", "uas"})

_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_IDENTITY = re.compile(r"^(usb:[!-~]{1,255}|fs:[0-9A-Za-z-]{1,64})$")
_VFAT_UUID = re.compile(r"^[0-9a-fA-F]{4}-[0-9a-fA-F]{4}$")


#: Smaller than this is no stick's medium (an extended partition's container is a sector or two).
MIN_MEDIUM_BYTES = 64 << 10


@dataclass(frozen=True)
class StickInfo:
    """Everything known about one block device at one moment, from udev.

    A snapshot: a ``remove`` event carries almost nothing, so keep the one you had.
    """

    syspath: str
    devnode: str | None
    devtype: str  # "disk" | "partition"
    fs_type: str | None
    fs_usage: str | None
    fs_label: str | None
    fs_uuid: str | None
    usb_serial: str | None  # ID_SERIAL_SHORT
    usb_driver: str | None  # ID_USB_DRIVER
    is_usb: bool  # a usb parent, or ID_USB_DRIVER in usb-storage|uas
    removable: bool  # the disk's sysfs ``removable``
    vendor: str | None
    model: str | None
    disk_syspath: str | None  # the parent disk of a partition
    size_bytes: int | None = None  # sysfs ``size``; 0 when there is no medium (a pulled card, a detached loop device)
    has_partitions: bool = False  # a disk whose partitions the kernel knows (they are the candidates, not it)
    properties: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def has_filesystem(self) -> bool:
        """udev found a filesystem here (on a partition or on the whole disk: a superfloppy)."""
        return self.fs_usage == "filesystem" and bool(self.fs_type)

    @property
    def identity(self) -> str | None:
        """``usb:<ID_SERIAL_SHORT>`` for USB with a serial, else ``fs:<ID_FS_UUID>``, else None."""
        return self.identity_with(self.fs_uuid)

    def identity_with(self, fs_uuid: str | None) -> str | None:
        """The :attr:`identity` this device has once it carries the filesystem ``fs_uuid`` (``stick prepare``
        enrolls a stick before mkfs.fat writes its new filesystem): the one rule for both."""
        if self.is_usb and self.usb_serial:
            return f"usb:{self.usb_serial}"
        if fs_uuid:
            return f"fs:{fs_uuid}"
        return None

    @property
    def blank(self) -> bool:
        """A medium with no filesystem where a stick's would be (not a partitioned disk): worth telling about."""
        return (
            not self.has_filesystem
            and not self.has_partitions
            and (self.size_bytes is None or self.size_bytes >= MIN_MEDIUM_BYTES)
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["identity"] = self.identity
        data["has_filesystem"] = self.has_filesystem
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StickInfo:
        """The inverse of :meth:`to_dict` (derived keys ignored), e.g. for a snapshot kept in the state DB."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def normalize_identity(text: str) -> str:
    """``usb:<serial>`` or ``fs:<uuid>`` as :attr:`StickInfo.identity` spells it (vfat UUIDs upper-case);
    ValueError for anything else."""
    text = text.strip()
    if not _IDENTITY.match(text):
        raise ValueError(f"{text!r} is not a stick identity (usb:<USB serial> or fs:<filesystem UUID>)")
    kind, value = text.split(":", 1)
    return f"{kind}:{value.upper()}" if kind == "fs" and _VFAT_UUID.match(value) else text


def _unescape(value: str) -> str:
    """Undo udev's ``\\xNN`` encoding (``ID_FS_LABEL_ENC``)."""
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), value.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "replace")


def _attr(device: pyudev.Device | None, name: str) -> str | None:
    if device is None:
        return None
    value = device.attributes.get(name)
    if value is None:
        return None
    text = value.decode("utf-8", "replace").strip()
    return text or None


def stick_info(device: pyudev.Device) -> StickInfo:
    """Describe ``device`` (a block device from an event or an enumeration).

    Properties a partition lacks (serial, USB driver, vendor, model) are taken from its disk,
    the way udev's persistent-storage rules import them.  Raises whatever pyudev raises for a
    device it cannot read (undecodable properties, a vanished parent): callers contain it.
    """
    props = {str(k): str(device.properties[k]) for k in device.properties}
    devtype = props.get("DEVTYPE") or device.device_type or "disk"
    disk = device.find_parent("block", "disk") if devtype == "partition" else None
    disk_props: dict[str, str] = {}
    if disk is not None:
        disk_props = {str(k): str(disk.properties[k]) for k in disk.properties}

    def get(key: str) -> str | None:
        return props.get(key) or disk_props.get(key) or None

    label = props.get("ID_FS_LABEL_ENC")
    label = _unescape(label) if label else (props.get("ID_FS_LABEL") or None)
    usb_driver = get("ID_USB_DRIVER")
    holder = disk if disk is not None else device
    vendor = get("ID_VENDOR") or _attr(holder, "device/vendor")
    model = get("ID_MODEL") or _attr(holder, "device/model")
    return StickInfo(
        syspath=device.sys_path,
        devnode=device.device_node,
        devtype=devtype,
        fs_type=props.get("ID_FS_TYPE") or None,
        fs_usage=props.get("ID_FS_USAGE") or None,
        fs_label=label,
        fs_uuid=props.get("ID_FS_UUID") or None,
        usb_serial=get("ID_SERIAL_SHORT"),
        usb_driver=usb_driver,
        is_usb=device.find_parent("usb") is not None or usb_driver in USB_STORAGE_DRIVERS,
        removable=_attr(holder, "removable") == "1",
        vendor=vendor,
        model=model,
        disk_syspath=disk.sys_path if disk is not None else None,
        size_bytes=_size(device),
        has_partitions=devtype == "disk" and _has_partitions(device.sys_path),
        properties=props,
    )


def _size(device: pyudev.Device) -> int | None:
    sectors = _attr(device, "size")
    return int(sectors) * 512 if sectors and sectors.isdigit() else None


def _has_partitions(syspath: str) -> bool:
    """The kernel lists partitions as subdirectories with a ``partition`` file (cheaper than an enumeration)."""
    try:
        return any(os.path.exists(os.path.join(syspath, child, "partition")) for child in os.listdir(syspath))
    except OSError:
        return False


def device_for_path(path: str, context: pyudev.Context | None = None) -> pyudev.Device:
    """The udev device behind a block device node (symlinks such as /dev/disk/by-id/... resolved)."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        raise ValueError(f"{path} is not a block device")
    return pyudev.Devices.from_device_number(context or pyudev.Context(), "block", st.st_rdev)


def partitions_of(device: pyudev.Device) -> list[pyudev.Device]:
    """The partitions of a disk (none for a partition or a superfloppy)."""
    if device.device_type != "disk":
        return []
    return sorted(
        (c for c in device.children if c.subsystem == "block" and c.device_type == "partition"),
        key=lambda d: d.sys_path,
    )
