"""A medium without a filesystem: worth telling about (status, log) when it could be a stick, with its reason."""

from __future__ import annotations

import dataclasses

from agent.config import StickSettings
from agent.udev.info import StickInfo
from agent.udev.policy import decide

PARTITION = StickInfo(
    syspath="/sys/devices/x/block/sdb/sdb1",
    devnode="/dev/sdb1",
    devtype="partition",
    fs_type=None,
    fs_usage=None,
    fs_label=None,
    fs_uuid=None,
    usb_serial="S1",
    usb_driver="usb-storage",
    is_usb=True,
    removable=True,
    vendor=None,
    model=None,
    disk_syspath="/sys/devices/x/block/sdb",
    size_bytes=8 << 20,
    properties={"ID_PART_TABLE_TYPE": "dos", "PARTN": "1"},
)


def reason(info: StickInfo) -> str:
    return decide(info, StickSettings(require_enrollment=False), lambda _identity: True).reason


def test_a_blank_partition_is_not_told_to_use_a_partition():
    # udev imports ID_PART_TABLE_TYPE from the disk onto its partitions
    assert PARTITION.blank and reason(PARTITION) == "no filesystem"


def test_a_blank_partitioned_disk_is_told_to_use_a_partition():
    disk = dataclasses.replace(PARTITION, devtype="disk", syspath=PARTITION.disk_syspath, disk_syspath=None)
    assert reason(disk) == "no filesystem (partition table dos: use a partition)"


def test_what_is_no_medium_is_not_blank():
    assert not dataclasses.replace(PARTITION, size_bytes=0).blank  # a pulled card, a detached loop device
    assert not dataclasses.replace(PARTITION, size_bytes=1024).blank  # an extended partition's container
    assert not dataclasses.replace(PARTITION, devtype="disk", has_partitions=True).blank  # its partitions are
    assert not dataclasses.replace(PARTITION, fs_type="vfat", fs_usage="filesystem").blank
    assert dataclasses.replace(PARTITION, size_bytes=None).blank  # size unknown: told about


def test_another_kind_of_content_names_itself():
    swap = dataclasses.replace(PARTITION, fs_type="swap", fs_usage="other", properties={})
    assert reason(swap) == "no filesystem (swap, other)"
