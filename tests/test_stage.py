"""`panostage stage` end to end: real CLI, embedded authority, real FAT images (mtools), fsck."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from agent.errors import ExitCode
from tests.fat_kit import IS_ROOT, fsck, loop_device, make_image, mtools, raw_contains
from tests.helpers import wait_until
from tests.station import files_on


@pytest.fixture
def image(tmp_path) -> Path:
    return make_image(tmp_path / "stick.img", 32)


def test_stage_to_a_fat_image(station, image):
    data = station.json("stage", "--name", "cam-01", "--eth0", "dhcp", "--ntp", "pool.ntp.org", "--to", str(image))
    assert data["outcome"] == "ready"
    assert data["archive"]["file"] == "certificates-omni_cam-01.zip"
    assert 240 < data["seconds_left"] <= 300
    assert set(data["durations_ms"]) >= {"provision", "verify_received", "write", "read_back", "verify_stick", "log"}
    assert data["stick"]["fs_uuid"] == "1234-ABCD" and data["stick"]["label"] == "PANOSTICK"
    assert files_on(image) == ["certificates-omni_cam-01.zip"]
    fsck(image)
    # what is on the stick verifies on its own, and is what was logged
    verdict = station.json("verify", str(image))
    assert verdict["outcome"] == "ok"
    assert verdict["archives"][0]["sha256"] == data["archive"]["sha256"]
    [record] = station.log()
    assert record["outcome"] == "ready" and record["archive"]["sha256"] == data["archive"]["sha256"]
    assert record["certificate"]["serial"] == data["certificate"]["serial"]
    assert record["stick"]["fs_uuid"] == "1234-ABCD"
    assert station.run("log", "verify").returncode == 0


def test_human_output_tells_the_time_left(station, image):
    result = station.run("stage", "--name", "cam-01", "--to", str(image))
    assert result.returncode == 0, result.stderr
    assert (
        re.search(r"TIME LEFT (4m\d\d|5m00)s", result.stdout) and "plug the stick into the appliance" in result.stdout
    )


def test_stage_to_a_directory_needs_fat_unless_allowed(station, tmp_path):
    stick = tmp_path / "stickdir"
    stick.mkdir()
    refused = station.run("stage", "--name", "cam-01", "--to", str(stick))
    assert refused.returncode == ExitCode.STICK_REFUSED, refused.stderr
    assert "not FAT" in refused.stderr or "not a FAT" in refused.stderr
    assert station.devices() == []  # refused before any device was made
    data = station.json("stage", "--name", "cam-01", "--to", str(stick), "--allow-non-fat")
    assert (stick / "certificates-omni_cam-01.zip").stat().st_size == data["archive"]["size"]
    assert [p.name for p in stick.iterdir()] == ["certificates-omni_cam-01.zip"]


def test_bad_input_costs_nothing(station, image):
    result = station.run("stage", "--name", "cam 01", "--eth0", "static", "--eth0-ip", "10.0.0.300", "--to", str(image))
    assert result.returncode == ExitCode.VALIDATION
    assert "--name = 'cam 01'" in result.stderr and "--eth0-ip = '10.0.0.300'" in result.stderr
    assert "--eth0-mask = None: required with --eth0 static" in result.stderr
    assert files_on(image) == [] and not (station.state / "handoff.jsonl").exists()


def test_another_devices_live_archive_blocks_unless_replace(station, image):
    station.json("stage", "--name", "cam-01", "--to", str(image))
    refused = station.run("stage", "--name", "cam-02", "--to", str(image))
    assert refused.returncode == ExitCode.CONFLICT
    assert "certificates-omni_cam-01.zip is the live archive of device cam-01" in refused.stderr
    assert [d["Name"] for d in station.devices()] == ["cam-01"]  # nothing provisioned for cam-02
    old = mtools("mtype", "-i", str(image), "::/certificates-omni_cam-01.zip").stdout
    station.json("stage", "--name", "cam-02", "--to", str(image), "--replace")
    assert files_on(image) == ["certificates-omni_cam-02.zip"]
    assert not raw_contains(image, old)  # the other archive was overwritten, not just unlinked
    fsck(image)


def test_expired_archive_of_another_device_is_replaced(station, image):
    short = {"PANOSTAGE_AUTHORITY_CERT_VALIDITY_SECONDS": "2"}
    station.json("stage", "--name", "cam-01", "--to", str(image), "--margin", "0", **short)
    wait_until(
        lambda: station.run("verify", str(image), "--margin", "0", "--skew", "0").returncode == ExitCode.VERIFY_EXPIRED,
        timeout=15,
        what="the 2 s certificate to expire",
    )
    data = station.json(
        "stage", "--name", "cam-02", "--to", str(image), "--margin", "0", **short, PANOSTAGE_STAGE_SKEW_SECONDS="0"
    )
    assert data["removed_from_stick"] == ["certificates-omni_cam-01.zip"]
    assert files_on(image) == ["certificates-omni_cam-02.zip"]


def test_same_device_restaged_replaces_atomically_and_starts_over(station, image):
    first = station.json("stage", "--name", "cam-01", "--to", str(image))
    # its archive is live on this stick: restaging needs --replace-device
    refused = station.run("stage", "--name", "cam-01", "--to", str(image))
    assert refused.returncode == ExitCode.CONFLICT and "may be live on a stick" in refused.stderr
    second = station.json("stage", "--name", "cam-01", "--to", str(image), "--replace-device")
    assert second["device"]["id"] != first["device"]["id"]
    assert second["devices_deleted"] == [{"id": first["device"]["id"], "name": "cam-01", "reason": "--replace-device"}]
    assert files_on(image) == ["certificates-omni_cam-01.zip"]
    assert [d["DeviceId"] for d in station.devices()] == [second["device"]["id"]]
    kinds = [(r["kind"], r.get("outcome")) for r in station.log()]
    assert kinds == [("handoff", "ready"), ("handoff", "failed"), ("device-deleted", None), ("handoff", "ready")]
    fsck(image)


def test_a_young_device_made_elsewhere_is_refused_unless_replace_device(station, image):
    """The service cannot tell an archive thrown away from one on another station's stick: a device still
    awaiting provisioning is left alone while its certificate could live (tests/test_stations.py: until it dies)."""
    made = station.json("device", "provision", "--name", "cam-01")  # no --out: its archive is gone
    refused = station.run("stage", "--name", "cam-01", "--to", str(image))
    assert refused.returncode == ExitCode.CONFLICT and "not by panostage" in refused.stderr
    assert [d["DeviceId"] for d in station.devices()] == [made["DeviceId"]] and files_on(image) == []
    data = station.json("stage", "--name", "cam-01", "--to", str(image), "--replace-device")
    assert data["devices_deleted"] == [{"id": made["DeviceId"], "name": "cam-01", "reason": "--replace-device"}]
    assert [d["DeviceId"] for d in station.devices()] == [data["device"]["id"]]


def test_provisioned_device_is_a_conflict_unless_replace_device(station, image, tmp_path):
    station.json("stage", "--name", "cam-01", "--to", str(image))
    assert station.run("sim", "appliance", str(image)).returncode == 0
    other = make_image(tmp_path / "other.img", 16)
    refused = station.run("stage", "--name", "cam-01", "--to", str(other))
    assert (
        refused.returncode == ExitCode.CONFLICT and "already exists" in refused.stderr and "SUCCEEDED" in refused.stderr
    )
    assert files_on(other) == []


def test_inside_the_margin_nothing_is_written_and_no_device_is_left(station, image):
    result = station.run(
        "stage", "--name", "cam-01", "--to", str(image), "--json", PANOSTAGE_AUTHORITY_CERT_VALIDITY_SECONDS="30"
    )  # margin 60 > validity 30
    assert result.returncode == ExitCode.VERIFY_EXPIRING, result.stderr
    assert files_on(image) == []
    assert station.devices() == []  # both attempts deleted again
    deleted = [r for r in station.log() if r["kind"] == "device-deleted"]
    assert len(deleted) == 2
    fsck(image)


@pytest.mark.parametrize("blocker", ["directory", "readonly"])
def test_name_blocked_on_the_stick(station, image, blocker):
    target = "::/certificates-omni_cam-01.zip"
    if blocker == "directory":
        mtools("mmd", "-i", str(image), target)
    else:
        mtools("mcopy", "-i", str(image), "-", target, stdin=b"old bytes")
        mtools("mattrib", "-i", str(image), "+r", target)
    refused = station.run("stage", "--name", "cam-01", "--to", str(image))
    assert refused.returncode == ExitCode.CONFLICT, refused.stderr
    assert station.devices() == []
    replaced = station.json("stage", "--name", "cam-01", "--to", str(image), "--replace")
    assert replaced["outcome"] == "ready"
    assert station.json("verify", str(image))["outcome"] == "ok"
    fsck(image)


def test_symlink_at_the_name_is_never_followed(station, tmp_path):
    stick = tmp_path / "stickdir"
    stick.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (stick / "certificates-omni_cam-01.zip").symlink_to(precious)
    refused = station.run("stage", "--name", "cam-01", "--to", str(stick), "--allow-non-fat")
    assert refused.returncode == ExitCode.CONFLICT and "symlink" in refused.stderr
    station.json("stage", "--name", "cam-01", "--to", str(stick), "--allow-non-fat", "--replace")
    assert precious.read_text() == "keep me"
    assert not (stick / "certificates-omni_cam-01.zip").is_symlink()


def test_full_stick_fails_cleanly_without_orphans(station, tmp_path):
    image = make_image(tmp_path / "small.img", 12, size="200K")
    filler = os.urandom(150 * 1024)
    mtools("mcopy", "-i", str(image), "-", "::/filler.bin", stdin=filler)
    result = station.run("stage", "--name", "cam-01", "--to", str(image))
    assert result.returncode == ExitCode.IO, result.stderr
    assert "free" in result.stderr
    assert files_on(image) == ["filler.bin"]
    assert station.devices() == []
    [record] = station.log()
    assert (record["outcome"], record["failed_step"], record["error"]["reason"]) == (
        "failed",
        "check_room",
        "stick-full",
    )
    fsck(image)


def test_not_fat_is_refused(station, tmp_path):
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    result = station.run("stage", "--name", "cam-01", "--to", str(junk))
    assert result.returncode == ExitCode.STICK_REFUSED, result.stderr
    assert station.devices() == []


@pytest.mark.skipif(not IS_ROOT, reason="needs root for a read-only loop device")
def test_read_only_stick_is_refused(station, image):
    with loop_device(image, readonly=True) as dev:
        result = station.run("stage", "--name", "cam-01", "--to", dev)
    assert result.returncode in (ExitCode.STICK_REFUSED, ExitCode.IO), result.stderr
    assert "read-only" in result.stderr
    assert station.devices() == []


@pytest.mark.skipif(not IS_ROOT, reason="needs root for a loop device")
def test_stage_to_a_block_device(station, image):
    with loop_device(image) as dev:
        data = station.json("stage", "--name", "cam-01", "--to", dev)
        assert data["stick"]["kind"] == "block"
    assert files_on(image) == ["certificates-omni_cam-01.zip"]
    fsck(image)


def test_appliance_round_trip_collect_and_wipe(station, image):
    staged = station.json("stage", "--name", "cam-01", "--to", str(image))
    archive = mtools("mtype", "-i", str(image), "::/certificates-omni_cam-01.zip").stdout
    ran = station.json("sim", "appliance", str(image))
    assert ran["outcome"] == "provisioned" and ran["device_id"] == staged["device"]["id"]
    described = station.json("device", "describe", "cam-01")
    assert (described["ProvisioningStatus"], described["DeviceConnectionStatus"]) == ("SUCCEEDED", "ONLINE")
    collected = station.json("stick", "collect", str(image), "--wipe")
    assert collected["outcome"] == "provisioned"
    assert sorted(collected["logs"]) == ["kern.log", "occ.log", "ota_agent.log", "syslog.log"]
    folder = Path(collected["folder"])
    assert "registration succeeded" in (folder / "occ.log").read_text()
    assert files_on(image) == [] and not raw_contains(image, archive)
    fsck(image)
    kinds = [r["kind"] for r in station.log()]
    assert kinds == ["handoff", "collect", "wipe"]
    assert station.run("log", "verify").returncode == 0


def test_expired_archive_fails_at_the_appliance(station, image):
    station.json(
        "stage", "--name", "cam-01", "--to", str(image), "--margin", "0", PANOSTAGE_AUTHORITY_CERT_VALIDITY_SECONDS="1"
    )
    wait_until(
        lambda: station.run("verify", str(image), "--margin", "0", "--skew", "0").returncode == ExitCode.VERIFY_EXPIRED,
        timeout=15,
        what="the 1 s certificate to expire",
    )
    result = station.run("sim", "appliance", str(image), "--json")
    assert result.returncode == ExitCode.OPERATION_FAILED
    assert "expired" in json.loads(result.stdout)["reason"]
    assert station.json("device", "describe", "cam-01")["ProvisioningStatus"] == "FAILED"
    assert station.json("stick", "collect", str(image))["outcome"] == "failed"


def test_never_used_stick_is_reported(station, image):
    station.json("stage", "--name", "cam-01", "--to", str(image))
    assert station.json("stick", "collect", str(image))["outcome"] == "never-used"


def test_wipe_format_keeps_the_label(station, image):
    station.json("stage", "--name", "cam-01", "--to", str(image))
    station.json("stick", "wipe", str(image), "--format")
    info = mtools("minfo", "-i", str(image), "::").stdout.decode()
    assert "PANOSTICK" in info
    assert files_on(image) == []
    fsck(image)


def test_log_verify_detects_tampering_from_the_cli(station, image):
    station.json("stage", "--name", "cam-01", "--to", str(image))
    station.json("stick", "wipe", str(image))
    log = station.state / "handoff.jsonl"
    log.write_text(log.read_text().replace('"outcome":"ready"', '"outcome":"failed"'))
    result = station.run("log", "verify", "--json")
    assert result.returncode == ExitCode.VERIFY_CORRUPT
    assert json.loads(result.stdout)["problems"][0]["problem"] == "edited"


def test_no_key_or_archive_byte_reaches_the_disk(station, image, tmp_path):
    """Stage, then search the state dir, the temp dirs and the log for the archive and any private key."""
    private_tmp = tmp_path / "tmpdir"
    private_tmp.mkdir()
    staged = station.json("stage", "--name", "cam-01", "--to", str(image), TMPDIR=str(private_tmp))
    archive = mtools("mtype", "-i", str(image), "::/certificates-omni_cam-01.zip").stdout
    assert len(archive) == staged["archive"]["size"]
    needles = _secret_needles(archive)
    # This archive's bytes and key must be nowhere but on the stick.
    for root in (station.state, station.home / "run", private_tmp, Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")):
        for path, data in _files(root, skip={image}):
            for label, needle in needles.items():
                assert needle not in data, f"{label} found in {path}"
    # No PEM private key at all in what this station wrote (its state, runtime and temp dirs),
    # but the local authority's own CA key.  (Other sessions' authorities may have CA keys in
    # /tmp; this archive's bytes above are unique to this test and were searched everywhere.)
    ca_dir = station.state / "authority"
    for path, data in [
        *_files(station.state, set()),
        *_files(station.home / "run", set()),
        *_files(private_tmp, set()),
    ]:
        if b"PRIVATE KEY-----" in data:
            assert ca_dir in path.parents, f"a PEM private key in {path}"
    keys = [p for p, data in _files(ca_dir, set()) if b"PRIVATE KEY-----" in data]
    assert len(keys) == 1 and oct(keys[0].stat().st_mode & 0o777) == "0o600"  # the CA's, nothing else


def _secret_needles(archive: bytes) -> dict[str, bytes]:
    import io
    import re
    import zipfile

    from cryptography.hazmat.primitives import serialization

    needles = {
        "the archive": archive,
        "the archive's first 64 bytes": archive[:64],
        "the archive's last 64 bytes": archive[-64:],
    }
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for name in zf.namelist():
            content = zf.read(name)
            for pem in re.findall(
                rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", content, re.S
            ):
                key = serialization.load_pem_private_key(pem, password=None)
                der = key.private_bytes(
                    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
                scalar = key.private_numbers().private_value.to_bytes(32, "big")
                needles.update({f"key PEM in {name}": pem, f"key DER in {name}": der, f"key scalar in {name}": scalar})
    assert any(label.startswith("key PEM") for label in needles)
    return needles


def _files(root: Path, skip: set[Path]):
    """``(path, bytes)`` of every regular file under ``root`` up to 8 MiB (a leaked archive is a few KB;
    larger files are other tests' disk images); files that vanish meanwhile are passed over."""
    if not root.exists():
        return
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                if path in skip or path.is_symlink() or not path.is_file() or path.stat().st_size > 8 << 20:
                    continue
                data = path.read_bytes()
            except OSError:
                continue  # removed or unreadable while we walked: other sessions' temporary files
            yield path, data
