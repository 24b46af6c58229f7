"""What a newcomer stumbled on (issue 12), through the real CLI against the real authority:

1. ``verify`` just after expiry says EXPIRED (exit 21), never "expired left" or EXPIRING;
2. ``job ota`` refuses a major update without ``--allow-major`` before any job is made, and a failed job's
   description says what is known;
3. validation names the flag a value came from (``--eth1-gateway``), not the API path;
4. a resource that is not found names the exact command that lists what exists.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.archive import Outcome, verify_archive
from agent.errors import ExitCode
from tests.archive_factory import LIFETIME, NOW, Pki, build
from tests.helpers import run_cli
from tests.test_cli_operations import Operator


@pytest.fixture
def op(authority_server, tmp_path) -> Operator:
    return Operator(authority_server, tmp_path)


# ---------------------------------------------------------------- 1. expiry at the boundary


@pytest.mark.parametrize("skew", [0, 30, 300])
def test_expiry_boundary_with_a_controlled_clock(skew):
    """The clock is the ``now`` given; the skew tolerance never turns an expired certificate into EXPIRING."""
    end = NOW + LIFETIME
    at_end = verify_archive(build(), now=end, skew_seconds=skew)
    assert at_end.outcome is Outcome.EXPIRING and at_end.codes() == ["expiring"]  # notAfter itself is still valid
    assert "expires in 0 s" in at_end.problems[0].message
    for late, words in ((timedelta(milliseconds=1), "1 s ago"), (timedelta(seconds=29), "29 s ago")):
        report = verify_archive(build(), now=end + late, skew_seconds=skew)
        assert report.outcome is Outcome.EXPIRED and report.exit_code == ExitCode.VERIFY_EXPIRED
        assert report.codes() == ["expired"]
        assert f"expired at {end.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}, {words}" in (
            report.problems[0].message
        )
        assert "expiring" not in report.summary() and "left" not in report.summary()


def _archive_at(folder: Path, seconds_left: float) -> Path:
    """A real archive whose device certificate has ``seconds_left`` on the real clock (the CLI's)."""
    issued = datetime.now(UTC) - LIFETIME + timedelta(seconds=seconds_left)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "certificates-omni_cam-01.zip"
    path.write_bytes(build(Pki.make(issued=issued)))
    return path


@pytest.mark.parametrize("skew", ["0", "30"])
def test_verify_just_after_expiry_is_expired_in_words_and_exit_code(tmp_path, skew):
    archive = _archive_at(tmp_path / "stick", -10)  # expired 10 s ago, inside the default 30 s skew
    for target in (archive, archive.parent):  # the file, and a stick directory holding it
        human = run_cli("verify", str(target), "--skew", skew, home=tmp_path)
        assert human.returncode == ExitCode.VERIFY_EXPIRED, human.stdout + human.stderr
        assert "EXPIRED" in human.stdout and "EXPIRING" not in human.stdout
        assert "expired left" not in human.stdout and "left)" not in human.stdout
        assert "s ago)" in human.stdout  # the validity line: (expired N s ago)
        assert "the device certificate expired at" in human.stdout
    data = json.loads(run_cli("verify", str(archive), "--json", home=tmp_path).stdout)
    assert data["outcome"] == "expired"
    assert [p["code"] for p in data["archives"][0]["problems"]] == ["expired"]


def test_verify_inside_the_margin_is_expiring_with_time_left(tmp_path):
    archive = _archive_at(tmp_path, 45)  # inside the 60 s margin, still valid
    human = run_cli("verify", str(archive), home=tmp_path)
    assert human.returncode == ExitCode.VERIFY_EXPIRING, human.stdout + human.stderr
    assert "s left)" in human.stdout and "expires in" in human.stdout and "expired" not in human.stdout


# ---------------------------------------------------------------- 2. OTA across a major version


def test_major_ota_is_refused_before_any_job_naming_flag_and_versions(op):
    device_id = op.online_device("nm-ota-1")
    result = op.run("job", "ota", device_id, "--image-version", "5.0.0", "--wait")
    assert result.returncode == ExitCode.VALIDATION, result.stderr
    for words in ("runs 4.3.93", "--image-version 5.0.0", "major version update", "--allow-major", "no job was made"):
        assert words in result.stderr, result.stderr
    error = op.json("job", "ota", "nm-ota-1", "--image-version", "5.0.0", expect=ExitCode.VALIDATION)
    assert error["reason"] == "major-version-update"
    assert (error["details"]["current_software"], error["details"]["image_version"]) == ("4.3.93", "5.0.0")
    assert error["details"]["violations"][0]["field"] == "--image-version"
    assert op.json("job", "list", "--device", device_id) == []  # nothing was made
    minor = op.json("job", "ota", device_id, "--image-version", "4.4.0", "--wait")  # a minor one needs nothing
    assert minor["Status"] == "COMPLETED"
    done = op.json("job", "ota", device_id, "--image-version", "5.0.0", "--allow-major", "--wait")
    assert done["Status"] == "COMPLETED"
    assert op.json("device", "describe", device_id)["CurrentSoftware"] == "5.0.0"


def test_a_failed_job_says_what_is_known(op, authority_server):
    """A job another client made without AllowMajorVersionUpdate fails on the service; describing it tells why."""
    device_id = op.online_device("nm-ota-2")
    job_id = authority_server.client().create_job_for_devices(
        DeviceIds=[device_id], JobType="OTA", DeviceJobConfig={"OTAJobConfig": {"ImageVersion": "5.0.0"}}
    )["Jobs"][0]["JobId"]
    waited = op.run("job", "describe", job_id, "--wait")
    assert waited.returncode == ExitCode.OPERATION_FAILED, waited.stderr
    assert "describe it for details" not in waited.stderr
    for words in (f"job {job_id} (OTA 5.0.0 on nm-ota-2", "ended FAILED", "the service gives no reason"):
        assert words in waited.stderr, waited.stderr
    for words in (
        "connection ONLINE",
        "software 4.3.93",
        "5.0.0 is a major version update from 4.3.93",
        "--allow-major",
    ):
        assert words in waited.stderr, waited.stderr
    described = op.json("job", "describe", job_id)
    assert described["Status"] == "FAILED"
    failure = described["Failure"]
    assert failure["CurrentSoftware"] == "4.3.93" and failure["DeviceConnectionStatus"] == "ONLINE"
    assert failure["LatestDeviceJob"] == {"ImageVersion": "5.0.0", "JobType": "OTA", "Status": "FAILED"}
    assert "major version update" in failure["Known"]
    human = op.run("job", "describe", job_id)
    assert human.returncode == 0 and "Known:" in human.stdout and "major version update" in human.stdout


# ---------------------------------------------------------------- 3. flags, not API paths


def test_validation_names_the_flags_typed(op):
    result = op.run("device", "provision", "--name", "bad name", "--eth1", "static", "--eth1-ip", "1.2.3.4:99999")
    assert result.returncode == ExitCode.VALIDATION
    for line in (
        "--name = 'bad name': must match",
        "--eth1-ip = '1.2.3.4:99999': must be",
        "--eth1-gateway = None: required with --eth1 static",
        "--eth1-mask = None: required with --eth1 static",
        "--eth1-dns = None: required with --eth1 static",
    ):
        assert line in result.stderr, result.stderr
    assert "NetworkingConfiguration" not in result.stderr and "StaticIpConnectionInfo" not in result.stderr
    error = op.json(
        "device", "provision", "--name", "ok-name", "--tag", "k" * 129 + "=v", "--tag", "short=" + "v" * 257,
        "--ntp", "Pool.NTP.org", expect=ExitCode.VALIDATION,
    )  # fmt: skip
    assert sorted(v["field"] for v in error["details"]["violations"]) == ["--ntp", "--tag key", "--tag short"]


def test_values_from_input_json_keep_their_request_path(op, tmp_path):
    request = {"Name": "from-file", "NetworkingConfiguration": {"Ethernet0": {"ConnectionType": "STATIC_IP"}}}
    source = tmp_path / "request.json"
    source.write_text(json.dumps(request))
    error = op.json(
        "device", "provision", "--name", "from-file", "--input-json", str(source), "--eth1", "static",
        "--eth1-gateway", "", expect=ExitCode.VALIDATION,
    )  # fmt: skip
    fields = {v["field"] for v in error["details"]["violations"]}
    assert "NetworkingConfiguration.Ethernet0.StaticIpConnectionInfo.Mask" in fields  # the file spells it so
    assert {"--eth1-gateway", "--eth1-ip", "--eth1-mask", "--eth1-dns"} <= fields  # the flags spell these
    assert not any(f.startswith("NetworkingConfiguration.Ethernet1") for f in fields)


def test_a_flag_overrides_one_field_of_the_files_port_and_the_file_may_name_the_device(op, tmp_path):
    static = {"IpAddress": "10.0.0.5", "Mask": "255.255.255.0", "DefaultGateway": "10.0.0.1", "Dns": ["10.0.0.2"]}
    request = {
        "Name": "named-in-file",
        "NetworkingConfiguration": {"Ethernet1": {"ConnectionType": "STATIC_IP", "StaticIpConnectionInfo": static}},
    }
    source = tmp_path / "request.json"
    source.write_text(json.dumps(request))
    made = op.json(
        "device", "provision", "--input-json", str(source), "--eth1-gateway", "10.0.0.254", "--out", str(tmp_path)
    )  # no --name: the file's Name
    assert made["Name"] == "named-in-file"
    described = op.json("device", "describe", made["DeviceId"])
    network = json.dumps(described)
    assert '"10.0.0.254"' in network and '"10.0.0.5"' in network and '"10.0.0.1"' not in network  # one field replaced
    missing = op.run("device", "provision", "--eth0", "dhcp")
    assert missing.returncode == ExitCode.USAGE and "--name is missing" in missing.stderr, missing.stderr


def test_stage_names_the_flags_too_and_costs_nothing(tmp_path):
    stick = tmp_path / "stick"
    stick.mkdir()
    result = run_cli("stage", "--name", "cam-x", "--eth0-ip", "10.0.0.1", "--to", str(stick), home=tmp_path)
    assert result.returncode == ExitCode.VALIDATION, result.stderr
    assert "--eth0-gateway = None: required with --eth0 static" in result.stderr
    assert list(stick.iterdir()) == []


# ---------------------------------------------------------------- 4. not found: the exact command


@pytest.mark.parametrize(
    "args, command",
    [
        (("snow", "reboot", "smd-unknown0000000000000000"), "`panostage snow devices`"),
        (("snow", "describe", "task-unknown"), "`panostage snow list`"),
        (("snow", "cancel", "task-unknown"), "`panostage snow list`"),
        (("job", "describe", "job-unknown"), "`panostage job list`"),
        (("device", "describe", "no-such-device"), "`panostage device list`"),
    ],
)
def test_not_found_names_the_command_that_lists(op, args, command):
    error = op.json(*args, expect=ExitCode.NOT_FOUND)
    assert command in error["hint"], error
    assert "matching `list` command" not in error["hint"]


def test_plan_add_and_job_ota_name_the_flags_too(op):
    added = op.run("plan", "add", "--name", "bad name", "--eth1", "static", "--ota", "")
    assert added.returncode == ExitCode.VALIDATION
    for line in ("--name = 'bad name'", "--eth1-gateway = None: required with --eth1 static", "--ota = ''"):
        assert line in added.stderr, added.stderr
    assert "NetworkingConfiguration" not in added.stderr
    job = op.run("job", "ota", "cam-x", "--image-version", "")
    assert job.returncode == ExitCode.VALIDATION and "--image-version = ''" in job.stderr, job.stderr
    assert "OTAJobConfig" not in job.stderr
