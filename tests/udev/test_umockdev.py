"""stick_info, decide and the Watcher against umockdev testbeds (real libudev, real pyudev, fake sysfs).

The scenarios run in child processes under ``umockdev-wrapper`` (libudev sees a testbed only
under umockdev's preload): tests/udev/umockdev_child.py builds the trees (a fresh testbed per
scenario), drives uevents and prints JSON lines; this side asserts.  The children start
together (one per CPU), once per module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import StickSettings
from agent.udev import StickInfo, decide

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CHILD = HERE / "umockdev_child.py"
SCENARIOS = ("describe", "coldplug", "hotplug", "media", "broken", "order", "buffer", "resync")
WRAPPER = shutil.which("umockdev-wrapper")


def _child(*args: str) -> list[str]:
    return [WRAPPER or "umockdev-wrapper", sys.executable, str(CHILD), *args]


@pytest.fixture(scope="module")
def runs() -> dict[str, dict[str, Any]]:
    if WRAPPER is None:
        pytest.skip("umockdev is missing (apt-get install umockdev gir1.2-umockdev-1.0 python3-gi)")
    probe = subprocess.run(_child("--probe"), capture_output=True, text=True, cwd=REPO, timeout=60)
    if probe.returncode == 77:
        pytest.skip(f"umockdev is not usable: {probe.stdout.strip()}")
    assert probe.returncode == 0, f"umockdev probe failed:\n{probe.stdout}{probe.stderr}"
    # a few children (one per CPU), each running its share of the scenarios one after another
    groups = [
        SCENARIOS[i :: max(1, min(len(SCENARIOS), os.cpu_count() or 1))]
        for i in range(max(1, min(len(SCENARIOS), os.cpu_count() or 1)))
    ]
    procs = [
        (group, subprocess.Popen(_child(*group), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO))
        for group in groups
    ]
    results: dict[str, dict[str, Any]] = {}
    for group, proc in procs:
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        for name in group:
            results[name] = {
                "rc": proc.returncode,
                "stderr": err,
                "lines": [line for line in lines if line["scenario"] == name],
            }
    return results


def steps(runs: dict[str, dict[str, Any]], scenario: str) -> dict[str, Any]:
    """The scenario's output by step name (a repeated step becomes a list); fails on a crashed child."""
    run = runs[scenario]
    assert run["lines"] and run["lines"][-1]["step"] == "done", (
        f"scenario {scenario} failed (exit {run['rc']}):\n{run['stderr'][-3000:]}"
    )
    assert not [line for line in run["lines"] if line["step"] == "timeout"], (
        f"{scenario}: an event never came: {run['lines']}"
    )
    out: dict[str, Any] = {}
    for line in run["lines"]:
        key = line["step"]
        if key in out:
            out[key] = (out[key] if isinstance(out[key], list) else [out[key]]) + [line]
        else:
            out[key] = line
    return out


def brief(events: list[dict[str, Any]]) -> list[tuple[str, str, str | None, str | None]]:
    """(action, device name, info's fs_uuid, known's fs_uuid) per event."""
    return [
        (
            e["action"],
            e["syspath"].rsplit("/", 1)[1],
            (e["info"] or {}).get("fs_uuid"),
            (e["known"] or {}).get("fs_uuid"),
        )
        for e in events
    ]


def without(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if not e["syspath"].endswith("/" + name)]


# ------------------------------------------------------------------ stick_info on each tree
@pytest.fixture(scope="module")
def infos(runs) -> dict[tuple[str, str], StickInfo]:
    lines = steps(runs, "describe")["info"]
    return {(line["tree"], line["node"]): StickInfo.from_dict(line["info"]) for line in lines}


def test_usb_stick_partition_is_described_from_itself_and_its_disk(infos) -> None:
    part = infos["usb", "part"]
    assert (part.devtype, part.devnode, part.fs_type, part.fs_usage, part.fs_uuid, part.fs_label) == (
        "partition",
        "/dev/sdb1",
        "vfat",
        "filesystem",
        "1234-ABCD",
        "PANO1",
    )
    assert part.is_usb and part.removable  # removable comes from the disk's sysfs attribute
    assert (part.usb_serial, part.usb_driver, part.vendor, part.model) == (
        "SER123",
        "usb-storage",
        "Kingston",
        "DataTraveler",
    )
    assert part.disk_syspath == infos["usb", "disk"].syspath and part.disk_syspath.endswith("/block/sdb")
    assert part.identity == "usb:SER123"
    assert infos["usb", "disk"].identity == "usb:SER123" and not infos["usb", "disk"].has_filesystem


def test_superfloppy_label_is_decoded_and_identity_is_the_serial(infos) -> None:
    floppy = infos["superfloppy", "disk"]
    assert floppy.devtype == "disk" and floppy.has_filesystem and floppy.disk_syspath is None
    assert floppy.fs_label == "PANO 7"  # from ID_FS_LABEL_ENC (ID_FS_LABEL says PANO_7)
    assert floppy.identity == "usb:SUPER01"


def test_is_usb_never_trusts_id_bus(infos) -> None:
    sata = infos["sata", "part"]
    assert sata.properties["ID_BUS"] == "usb" and not sata.is_usb  # the tree lies in ID_BUS on purpose
    assert not sata.removable and sata.vendor == "ATA"  # vendor from the SCSI device's sysfs attribute
    assert sata.identity == "fs:C0DE-F00D"  # its ATA serial is not a USB serial


def test_usb_driver_alone_makes_usb(infos) -> None:
    uas = infos["uas", "disk"]
    assert uas.usb_driver == "uas" and uas.is_usb and uas.identity == "usb:UAS0001"


def test_usb_without_serial_is_known_by_its_filesystem(infos) -> None:
    assert infos["noserial", "disk"].usb_serial is None
    assert infos["noserial", "disk"].identity == "fs:7777-0001"
    assert infos["fixed-usb", "disk"].is_usb and not infos["fixed-usb", "disk"].removable
    assert infos["blank", "disk"].identity == "usb:BLANK01" and not infos["blank", "disk"].has_filesystem


def test_enumeration_sees_every_block_device(runs, infos) -> None:
    enumerated = set(steps(runs, "describe")["enumerated"]["syspaths"])
    assert {info.syspath for info in infos.values()} == enumerated


def test_info_round_trips_through_a_dict(infos) -> None:
    for info in infos.values():
        assert StickInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


# ------------------------------------------------------------------ the policy on each tree
POLICY = [
    # tree, node, settings, enrolled, admitted, reason
    ("usb", "part", {}, {"usb:SER123"}, True, "admitted"),
    ("usb", "part", {}, set(), False, "not enrolled: usb:SER123"),
    ("usb", "part", {"require_enrollment": False}, set(), True, "admitted"),
    ("usb", "part", {}, {"fs:1234-ABCD"}, False, "not enrolled: usb:SER123"),  # a serial beats the fs UUID
    (
        "usb",
        "disk",
        {"require_enrollment": False},
        set(),
        False,
        "no filesystem (partition table dos: use a partition)",
    ),
    ("superfloppy", "disk", {}, {"usb:SUPER01"}, True, "admitted"),
    ("superfloppy", "disk", {"label": "PANO*"}, {"usb:SUPER01"}, True, "admitted"),
    ("superfloppy", "disk", {"label": "pano ?"}, {"usb:SUPER01"}, True, "admitted"),  # case-insensitive
    ("superfloppy", "disk", {"label": "STICK*"}, {"usb:SUPER01"}, False, "label 'PANO 7' does not match 'STICK*'"),
    ("ext4", "part", {}, {"usb:EXT4STICK"}, False, "not FAT (ext4)"),
    ("ext4", "part", {"require_enrollment": False, "allow_non_usb": True}, set(), False, "not FAT (ext4)"),
    ("sata", "part", {}, {"fs:C0DE-F00D"}, False, "not USB mass storage"),
    ("sata", "part", {"require_enrollment": False}, set(), False, "not USB mass storage"),
    ("sata", "part", {"allow_non_usb": True}, {"fs:C0DE-F00D"}, True, "admitted"),
    ("sata", "part", {"allow_non_usb": True}, set(), False, "not enrolled: fs:C0DE-F00D"),
    (
        "sata",
        "part",
        {"allow_non_usb": True, "label": "PANO*"},
        {"fs:C0DE-F00D"},
        False,
        "label 'EFI' does not match 'PANO*'",
    ),
    ("reader", "disk", {}, {"usb:READER000042"}, True, "admitted"),
    ("uas", "disk", {}, {"usb:UAS0001"}, True, "admitted"),
    ("noserial", "disk", {}, {"fs:7777-0001"}, True, "admitted"),
    ("blank", "disk", {"require_enrollment": False}, set(), False, "no filesystem"),
    ("fixed-usb", "disk", {}, {"usb:USBSSD01"}, True, "admitted"),
]


@pytest.mark.parametrize(
    "tree,node,settings,enrolled,admitted,reason",
    POLICY,
    ids=[f"{t}-{n}-{i}" for i, (t, n, *_rest) in enumerate(POLICY)],
)
def test_policy(infos, tree, node, settings, enrolled, admitted, reason) -> None:
    decision = decide(infos[tree, node], StickSettings(**settings), enrolled.__contains__)
    assert (decision.admitted, decision.reason) == (admitted, reason)
    assert decision.info is infos[tree, node]


def test_policy_without_label_or_identity(infos) -> None:
    floppy = infos["superfloppy", "disk"]
    unlabelled = dataclasses.replace(floppy, fs_label=None)
    assert decide(unlabelled, StickSettings(label="PANO*"), lambda i: True).reason == "no label (must match 'PANO*')"
    anonymous = dataclasses.replace(infos["noserial", "disk"], fs_uuid=None)
    assert decide(anonymous, StickSettings(), lambda i: True).reason.startswith("no identity")
    assert decide(anonymous, StickSettings(require_enrollment=False), lambda i: False).admitted


def test_child_reports_default_decisions(runs) -> None:
    """decide() also ran inside the testbed process, on the live pyudev devices (default settings)."""
    for line in steps(runs, "describe")["info"]:
        expected = decide(StickInfo.from_dict(line["info"]), StickSettings(), lambda identity: False)
        assert (line["decision"]["admitted"], line["decision"]["reason"]) == (False, expected.reason)


# ------------------------------------------------------------------ the watcher
def test_coldplug_reports_present_filesystems_once(runs) -> None:
    out = steps(runs, "coldplug")
    assert sorted(brief(out["start"]["events"])) == [
        ("add", "sda1", "C0DE-F00D", None),
        ("add", "sdb1", "1234-ABCD", None),
        ("add", "sdz", "5E47-0000", None),
    ]
    assert out["duplicates"]["events"] == []  # the overlapping hotplug adds of the same devices are dropped
    assert [p.rsplit("/", 1)[1] for p in out["known"]["syspaths"]] == ["sdb1", "sdz", "sda1"]


def test_hotplug_add_then_remove_matched_through_the_map(runs) -> None:
    out = steps(runs, "hotplug")
    assert brief(out["start"]["events"]) == [("add", "sdz", "5E47-0000", None)]
    added = out["add"]["events"]
    assert brief(added) == [("add", "sdb1", "1234-ABCD", None)]  # the disk (no filesystem) is not reported
    assert added[0]["info"]["identity"] == "usb:SER123" and added[0]["syspath"] == out["add"]["paths"]["part"]
    removed = out["remove"]["events"]
    assert brief(removed) == [("remove", "sdb1", None, "1234-ABCD")]
    assert removed[0]["info"] is None  # the remove event carried only kernel properties ...
    strip = lambda d: {k: v for k, v in d.items() if k != "properties"}  # noqa: E731 - SEQNUM differs
    assert strip(removed[0]["known"]) == strip(added[0]["info"])  # ... so the watcher hands back what it knew
    assert [p.rsplit("/", 1)[1] for p in out["known"][1]["syspaths"]] == ["sdz"]


def test_media_change_in_a_card_reader(runs) -> None:
    out = steps(runs, "media")
    assert ("add", "sde", "AAAA-0001", None) in brief(out["start"]["events"])
    assert brief(out["same"]["events"]) == [("change", "sde", "AAAA-0001", "AAAA-0001")]
    swapped = out["swapped"]["events"]
    assert brief(swapped) == [("change", "sde", "BBBB-0002", "AAAA-0001")]
    assert swapped[0]["info"]["fs_label"] == "PANOCARD2"
    pulled = out["pulled"]["events"]
    assert brief(pulled) == [("remove", "sde", None, "BBBB-0002")]
    assert pulled[0]["info"]["has_filesystem"] is False  # the reader is still there, without a card
    assert out["empty"]["events"] == []
    assert brief(out["inserted"]["events"]) == [("add", "sde", "CCCC-0003", None)]


def test_a_device_that_breaks_stick_info_is_skipped_and_the_watcher_goes_on(runs) -> None:
    out = steps(runs, "broken")
    assert sorted(brief(out["start"]["events"])) == [
        ("add", "sdb1", "1234-ABCD", None),
        ("add", "sdz", "5E47-0000", None),
    ]
    assert out["start"]["skipped"] == 1  # sdx, present at start
    hot = out["hotplug"]
    assert brief(hot["events"]) == [("add", "sdg", "AF7E-0001", None)]  # the next stick still comes through
    assert hot["skipped"] >= 2  # sdy1's add and change
    skipped = [r["message"] for r in hot["logs"] if r["level"] == "WARNING" and "skipping" in r["message"]]
    assert any(hot["broken"]["part"] + ":" in m and "UnicodeDecodeError" in m for m in skipped), skipped
    assert any("/block/sdx:" in m for m in skipped), skipped


def test_monitor_listens_before_enumerating(runs) -> None:
    """A stick added between the two steps is reported exactly once; the control (enumerate first)
    loses it, which shows that this test can fail."""
    by_variant = {line["variant"]: line for line in steps(runs, "order")["order"]}
    right = by_variant["listen-first"]
    seen = [e for e in right["start"] + right["read"] if e["syspath"] == right["paths"]["part"]]
    assert [e["action"] for e in seen] == ["add"], brief(right["start"] + right["read"])
    wrong = by_variant["enumerate-first"]
    lost = [e for e in wrong["start"] + wrong["read"] if e["syspath"] == wrong["paths"]["part"]]
    assert lost == [], "the control should lose the stick; if it does not, the order test proves nothing"


def test_receive_buffer_raised_where_permitted(runs) -> None:
    by_variant = {line["variant"]: line for line in steps(runs, "buffer")["buffer"]}
    if os.geteuid() == 0:  # SO_RCVBUFFORCE needs CAP_NET_ADMIN (unprivileged, only the EPERM case applies)
        raised = by_variant["raise"]
        assert raised["requested"] == [raised["wanted"]] and raised["rcvbuf"] >= raised["wanted"]
        kept = by_variant["keep"]
        assert kept["requested"] == [] and kept["rcvbuf"] >= kept["wanted"]  # libudev's own 128 MiB: not shrunk
    refused = by_variant["eperm"]
    assert any(
        "cannot raise receive buffer" in r["message"] and "Operation not permitted" in r["message"]
        for r in refused["logs"]
    )
    for variant in by_variant.values():  # and events flow in every case
        assert [e["syspath"] for e in variant["events"]] == [variant["paths"]["part"]]


def test_overflow_resyncs_from_a_fresh_enumeration(runs) -> None:
    out = steps(runs, "resync")
    resync = out["resync"]
    assert resync["resyncs"] == 1
    assert sorted(brief(without(resync["events"], "sdz"))) == [
        ("add", "sdg", "0E40-0001", None),
        ("change", "sde", "BBBB-0002", "AAAA-0001"),
        ("remove", "sdb1", None, "1234-ABCD"),
    ]
    assert any("overflowed" in r["message"] for r in resync["logs"])
