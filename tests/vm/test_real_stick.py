"""Sticks on the real kernel path: plugged through QMP, matched by udev through their real USB parent, staged
by the daemon systemd started, read back by the guest kernel's vfat driver (scenarios 1, 3 and 5 of issue 16).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.fat_kit import fsck
from tests.station import files_on
from tests.vm.machine import Machine
from tests.vm.sticks import Layout, digest, ext4_stick, fat_stick


def _mount_ro(laptop: Machine, dev: str, where: str) -> None:
    laptop.sh(f"mkdir -p {where} && mount -t vfat -o ro {dev} {where}")


def test_a_fat32_stick_is_staged_by_the_service_and_the_kernel_reads_it_back(laptop: Machine, tmp_path: Path) -> None:
    laptop.panostage("plan", "add", "--name", "vm-cam-1", "--eth0", "dhcp", "--ntp", "pool.ntp.org")
    laptop.panostage("stick", "enroll", "--identity", "usb:PANO0001", "--label", "first")
    image = fat_stick(tmp_path / "stick1.img", Layout(32, 512, False), volid="0A0B0C01")
    laptop.plug(image, serial="PANO0001", stick_id="stick1")
    stick = laptop.wait_stick("usb:PANO0001", ("ready",))
    dev = stick["devnode"]
    assert stick["device"] == "vm-cam-1" and stick["seconds_left"] > 200

    # udev matched it through the real USB parent (no test rule in this guest) and set udisks' marks
    props = dict(
        line.partition("=")[::2] for line in laptop.run("udevadm", "info", "--query=property", dev).stdout.splitlines()
    )
    assert props["ID_USB_DRIVER"] == "usb-storage" and props["ID_SERIAL_SHORT"] == "PANO0001"
    assert (props["UDISKS_IGNORE"], props["UDISKS_AUTO"], props["PANOSTAGE_STICK"]) == ("1", "0", "1")
    assert laptop.sh(f"stat -c '%G %a' {dev}").split() == ["panostage", "660"]
    # the root disk is the laptop's own: not a refused stick in status, nothing about it in the log
    assert [s["identity"] for s in laptop.status()["sticks"]] == ["usb:PANO0001"]
    assert "/dev/vda" not in laptop.sh("journalctl -u panostage --no-pager -o cat")
    # systemd shows the daemon's STATUS= line
    assert re.search(
        r'Status: "1 ready, 0 working; plan 0 pending, 1 staged',
        laptop.sh("systemctl status panostage --no-pager", check=False),
    )

    # the kernel's vfat driver reads the archive the daemon logged, and it verifies there
    [record] = laptop.handoffs()
    assert record["outcome"] == "ready" and record["stick"]["usb_serial"] == "PANO0001"
    _mount_ro(laptop, dev, "/mnt/stick1")
    name = "certificates-omni_vm-cam-1.zip"
    assert laptop.sh("ls /mnt/stick1").split() == [name]
    assert laptop.sh(f"sha256sum /mnt/stick1/{name}").split()[0] == record["archive"]["sha256"]
    verdict = laptop.panostage("verify", f"/mnt/stick1/{name}", "--device", "vm-cam-1", "--margin", "0", "--json")
    assert json.loads(verdict.stdout)["outcome"] == "ok"
    # the appliance reads it through the kernel too, registers, and writes its logs back
    laptop.sh("mount -o remount,rw /mnt/stick1")
    appliance = laptop.panostage("sim", "appliance", "/mnt/stick1", "--json", user="root", check=False)
    assert appliance.returncode == 0, appliance.stderr  # 0: the device registered (13 when it did not)
    laptop.sh("umount /mnt/stick1")

    laptop.pull("stick1")
    assert "panorama" in [f.lower() for f in files_on(image)]
    assert name in files_on(image)
    fsck(image)  # clean after the kernel wrote the appliance's logs and was pulled after umount


def test_a_partitioned_stick_is_staged_on_its_partition_and_its_disk_is_untouched(
    laptop: Machine, tmp_path: Path
) -> None:
    laptop.panostage("plan", "add", "--name", "vm-part-1")
    laptop.panostage("stick", "enroll", "--identity", "usb:PANO0002")
    image = fat_stick(tmp_path / "part.img", Layout(32, 512, True), volid="0A0B0C02")
    mbr = image.read_bytes()[:512]
    laptop.plug(image, serial="PANO0002", stick_id="part")
    stick = laptop.wait_stick("usb:PANO0002", ("ready",))
    assert re.fullmatch(r"/dev/sd[a-z]1", stick["devnode"]) and stick["device"] == "vm-part-1"
    disk = stick["devnode"][:-1]
    assert "PANOSTAGE_STICK" not in laptop.run("udevadm", "info", "--query=property", disk).stdout
    _mount_ro(laptop, stick["devnode"], "/mnt/part")
    assert laptop.sh("ls /mnt/part").split() == ["certificates-omni_vm-part-1.zip"]
    laptop.sh("umount /mnt/part")
    laptop.pull("part")
    assert image.read_bytes()[:512] == mbr


def test_sticks_the_policy_does_not_admit_are_left_byte_identical(laptop: Machine, tmp_path: Path) -> None:
    laptop.panostage("plan", "add", "--name", "vm-never")
    laptop.panostage("stick", "enroll", "--identity", "usb:PANO0003")
    ext4 = ext4_stick(tmp_path / "ext4.img")  # enrolled serial, but an ext4 partition: not a stick at all
    stranger = fat_stick(tmp_path / "stranger.img", Layout(32, 512, False), volid="0A0B0C04")  # FAT, not enrolled
    before = {ext4: digest(ext4), stranger: digest(stranger)}
    laptop.plug(ext4, serial="PANO0003", stick_id="ext4")
    laptop.plug(stranger, serial="PANO0004", stick_id="stranger")
    refused = laptop.wait_stick("usb:PANO0004", ("rejected",))
    assert "not enrolled" in refused["note"]
    ext4_part = "/dev/disk/by-id/usb-QEMU_QEMU_HARDDISK_PANO0003-0:0-part1"
    laptop.wait_for(
        "udev to have seen the ext4 partition",
        lambda: "ID_FS_TYPE=ext4" in laptop.sh(f"udevadm info --query=property {ext4_part}", check=False),
    )
    ext4_seen = laptop.wait_stick("usb:PANO0003", ("rejected",))  # shown with its reason, like every refusal
    assert "FAT" in ext4_seen["note"], ext4_seen
    for node in (ext4_part, ext4_part.removesuffix("-part1")):
        assert "PANOSTAGE_STICK" not in laptop.sh(f"udevadm info --query=property {node}")
    laptop.pull("ext4")
    laptop.pull("stranger")
    assert {path: digest(path) for path in before} == before
    entries = {e["name"]: e["status"] for e in json.loads(laptop.panostage("plan", "list", "--json").stdout)}
    assert entries["vm-never"] == "pending"
