"""udev-rules/85-panostage.rules against a real systemd-udevd, with loop devices (root).

The rules file goes unmodified into /run/udev/rules.d, udevd reloads, and real loop devices get
real events.  A loop device has no USB parent, so "is USB mass storage" is supplied the way the
usb_id builtin supplies it on a real stick: a test-only rule sorted before ours (84-…) sets
ID_USB_DRIVER=usb-storage, and only on this test's own device, picked by a filesystem UUID (or
partition-table UUID) made up for the test.  Other loop devices on the machine never match.
Checked for each device: the udev database (properties, tag), ``udevadm test`` (which rule lines
ran), and the device node itself (group, mode) as the kernel reports it.
"""

from __future__ import annotations

import grp
import os
import secrets
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from tests.fat_kit import loop_device, make_image, mkfs_at, run
from tests.install.conftest import RULES_SRC, needs_root
from tests.udev_kit import udevadm

pytestmark = [needs_root, pytest.mark.root]

MARKS = ("UDISKS_IGNORE", "UDISKS_AUTO", "PANOSTAGE_STICK")


def fat_uuid(tmp: Path, name: str, bits: int = 16) -> tuple[Path, str]:
    volid = secrets.randbits(32) | 0x10000000
    image = make_image(tmp / f"{name}.img", bits, volid=f"{volid:08X}", label="PANOTEST")
    return image, f"{volid >> 16:04X}-{volid & 0xFFFF:04X}"


def settled_props(udevd, dev: str, want: dict[str, str]) -> dict[str, str]:
    """Re-announce ``dev`` (so the reloaded rules run on it) and wait for udev to have ``want``."""
    udevd.trigger(dev, "change")
    return udevd.wait_properties(
        dev, lambda p: all(p.get(k) == v for k, v in want.items()), what=f"udev to describe {dev} as {want}"
    )


def node(dev: str) -> tuple[int, int]:
    st = os.stat(dev)
    assert stat.S_ISBLK(st.st_mode)
    return st.st_gid, stat.S_IMODE(st.st_mode)


def tags(dev: str) -> set[str]:
    props = udevadm("info", "--query=property", dev).stdout
    for line in props.splitlines():
        if line.startswith("CURRENT_TAGS="):
            return {t for t in line.split("=", 1)[1].split(":") if t}
    return set()


def udevadm_test(dev: str) -> tuple[dict[str, str], list[str]]:
    """``udevadm test`` on the device: the properties it ends with (stdout) and the lines our rules
    file logged (stderr: GROUP/MODE assignments are named with file and line)."""
    sys_path = os.path.realpath(f"/sys/class/block/{Path(dev).name}")
    proc = subprocess.run(
        ["udevadm", "test", "--action=change", sys_path], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    props = dict(
        line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line and " " not in line.split("=")[0]
    )
    ours = [line for line in proc.stderr.splitlines() if f"{RULES_SRC.name}:" in line and "Reading rules" not in line]
    return props, ours


def assert_claimed(dev: str, gid: int) -> None:
    props = udevadm("info", "--query=property", dev).stdout
    assert "UDISKS_IGNORE=1" in props and "UDISKS_AUTO=0" in props and "PANOSTAGE_STICK=1" in props, props
    assert "panostage" in tags(dev)
    assert Path(f"/run/udev/tags/panostage/b{os.major(os.stat(dev).st_rdev)}:{os.minor(os.stat(dev).st_rdev)}").exists()
    assert node(dev) == (gid, 0o660), f"{dev}: gid/mode {node(dev)}, want ({gid}, 0o660)"
    props, ours = udevadm_test(dev)
    assert {k: props.get(k) for k in MARKS} == {"UDISKS_IGNORE": "1", "UDISKS_AUTO": "0", "PANOSTAGE_STICK": "1"}
    assert "panostage" in props["CURRENT_TAGS"].split(":"), props
    assert any(" GROUP " in line for line in ours) and any(" MODE 0660" in line for line in ours), ours
    assert not any("Unknown group" in line for line in ours), ours


def assert_untouched(dev: str, panostage_gid: int) -> None:
    props = udevadm("info", "--query=property", dev).stdout
    assert not any(line.split("=", 1)[0] in MARKS for line in props.splitlines()), props
    assert "panostage" not in tags(dev)
    gid, mode = node(dev)
    assert gid != panostage_gid, f"{dev}: still in the panostage group (mode {oct(mode)})"
    simulated, ours = udevadm_test(dev)
    assert not any(k in simulated for k in MARKS) and "panostage" not in simulated.get("CURRENT_TAGS", "").split(":")
    assert ours == [], ours


def test_usb_fat_whole_disk_is_claimed_and_plain_fat_is_not(
    udevd, runtime_rules, panostage_account, tmp_path: Path
) -> None:
    usb_image, usb_uuid = fat_uuid(tmp_path, "usb")
    plain_image, plain_uuid = fat_uuid(tmp_path, "plain")
    runtime_rules.fake_usb(f'ENV{{ID_FS_UUID}}=="{usb_uuid}"')
    with loop_device(usb_image) as usb, loop_device(plain_image) as plain:
        props = settled_props(udevd, usb, {"ID_FS_UUID": usb_uuid, "PANOSTAGE_STICK": "1"})
        assert props["ID_USB_DRIVER"] == "usb-storage" and props["ID_FS_TYPE"] == "vfat"
        assert "ID_BUS" not in props  # the rule does not need it
        assert_claimed(usb, panostage_account.gid)

        settled_props(udevd, plain, {"ID_FS_UUID": plain_uuid})
        assert "ID_USB_DRIVER" not in udevd.properties(plain)
        assert_untouched(plain, panostage_account.gid)

        # the group can open it read-write, others cannot: the panostage account, no capabilities
        probe = [
            "setpriv",
            "--reuid",
            "panostage",
            "--regid",
            "panostage",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
            "/usr/bin/python3",
            "-c",
            "import os,sys; os.close(os.open(sys.argv[1], os.O_RDWR | os.O_EXCL))",
        ]
        ok = subprocess.run([*probe, usb], capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        refused = subprocess.run([*probe, plain], capture_output=True, text=True, timeout=30)
        assert "PermissionError" in refused.stderr
        # detached: no filesystem any more; udev resets a block node's group only on "add", so the rule
        # itself must give the node back (udev's default for block devices: root:disk 0660)
        detach_and_check_given_back(udevd, usb, panostage_account.gid)


def detach_and_check_given_back(udevd, dev: str, panostage_gid: int) -> None:
    run("losetup", "-d", dev)
    udevd.wait_properties(dev, lambda p: "ID_FS_TYPE" not in p, what="the detached loop device")
    udevd.settle()
    assert node(dev) == (grp.getgrnam("disk").gr_gid, 0o660), f"{dev}: {node(dev)} after detaching"
    assert_untouched(dev, panostage_gid)


def test_reformatted_stick_is_given_back(udevd, runtime_rules, panostage_account, tmp_path: Path) -> None:
    """A claimed FAT stick reformatted as ext4 in place (a "change", not a new "add"): the node
    leaves the panostage group and loses the UDISKS_* marks."""
    image, uuid = fat_uuid(tmp_path, "reformat")
    runtime_rules.fake_usb(f'ENV{{ID_FS_UUID}}=="{uuid}"')
    with loop_device(image) as dev:
        settled_props(udevd, dev, {"ID_FS_UUID": uuid, "PANOSTAGE_STICK": "1"})
        assert node(dev) == (panostage_account.gid, 0o660)
        run("mkfs.ext4", "-q", "-F", dev)
        props = settled_props(udevd, dev, {"ID_FS_TYPE": "ext4"})
        assert "PANOSTAGE_STICK" not in props
        assert node(dev) == (grp.getgrnam("disk").gr_gid, 0o660)
        assert_untouched(dev, panostage_account.gid)


def test_usb_ext4_is_not_claimed(udevd, runtime_rules, panostage_account, tmp_path: Path) -> None:
    uuid = f"{secrets.token_hex(4)}-0000-4000-8000-{secrets.token_hex(6)}"
    image = tmp_path / "ext4.img"
    run("truncate", "-s", "16M", str(image))
    run("mkfs.ext4", "-q", "-F", "-U", uuid, str(image))
    runtime_rules.fake_usb(f'ENV{{ID_FS_UUID}}=="{uuid}"')
    with loop_device(image) as dev:
        props = settled_props(udevd, dev, {"ID_FS_UUID": uuid, "ID_USB_DRIVER": "usb-storage"})
        assert props["ID_FS_TYPE"] == "ext4"
        assert_untouched(dev, panostage_account.gid)


def test_usb_fat_partition_inherits_usb_from_its_disk(udevd, runtime_rules, panostage_account, tmp_path: Path) -> None:
    """A partitioned stick: usb_id's ID_USB_DRIVER sits on the disk and reaches the partition through
    60-persistent-storage's IMPORT{parent}; only the FAT partition's node is handed over."""
    image = tmp_path / "parted.img"
    run("truncate", "-s", "40M", str(image))
    signature = secrets.randbits(32) | 0x10000000
    mbr = bytearray(512)
    struct.pack_into("<I", mbr, 440, signature)
    struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\0\0\0", 0x0E, b"\0\0\0", 2048, 65536)
    mbr[510:512] = b"\x55\xaa"
    with open(image, "r+b") as handle:
        handle.write(mbr)
    volid = secrets.randbits(32) | 0x10000000
    mkfs_at(image, 2048, 65536, bits=16, label="PANOPART", volid=f"{volid:08X}")
    fs_uuid = f"{volid >> 16:04X}-{volid & 0xFFFF:04X}"
    runtime_rules.fake_usb(f'ENV{{DEVTYPE}}=="disk", ENV{{ID_PART_TABLE_UUID}}=="{signature:08x}"')
    proc = run("losetup", "-f", "--show", "-P", str(image), check=False)
    if proc.returncode != 0:
        pytest.skip(f"no loop device available: {proc.stderr.strip()}")
    disk = proc.stdout.strip()
    part = f"{disk}p1"
    try:
        settled_props(udevd, disk, {"ID_PART_TABLE_UUID": f"{signature:08x}", "ID_USB_DRIVER": "usb-storage"})
        udevd.settle()
        if not Path(part).exists():
            pytest.skip("the kernel made no partition device for the loop (no MBR support: CONFIG_MSDOS_PARTITION)")
        props = settled_props(udevd, part, {"ID_FS_UUID": fs_uuid, "PANOSTAGE_STICK": "1"})
        assert props["ID_USB_DRIVER"] == "usb-storage" and props["DEVTYPE"] == "partition"
        assert_claimed(part, panostage_account.gid)
        assert_untouched(disk, panostage_account.gid)  # the disk node holds a partition table, not a filesystem
    finally:
        run("losetup", "-d", disk, check=False)
        udevd.settle()


def test_rules_file_is_sorted_after_udisks() -> None:
    """udisks2 ships 80-udisks2.rules; our UDISKS_* must be applied after it."""
    assert RULES_SRC.name > "80-udisks2.rules" and RULES_SRC.name.split("-")[0].isdigit()
    text = RULES_SRC.read_text()
    assert "ID_BUS" not in "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    claim = text.split('LABEL="panostage_stick"', 1)[1].split("GOTO=", 1)[0]
    assert 'GROUP="panostage", MODE="0660"' in claim and "disk" not in claim


# ---------------------------------------------------------------- USB trees under umockdev
#
# Loop devices cannot show a USB parent. For the rule's other branches, `udevadm test` runs on
# umockdev testbeds of real-looking device trees (tests/udev/trees.py): the real rules, the real
# system rules (60-persistent-storage's usb_id and IMPORT{parent} included), a fake /sys.  udevadm
# test writes the udev database and /dev/disk links as it goes, and umockdev does not redirect
# those: it runs in a private mount namespace with tmpfs over them, so the host is left untouched.


def umockdev_test(tmp_path: Path, record: str, syspath: str) -> tuple[dict[str, str], list[str]]:
    if shutil.which("umockdev-run") is None or shutil.which("unshare") is None:
        pytest.skip("umockdev-run / unshare not installed (apt-get install umockdev util-linux)")
    rec = tmp_path / f"tree-{secrets.token_hex(3)}.umockdev"
    rec.write_text(record)
    private = " ".join(["/run/udev/data", "/run/udev/links", "/run/udev/tags", "/dev/disk", "/dev/block"])
    script = (
        f"for d in {private}; do [ -d $d ] && mount -t tmpfs tmpfs $d; done; "
        f"exec umockdev-run -d '{rec}' -- udevadm test --action=change '{syspath}'"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0 and ("unshare failed" in proc.stderr or "umockdev" in proc.stderr.splitlines()[0:1]):
        pytest.skip(f"umockdev does not work here: {proc.stderr.strip()[:300]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    props = dict(
        line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line and " " not in line.split("=")[0]
    )
    ours = [line for line in proc.stderr.splitlines() if f"{RULES_SRC.name}:" in line and "Reading rules" not in line]
    return props, ours


def claimed(props: dict[str, str], ours: list[str]) -> bool:
    marks = {k: props.get(k) for k in MARKS} == {"UDISKS_IGNORE": "1", "UDISKS_AUTO": "0", "PANOSTAGE_STICK": "1"}
    perms = any(" GROUP " in line for line in ours) and any(" MODE 0660" in line for line in ours)
    assert marks == perms == ("panostage" in props.get("CURRENT_TAGS", "").split(":")), (props, ours)
    assert not any("Unknown group" in line for line in ours), ours
    return marks


def test_usb_parent_without_a_known_driver_is_claimed(runtime_rules, panostage_account, tmp_path: Path) -> None:
    """The SUBSYSTEMS=="usb" branch: a USB mass-storage device behind an interface driver that is
    neither usb-storage nor uas (a vendor card-reader driver), so no ID_USB_DRIVER to go by."""
    from tests.udev.trees import usb_stick

    record, paths = usb_stick("sdb", partitioned=False, driver="ums-realtek")
    record = record.replace("E: ID_USB_DRIVER=ums-realtek\n", "")
    props, ours = umockdev_test(tmp_path, record, paths["disk"])
    assert "ID_USB_DRIVER" not in props and props["ID_FS_TYPE"] == "vfat"
    assert claimed(props, ours)


def test_partitioned_usb_stick_partition_only(runtime_rules, panostage_account, tmp_path: Path) -> None:
    from tests.udev.trees import usb_stick

    record, paths = usb_stick("sdc", partitioned=True, minor=32)
    part, ours = umockdev_test(tmp_path, record, paths["part"])
    assert part["ID_USB_DRIVER"] == "usb-storage" and claimed(part, ours)
    disk, ours = umockdev_test(tmp_path, record, paths["disk"])
    assert not claimed(disk, ours)


def test_uas_without_usb_parent_is_claimed(runtime_rules, panostage_account, tmp_path: Path) -> None:
    from tests.udev.trees import uas_without_usb_parent

    record, paths = uas_without_usb_parent()
    props, ours = umockdev_test(tmp_path, record, paths["disk"])
    assert props["ID_USB_DRIVER"] == "uas" and claimed(props, ours)


def test_sata_fat_with_a_spoofed_id_bus_and_usb_ext4_are_not_claimed(
    runtime_rules, panostage_account, tmp_path: Path
) -> None:
    from tests.udev.trees import sata_disk, usb_stick

    record, paths = sata_disk(spoof_bus=True)
    props, ours = umockdev_test(tmp_path, record, paths["part"])
    assert props["ID_BUS"] == "usb" and props["ID_FS_TYPE"] == "vfat"  # ID_BUS says usb: not trusted
    assert not claimed(props, ours)
    record, paths = usb_stick(
        "sdd", partitioned=False, fs_type="ext4", uuid="0f0e0d0c-0000-4000-8000-000000000001", minor=48
    )
    props, ours = umockdev_test(tmp_path, record, paths["disk"])
    assert props["ID_FS_TYPE"] == "ext4" and not claimed(props, ours)
