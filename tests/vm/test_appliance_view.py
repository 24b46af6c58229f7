"""The appliance's view: for every stick layout the stage path accepts, the archive the guest kernel's vfat
driver reads back is byte-identical to what the daemon wrote and logged — the in-house reader and mtools are
no longer the only judges."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.fat_kit import fsck, mtools
from tests.vm.machine import Machine
from tests.vm.sticks import ALL_LAYOUTS, fat_stick


def test_every_accepted_layout_reads_back_identical_through_the_kernel(laptop: Machine, tmp_path: Path) -> None:
    names = [f"vm-{layout.name}" for layout in ALL_LAYOUTS]
    plan = "name,eth0\n" + "".join(f"{name},dhcp\n" for name in names)
    laptop.run("install", "-o", "panostage", "-m", "0600", "/dev/stdin", "/run/plan.csv", stdin=plan.encode())
    laptop.panostage("plan", "import", "/run/plan.csv")
    failures = []
    for n, layout in enumerate(ALL_LAYOUTS):
        serial = f"LAYOUT{n:04d}"
        laptop.panostage("stick", "enroll", "--identity", f"usb:{serial}")
        image = fat_stick(tmp_path / f"{layout.name}.img", layout, volid=f"4C41{n:04X}")
        laptop.plug(image, serial=serial, stick_id=f"s{n}", sector_size=layout.sector)
        stick = laptop.wait_stick(f"usb:{serial}", ("ready", "failed", "rejected"))
        if stick["state"] != "ready":
            failures.append(f"{layout.name}: {stick['state']}: {stick.get('note')}")
            laptop.pull(f"s{n}")
            continue
        [record] = [r for r in laptop.handoffs() if r["stick"].get("usb_serial") == serial]
        archive = record["archive"]["file"]
        where = f"/mnt/{layout.name}"
        blocks = laptop.sh(f"blockdev --getss {stick['devnode']}").strip()
        assert blocks == str(layout.sector), f"{layout.name}: the guest sees {blocks}-byte sectors"
        laptop.sh(f"mkdir -p {where} && mount -t vfat -o ro {stick['devnode']} {where}")
        through_kernel = laptop.read_file(f"{where}/{archive}")
        laptop.sh(f"umount {where}")
        laptop.pull(f"s{n}")
        offset = (1 << 20) if layout.partitioned else 0
        through_mtools = mtools("mtype", "-i", f"{image}@@{offset}", f"::/{archive}").stdout
        if (
            hashlib.sha256(through_kernel).hexdigest() != record["archive"]["sha256"]
            or through_kernel != through_mtools
        ):
            failures.append(f"{layout.name}: the kernel, mtools and the log disagree on {archive}")
        fsck(image, offset=offset)
    assert not failures, "\n".join(failures)
    statuses = {e["name"]: e["status"] for e in json.loads(laptop.panostage("plan", "list", "--json").stdout)}
    assert all(statuses[name] == "staged" for name in names), statuses
