"""Real-looking sysfs/udev trees in umockdev-record format (P:/N:/E:/A: lines, device first, then
its parents), modelled on ``umockdev-record`` output of real machines.

Each builder returns ``(record, {name: syspath})``.  The property sets follow what udev's
60-persistent-storage rules put on real devices: a partition carries the disk's ID_SERIAL_SHORT,
ID_USB_DRIVER, ID_VENDOR and ID_MODEL as well as its own ID_FS_*.
"""

from __future__ import annotations

PCI_XHCI = "/devices/pci0000:00/0000:00:14.0"
PCI_AHCI = "/devices/pci0000:00/0000:00:17.0"


def block(
    devpath: str, devname: str, devtype: str, major: int, minor: int, props: dict[str, str], attrs: dict[str, str]
) -> str:
    lines = [
        f"P: {devpath}",
        f"N: {devname}",
        f"E: DEVNAME=/dev/{devname}",
        f"E: DEVTYPE={devtype}",
        "E: SUBSYSTEM=block",
        f"E: MAJOR={major}",
        f"E: MINOR={minor}",
    ]
    lines += [f"E: {k}={v}" for k, v in props.items()]
    lines += [f"A: {k}={v}" for k, v in attrs.items()]
    return "\n".join(lines) + "\n\n"


def fs_props(fs_type: str | None, uuid: str | None, label: str | None) -> dict[str, str]:
    if not fs_type:
        return {}
    props = {"ID_FS_TYPE": fs_type, "ID_FS_USAGE": "filesystem"}
    if fs_type == "vfat":
        props["ID_FS_VERSION"] = "FAT32"
    if uuid:
        props.update(ID_FS_UUID=uuid, ID_FS_UUID_ENC=uuid)
    if label:
        props.update(ID_FS_LABEL=label.replace(" ", "_"), ID_FS_LABEL_ENC=label.replace(" ", "\\x20"))
    return props


def usb_parents(
    port: str, host: int, *, serial: str | None, vendor: str, model: str, driver: str = "usb-storage"
) -> tuple[str, str]:
    """(SCSI device path, records of the SCSI device, usb_interface, usb_device and root hub)."""
    usbdev = f"{PCI_XHCI}/usb1/{port}"
    iface = f"{usbdev}/{port}:1.0"
    scsi = f"{iface}/host{host}/target{host}:0:0/{host}:0:0:0"
    records = (
        f"P: {scsi}\nE: DEVTYPE=scsi_device\nE: SUBSYSTEM=scsi\nE: DRIVER=sd\n"
        f"A: vendor={vendor}\nA: model={model}\nA: type=0\n\n"
        f"P: {iface}\nE: DEVTYPE=usb_interface\nE: SUBSYSTEM=usb\nE: DRIVER={driver}\n"
        f"E: INTERFACE=8/6/80\nA: bInterfaceClass=08\nA: bInterfaceSubClass=06\n\n"
        f"P: {usbdev}\nE: DEVTYPE=usb_device\nE: SUBSYSTEM=usb\nE: DRIVER=usb\nE: PRODUCT=951/1666/100\n"
        f"A: idVendor=0951\nA: idProduct=1666\n" + (f"A: serial={serial}\n" if serial else "") + "\n"
        f"P: {PCI_XHCI}/usb1\nE: DEVTYPE=usb_device\nE: SUBSYSTEM=usb\nE: DRIVER=usb\nA: idVendor=1d6b\n\n"
        f"P: {PCI_XHCI}\nE: SUBSYSTEM=pci\nE: DRIVER=xhci_hcd\nA: class=0x0c0330\n\n"
    )
    return scsi, records


def usb_stick(
    name: str = "sdb",
    *,
    port: str = "1-1",
    host: int = 6,
    minor: int = 16,
    serial: str | None = "SER123",
    fs_type: str | None = "vfat",
    uuid: str | None = "1234-ABCD",
    label: str | None = "PANO1",
    partitioned: bool = True,
    removable: bool = True,
    vendor: str = "Kingston",
    model: str = "DataTraveler",
    driver: str = "usb-storage",
) -> tuple[str, dict[str, str]]:
    """A USB stick: disk + one partition (``partitioned``), or a superfloppy (filesystem on the disk)."""
    scsi, parents = usb_parents(port, host, serial=serial, vendor=vendor, model=model, driver=driver)
    disk_path = f"{scsi}/block/{name}"
    common = {
        "ID_BUS": "usb",
        "ID_USB_DRIVER": driver,
        "ID_VENDOR": vendor,
        "ID_MODEL": model,
        "ID_SERIAL": f"{vendor}_{model}_{serial or 'noserial'}-0:0",
        "ID_TYPE": "disk",
    }
    if serial:
        common["ID_SERIAL_SHORT"] = serial
    attrs = {"removable": "1" if removable else "0", "size": "2097152", "ro": "0"}
    paths = {"disk": "/sys" + disk_path}
    if partitioned:
        part_path = f"{disk_path}/{name}1"
        record = block(
            part_path,
            f"{name}1",
            "partition",
            8,
            minor + 1,
            {**common, **fs_props(fs_type, uuid, label), "ID_PART_TABLE_TYPE": "dos", "PARTN": "1"},
            {"partition": "1", "start": "2048", "size": "2095104", "ro": "0"},
        )
        record += block(disk_path, name, "disk", 8, minor, {**common, "ID_PART_TABLE_TYPE": "dos"}, attrs)
        paths["part"] = "/sys" + part_path
    else:
        record = block(disk_path, name, "disk", 8, minor, {**common, **fs_props(fs_type, uuid, label)}, attrs)
    return record + parents, paths


def sata_disk(
    name: str = "sda",
    *,
    minor: int = 0,
    fs_type: str = "vfat",
    uuid: str = "C0DE-F00D",
    label: str | None = "EFI",
    spoof_bus: bool = True,
) -> tuple[str, dict[str, str]]:
    """A fixed SATA disk with a vfat partition (an EFI system partition).  ``spoof_bus`` sets
    ID_BUS=usb on it, which must not make it USB (FACTS: ID_BUS is not reliable)."""
    scsi = f"{PCI_AHCI}/ata1/host0/target0:0:0/0:0:0:0"
    disk_path = f"{scsi}/block/{name}"
    common = {
        "ID_BUS": "usb" if spoof_bus else "ata",
        "ID_ATA": "1",
        "ID_SERIAL": "Samsung_SSD_870_S5SUNF0R123456",
        "ID_SERIAL_SHORT": "S5SUNF0R123456",
        "ID_TYPE": "disk",
    }
    record = block(
        f"{disk_path}/{name}1",
        f"{name}1",
        "partition",
        8,
        minor + 1,
        {**common, **fs_props(fs_type, uuid, label), "ID_PART_TABLE_TYPE": "gpt", "PARTN": "1"},
        {"partition": "1", "start": "2048", "size": "1048576"},
    )
    record += (
        block(
            disk_path,
            name,
            "disk",
            8,
            minor,
            {**common, "ID_PART_TABLE_TYPE": "gpt"},
            {"removable": "0", "size": "976773168"},
        ).rstrip("\n")
        + "\nL: device=../../../0:0:0:0\n\n"
    )
    record += (
        f"P: {scsi}\nE: DEVTYPE=scsi_device\nE: SUBSYSTEM=scsi\nE: DRIVER=sd\nA: vendor=ATA\n"
        f"A: model=Samsung SSD 870\n\n"
        f"P: {PCI_AHCI}\nE: SUBSYSTEM=pci\nE: DRIVER=ahci\nA: class=0x010601\n\n"
    )
    return record, {"disk": "/sys" + disk_path, "part": "/sys" + disk_path + f"/{name}1"}


def uas_without_usb_parent(name: str = "sdf", *, minor: int = 80) -> tuple[str, dict[str, str]]:
    """A disk whose parents do not show the USB topology (a bridge driver) but whose ID_USB_DRIVER is
    ``uas``: still USB mass storage."""
    scsi = "/devices/platform/bridge0/host9/target9:0:0/9:0:0:0"
    disk_path = f"{scsi}/block/{name}"
    record = block(
        disk_path,
        name,
        "disk",
        8,
        minor,
        {"ID_USB_DRIVER": "uas", "ID_SERIAL_SHORT": "UAS0001", **fs_props("vfat", "0A0B-0C0D", "PANOUAS")},
        {"removable": "0", "size": "2097152"},
    )
    record += f"P: {scsi}\nE: DEVTYPE=scsi_device\nE: SUBSYSTEM=scsi\nA: vendor=JMicron\nA: model=Bridge\n\n"
    return record, {"disk": "/sys" + disk_path}


def card_reader(
    name: str = "sde", *, minor: int = 64, uuid: str | None = "AAAA-0001", label: str | None = "PANOCARD"
) -> tuple[str, dict[str, str]]:
    """A USB card reader holding a card formatted as a superfloppy (vfat on the whole disk)."""
    return usb_stick(
        name,
        port="1-4",
        host=8,
        minor=minor,
        serial="READER000042",
        uuid=uuid,
        label=label,
        partitioned=False,
        vendor="Generic",
        model="SD_MMC_Reader",
    )


def uevent_lines(props: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in props.items()).encode()
