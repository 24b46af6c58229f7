"""Trust at the stick: what an odd, damaged or hostile stick cannot make panostage do.

Every case is a real FAT image made by mkfs.fat, changed with mtools or byte edits (tests/fat_edit.py),
driven through the real CLI against the embedded authority.  Each would have failed on d8260e3.
The promises: nothing another file references is zeroed or freed; a refused stick stays
byte-identical and costs no device; no key leaves a stick for the workstation's disk.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ExitCode
from agent.stick import names
from tests.fat_edit import FatImage, digest
from tests.fat_kit import fsck, make_image, mtools, run
from tests.helpers import PEM_KEY_HEADER, REPO, clean_env
from tests.station import files_on


def put(image: Path, rel: str, data: bytes) -> None:
    mtools("mcopy", "-i", str(image), "-", f"::/{rel}", stdin=data)


def get(image: Path, rel: str) -> bytes:
    return mtools("mcopy", "-i", str(image), f"::/{rel}", "-").stdout


def error_of(result) -> dict:
    return json.loads(result.stderr.strip().splitlines()[-1])["error"]


# ---------------------------------------------------------------- 1. names that are one name on FAT


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("certificates-omni_cam-1.zip", "CERTIFICATES-OMNI_CAM-1.ZIP", True),
        ("certificates-omni_cam-7.zip", "certificate\u017f-omni_cam-7.zip", True),  # LATIN SMALL LETTER LONG S
        ("certificates-omni_kiosk.zip", "certificates-omni_\u212aiosk.zip", True),  # KELVIN SIGN
        ("certificates-omni_pi.zip", "certificates-omni_p\u0131.zip", True),  # dotless i
        ("certificates-omni_pi.zip", "certificates-omni_p\u0130.zip", True),  # I with dot above
        ("stra\u00dfe.txt", "strasse.txt", False),  # sharp s stays itself (mtools does not expand it)
        ("certificates-omni_cam-1.zip", "certificates-omni_cam-l.zip", False),
    ],
)
def test_one_rule_says_when_two_names_are_one_on_fat(a, b, equal):
    assert names.same(a, b) is equal
    if equal:
        assert names.is_archive_name(b) is names.is_archive_name(a)


def test_the_rule_is_what_mtools_does(tmp_path):
    """mtools upper-cases with towupper when it makes a short name: the long s is found again as s."""
    image = make_image(tmp_path / "s.img", 16)
    put(image, "\u017fx.txt", b"long s")
    assert get(image, "sx.txt") == b"long s"
    assert names.same("\u017fx.txt", "sx.txt")


def test_a_case_variant_of_a_live_archive_belongs_to_another_device(station, image):
    first = station.json("stage", "--name", "cam-1", "--to", str(image))
    before = get(image, "certificates-omni_cam-1.zip")
    refused = station.run("stage", "--name", "CAM-1", "--to", str(image), "--json")
    assert refused.returncode == ExitCode.CONFLICT, refused.stderr
    message = error_of(refused)["message"]
    assert "live archive of device cam-1" in message and "same as certificates-omni_CAM-1.zip" in message
    assert get(image, "certificates-omni_cam-1.zip") == before  # cam-1's archive is untouched
    assert [d["Name"] for d in station.devices()] == ["cam-1"]  # and CAM-1 cost no device
    replaced = station.json("stage", "--name", "CAM-1", "--to", str(image), "--replace")
    assert files_on(image) == ["certificates-omni_CAM-1.zip"]
    assert station.json("verify", str(image))["archives"][0]["sha256"] == replaced["archive"]["sha256"]
    assert first["device"]["id"] != replaced["device"]["id"]
    fsck(image)


def test_a_look_alike_name_is_refused_before_provisioning_and_removed_with_replace(station, image):
    put(image, "certificate\u017f-omni_cam-7.zip", b"not an archive")
    before = digest(image)
    refused = station.run("stage", "--name", "cam-7", "--to", str(image), "--json")
    assert refused.returncode == ExitCode.CONFLICT, refused.stderr
    assert "same as certificates-omni_cam-7.zip" in error_of(refused)["message"]
    assert digest(image) == before and station.devices() == []
    station.json("stage", "--name", "cam-7", "--to", str(image), "--replace")
    assert files_on(image) == ["certificates-omni_cam-7.zip"]
    fsck(image)


def test_stick_wipe_removes_look_alike_archives_and_nothing_else(station, image):
    put(image, "certificate\u017f-omni_x.zip", b"junk")
    put(image, "notes.txt", b"the user's")
    station.json("stick", "wipe", str(image))
    assert files_on(image) == ["notes.txt"] and get(image, "notes.txt") == b"the user's"


def test_the_plan_warns_about_names_that_are_one_on_fat(station, tmp_path):
    station.json("plan", "add", "--name", "cam-1")
    added = station.run("plan", "add", "--name", "CAM-1")
    assert added.returncode == 0 and "CAM-1 and cam-1 have the same archive name on a FAT stick" in added.stderr
    plan = tmp_path / "plan.csv"
    plan.write_text("name\ncam-2\nCam-2\n")
    imported = station.run("plan", "import", str(plan))
    assert imported.returncode == 0 and "Cam-2 and cam-2 have the same archive name" in imported.stderr


# ---------------------------------------------------------------- 2. layouts two readers could read differently


def _bpb_edit(kind: str, path: Path) -> Path:
    bits = 32 if kind == "fat32-mirroring-off" else 12 if kind == "three-fats" else 16
    size = {16: "32M", 12: "4M", 32: "40M"}[bits]
    image = make_image(path, bits, size=size, extra=("-s", "1") if bits == 32 else ())
    put(image, "first.bin", os.urandom(5000))
    put(image, "second.bin", os.urandom(5000))
    mtools("mdel", "-i", str(image), "::/first.bin")
    fat = FatImage(image)
    if kind == "root-520":
        fat.set_bpb(17, "<H", 520)
    elif kind == "root-65535":
        fat.set_bpb(17, "<H", 65535)
    elif kind == "three-fats":
        fat.set_bpb(16, "<B", 3)
    elif kind == "fat32-mirroring-off":
        fat.set_bpb(40, "<H", 0x80)
    return image


@pytest.mark.parametrize("kind", ["root-520", "root-65535", "three-fats", "fat32-mirroring-off"])
def test_a_layout_readers_disagree_on_is_refused_before_provisioning(station, tmp_path, kind):
    image = _bpb_edit(kind, tmp_path / f"{kind}.img")
    before = digest(image)
    result = station.run("stage", "--name", "cam-9", "--to", str(image), "--json")
    assert result.returncode == ExitCode.STICK_REFUSED, result.stderr
    assert error_of(result)["reason"] in ("stick-unsupported-layout", "stick-not-fat")
    assert digest(image) == before and station.devices() == []


def test_a_fat_too_large_to_hold_in_memory_is_refused(station, tmp_path):
    """4 Mi clusters at most: the census and the undo journal hold the whole FAT in memory (bounded RSS)."""
    image = tmp_path / "huge.img"
    with open(image, "wb") as handle:
        handle.truncate(2200 << 20)  # sparse
    run("mkfs.fat", "-F", "32", "-s", "1", str(image))
    result = station.run("verify", str(image), "--json")
    assert result.returncode == ExitCode.STICK_REFUSED and "at most 4194304" in error_of(result)["message"]
    image.unlink()


# ---------------------------------------------------------------- 3. damage: nothing another file references is touched


def _damage(kind: str, fat: FatImage) -> None:
    archive, user = fat.chain("certificates-omni_cam-k.zip"), fat.chain("user.bin")
    if kind == "cross-linked-entry":  # the user's file starts inside the archive's chain
        fat.set_first_cluster("user.bin", archive[0])
    elif kind == "cross-linked-fat":  # the archive's chain runs on into the user's file
        fat.set_fat(archive[-1], user[0])
    elif kind == "loop":
        fat.set_fat(archive[-1], archive[0])
    elif kind == "leaves-the-volume":
        fat.set_fat(archive[-1], fat.geo.cluster_count + 10)
    elif kind == "runs-into-free":
        free = user[-1] + 50
        fat.set_fat(archive[-1], free)
    elif kind == "fat-copies-differ":
        fat.set_fat(user[-1] + 7, 0x0FFFFFFF, copies=(1,))
    elif kind == "size-mismatch":
        fat.set_size("user.bin", 200_000)


@pytest.mark.parametrize(
    "kind",
    [
        "cross-linked-entry",
        "cross-linked-fat",
        "loop",
        "leaves-the-volume",
        "runs-into-free",
        "fat-copies-differ",
        "size-mismatch",
    ],
)
def test_a_damaged_stick_is_refused_before_anything_is_made_or_zeroed(station, image, kind):
    staged = station.json("stage", "--name", "cam-k", "--to", str(image))
    put(image, "user.bin", os.urandom(20_000))
    _damage(kind, FatImage(image))
    before = digest(image)
    for args in (
        ("stage", "--name", "cam-k", "--to", str(image), "--replace-device", "--replace"),
        ("stick", "wipe", str(image)),
    ):
        result = station.run(*args, "--json")
        assert result.returncode == ExitCode.STICK_REFUSED, result.stderr
        error = error_of(result)
        assert error["reason"] == "stick-damaged" and "fsck.fat -a" in error["hint"]
        assert digest(image) == before, f"{args[0]} changed a damaged stick"
    assert [d["DeviceId"] for d in station.devices()] == [staged["device"]["id"]]


def test_a_stick_not_cleanly_unmounted_is_written_and_says_so(station, image):
    FatImage(image).set_dirty()
    result = station.run("stage", "--name", "cam-d", "--to", str(image), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stick_warnings"] == ["it was not cleanly unmounted (its dirty flag is set)"]
    assert "not cleanly unmounted" in result.stderr
    out = run("fsck.fat", "-n", str(image), check=False)
    assert "Dirty bit" in out.stdout and "share clusters" not in out.stdout and "FATs differ" not in out.stdout


# ---------------------------------------------------------------- 4. the return trip keeps no key, deletes no user file


def test_collect_keeps_only_logs_and_never_key_material(station, image, tmp_path):
    staged = station.json("stage", "--name", "cam-r", "--to", str(image))
    archive = get(image, "certificates-omni_cam-r.zip")
    mtools("mmd", "-i", str(image), "::/panorama")
    put(image, "panorama/occ.log", b"registered\n")
    put(image, "panorama/backup.bin", archive)  # not a log: never copied
    put(image, "panorama/stolen.log", b"log line\n" + archive)  # a log holding a ZIP that holds a key
    put(image, "notes.txt", b"the user's")
    collected = station.json("stick", "collect", str(image))
    assert set(collected["logs"]) == {"occ.log"}
    refused = {r["name"]: r["reason"] for r in collected["refused"]}
    assert "inside a ZIP" in refused["stolen.log"] and "not an appliance log" in refused["backup.bin"]
    folder = Path(collected["folder"])
    assert sorted(p.name for p in folder.iterdir()) == ["occ.log"]
    assert (folder / "occ.log").stat().st_mode & 0o777 == 0o600
    record = station.log()[-1]
    assert record["kind"] == "collect" and {r["name"] for r in record["refused"]} == {"stolen.log", "backup.bin"}
    for path in station.state.rglob("*"):  # the local authority's own CA key is the one key it may keep
        if path.is_file() and "authority" not in path.relative_to(station.state).parts:
            data = path.read_bytes()
            assert archive not in data and b"PRIVATE KEY" not in data, f"{path} holds archive or key bytes"
    wiped = station.json("stick", "wipe", str(image))
    assert set(wiped["removed"]) == {"certificates-omni_cam-r.zip", "panorama/occ.log", "panorama/stolen.log"}
    assert files_on(image) == ["notes.txt", "panorama"] and get(image, "panorama/backup.bin") == archive
    assert staged["device"]["id"]
    fsck(image)


def test_a_log_directory_pointing_at_the_root_is_refused(station, image):
    put(image, "notes.log", b"the user's root log")
    put(image, "report.txt", b"the user's")
    mtools("mmd", "-i", str(image), "::/panorama")
    fat = FatImage(image)
    fat.set_first_cluster("panorama", fat.geo.root_cluster)
    before = digest(image)
    for args in (("stick", "collect", str(image)), ("stick", "wipe", str(image))):
        result = station.run(*args, "--json")
        assert result.returncode == ExitCode.STICK_REFUSED, result.stderr
        assert "points back at the root" in error_of(result)["message"]
    assert digest(image) == before
    assert not (station.state / "handoffs").exists()


# ---------------------------------------------------------------- 5. memory does not follow the attacker


def _limited(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


def test_verify_judges_a_huge_file_by_its_size(tmp_path, station):
    huge = tmp_path / "certificates-omni_x.zip"
    with open(huge, "wb") as handle:
        handle.truncate(3 << 30)  # sparse: costs no disk
    result = subprocess.run(
        [sys.executable, "-m", "agent", "verify", str(huge), "--json"],
        cwd=REPO,
        env=clean_env(tmp_path, station.env),
        capture_output=True,
        timeout=60,
        preexec_fn=_limited(1 << 30),
    )
    assert result.returncode == ExitCode.VERIFY_CORRUPT, result.stderr
    [report] = json.loads(result.stdout)["archives"]
    assert report["sha256"] is None and [p["code"] for p in report["problems"]][-1] == "too_large"


def test_a_junk_archive_too_large_to_be_one_is_judged_by_its_size(station, tmp_path):
    image = make_image(tmp_path / "junk.img", 32, size="80M")
    put(image, "certificates-omni_x.zip", bytes(40 << 20))
    refused = station.run("stage", "--name", "cam-j", "--to", str(image), "--json")
    assert refused.returncode == ExitCode.CONFLICT
    assert "larger than any configuration archive" in error_of(refused)["message"]
    assert station.devices() == []
    verdict = station.run("verify", str(image), "--json")
    assert verdict.returncode == ExitCode.VERIFY_CORRUPT
    assert json.loads(verdict.stdout)["archives"][0]["sha256"] is None
    station.json("stage", "--name", "cam-j", "--to", str(image), "--replace")
    assert files_on(image) == ["certificates-omni_cam-j.zip"]
    fsck(image)


# ---------------------------------------------------------------- 6. every check before the device exists


def test_a_name_whose_archive_name_fat_cannot_hold_costs_no_device(station, image):
    before = digest(image)
    result = station.run("stage", "--name", "n" * 234, "--to", str(image), "--json")
    assert result.returncode == ExitCode.VALIDATION, result.stderr
    assert "at most 233" in error_of(result)["message"] and "--name" in error_of(result)["message"]
    assert digest(image) == before and station.devices() == []
    station.json("stage", "--name", "n" * 233, "--to", str(image))
    assert files_on(image) == [f"certificates-omni_{'n' * 233}.zip"]
    fsck(image)


def test_a_full_root_directory_is_found_before_provisioning(station, tmp_path):
    image = make_image(tmp_path / "tiny.img", 12, size="1M", label=None, extra=("-r", "16"))
    for index in range(15):
        put(image, f"f{index}.txt", b"x")
    before = digest(image)
    result = station.run("stage", "--name", "cam-1", "--to", str(image), "--json")
    assert result.returncode == ExitCode.STICK_REFUSED, result.stderr
    assert error_of(result)["reason"] == "stick-root-full"
    assert digest(image) == before and station.devices() == []


def test_a_loop_in_the_old_archives_chain_costs_no_device(station, image):
    station.json("stage", "--name", "cam-l", "--to", str(image))
    fat = FatImage(image)
    chain = fat.chain("certificates-omni_cam-l.zip")
    fat.set_fat(chain[-1], chain[0])
    station.json("device", "delete", "cam-l")
    result = station.run("stage", "--name", "cam-l", "--to", str(image), "--json")
    assert result.returncode == ExitCode.STICK_REFUSED and "loops" in error_of(result)["message"]
    assert station.devices() == []


# ---------------------------------------------------------------- 7. documented exit codes, never "a bug"


def test_an_offset_beyond_the_image_is_refused(station, image):
    result = station.run("stage", "--name", "cam-1", "--to", f"{image}@@99999999999999999999999")
    assert result.returncode == ExitCode.STICK_REFUSED and "Traceback" not in result.stderr
    assert "beyond the end" in result.stderr


def test_a_temporary_with_an_impossible_pid_is_a_stale_leftover(station, image):
    put(image, ".certificates-omni_cam-1.zip.99999999999999999999.tmp", b"left by nobody")
    station.json("stage", "--name", "cam-1", "--to", str(image))
    assert files_on(image) == ["certificates-omni_cam-1.zip"]


def test_an_operator_that_looks_like_a_key_is_refused_before_provisioning(station, image):
    result = station.run("stage", "--name", "cam-1", "--to", str(image), PANOSTAGE_STAGE_OPERATOR=PEM_KEY_HEADER)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert "PANOSTAGE_STAGE_OPERATOR" in result.stderr and "could not clean up" not in result.stderr
    assert station.devices() == []
