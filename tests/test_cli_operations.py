"""The documented operations through the real CLI, real boto3 and a real authority process.

Every exit code of the named set that an operation can end in is produced here by
the real peer (faults injected through its admin API), not by a stub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ExitCode
from tests.authority_kit import REGION, TEST_KEY, TEST_SECRET, start_authority
from tests.helpers import REPO, clean_env, run_cli


class Operator:
    """Runs `panostage --endpoint-url <authority>` with the authority's credentials."""

    def __init__(self, authority, home: Path, **env: str) -> None:
        self.authority = authority
        self.home = home
        self.env = {
            "AWS_ACCESS_KEY_ID": TEST_KEY,
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
            "PANOSTAGE_BACKEND_ENDPOINT_URL": authority.endpoint_url,
            "PANOSTAGE_BACKEND_REGION": REGION,
            "PANOSTAGE_PATHS_STATE_DIR": str(home / "state"),
            "PANOSTAGE_WAIT_INTERVAL_SECONDS": "0.05",
            **env,
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return run_cli(*args, env={**self.env, **env}, home=self.home)

    def json(self, *args: str, expect: int = 0, **env: str):
        result = self.run(*args, "--json", **env)
        assert result.returncode == expect, f"exit {result.returncode} (wanted {expect})\n{result.stderr}"
        # with --json, the error is the last line of stderr (human progress lines may come before it)
        return json.loads(result.stdout) if expect == 0 else json.loads(result.stderr.splitlines()[-1])["error"]

    def online_device(self, name: str) -> str:
        """Provision a device and let the simulated appliance claim it."""
        stick = self.home / f"stick-{name}"
        stick.mkdir()
        made = self.json("device", "provision", "--name", name, "--out", str(stick))
        assert (
            self.json("sim", "appliance", str(stick), "--endpoint-url", self.authority.endpoint_url)["outcome"]
            == "provisioned"
        )
        return made["DeviceId"]


@pytest.fixture
def op(authority_server, tmp_path) -> Operator:
    return Operator(authority_server, tmp_path)


@pytest.fixture
def own_authority(tmp_path):
    """An authority of this test's own (faults, quotas, clock)."""
    servers = []

    def start(*args: str, **env: str):
        server = start_authority(
            tmp_path / f"authority{len(servers)}", args=list(args) or ["--job-step-seconds", "0.2"], env=env or None
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ---------------------------------------------------------------- devices


def test_device_provision_list_describe_delete(op, tmp_path):
    out = tmp_path / "archive.zip"
    made = op.json(
        "device",
        "provision",
        "--name",
        "cli-dev-1",
        "--description",
        "lobby camera",
        "--tag",
        "site=lab",
        "--tag",
        "floor=",
        "--eth0",
        "static",
        "--eth0-ip",
        "10.1.2.3",
        "--eth0-mask",
        "255.255.255.0",
        "--eth0-gateway",
        "10.1.2.1",
        "--eth0-dns",
        "10.1.2.2",
        "--eth1",
        "dhcp",
        "--ntp",
        "pool.ntp.org",
        "--ntp",
        "10.1.2.1:123",
        "--out",
        str(out),
    )
    assert made["Status"] == "AWAITING_PROVISIONING" and made["attempts"] == 1
    assert out.stat().st_mode & 0o777 == 0o600 and out.stat().st_size == made["archive"]["size"]
    listed = [d for d in op.json("device", "list", "--name", "cli-dev-") if d["DeviceId"] == made["DeviceId"]]
    assert listed and listed[0]["Name"] == "cli-dev-1"
    described = op.json("device", "describe", "cli-dev-1")  # by name
    assert described["DeviceId"] == made["DeviceId"]
    assert described["Tags"] == {"site": "lab", "floor": ""}
    assert described["NetworkingConfiguration"]["Ethernet0"]["StaticIpConnectionInfo"]["Dns"] == ["10.1.2.2"]
    assert described["NetworkingConfiguration"]["Ntp"]["NtpServers"] == ["pool.ntp.org", "10.1.2.1:123"]
    deleted = op.json("device", "delete", made["DeviceId"], "--wait")
    assert deleted["Deleted"] is True
    missing = op.json("device", "describe", made["DeviceId"], expect=ExitCode.NOT_FOUND)
    assert missing["reason"] == "not-found"


def test_provision_out_refuses_to_overwrite_and_can_write_stdout(op, tmp_path):
    out = tmp_path / "a.zip"
    out.write_bytes(b"precious")
    result = op.run("device", "provision", "--name", "cli-dev-2", "--out", str(out))
    assert result.returncode == ExitCode.CONFLICT and out.read_bytes() == b"precious"
    proc = run_cli("device", "provision", "--name", "cli-dev-3", "--out", "-", env=op.env, home=op.home, text=False)
    assert proc.returncode == 0 and proc.stdout[:2] == b"PK"


def test_validation_lists_every_violation_and_sends_nothing(op):
    error = op.json(
        "device",
        "provision",
        "--name",
        "bad name",
        "--description",
        "x" * 256,
        "--tag",
        "k=" + "v" * 257,
        "--eth1",
        "static",
        "--eth1-ip",
        "192.168.1.1:0",
        "--ntp",
        "NTP.example.com",
        expect=ExitCode.VALIDATION,
    )
    fields = sorted(v["field"] for v in error["details"]["violations"])
    assert fields == sorted(
        [
            "--name",
            "--description",
            "--tag k",
            "--eth1-ip",
            "--eth1-mask",
            "--eth1-gateway",
            "--eth1-dns",
            "--ntp",
        ]
    )
    assert not [d for d in op.json("device", "list") if d["Name"] == "bad name"]


def test_contradictory_flags_are_usage_errors(op):
    result = op.run("device", "provision", "--name", "x", "--eth0", "dhcp", "--eth0-ip", "10.0.0.1")
    assert result.returncode == ExitCode.USAGE and "dhcp was given together with static" in result.stderr
    result = op.run("device", "provision", "--name", "x", "--tag", "novalue")
    assert result.returncode == ExitCode.USAGE and "KEY=VALUE" in result.stderr


def test_server_side_validation_is_mapped_too(authority_server):
    """botocore does not check patterns: the authority answers 400 with Fields."""
    from botocore.exceptions import ClientError

    from agent.error_mapping import to_error

    client = authority_server.client()
    with pytest.raises(ClientError) as info:
        client.provision_device(Name="no spaces allowed")
    error = to_error(info.value)
    assert error.exit_code == ExitCode.VALIDATION
    assert error.details["fields"][0]["Name"] == "Name"


# ---------------------------------------------------------------- jobs


def test_ota_and_reboot_jobs_wait_to_completion(op):
    device_id = op.online_device("cli-job-1")
    done = op.json("job", "ota", device_id, "--image-version", "4.3.94", "--wait")
    assert done["Status"] == "COMPLETED" and done["ImageVersion"] == "4.3.94"
    assert op.json("device", "describe", device_id)["CurrentSoftware"] == "4.3.94"
    rebooted = op.json("job", "reboot", "cli-job-1", "--wait")
    assert rebooted["Status"] == "COMPLETED" and rebooted["JobType"] == "REBOOT"
    jobs = op.json("job", "list", "--device", device_id)
    assert sorted(j["JobType"] for j in jobs) == ["OTA", "REBOOT"]
    assert op.json("job", "describe", done["JobId"])["Status"] == "COMPLETED"


def test_major_ota_without_permission_is_refused_before_any_job(op):
    device_id = op.online_device("cli-job-2")
    error = op.json("job", "ota", device_id, "--image-version", "5.0.0", "--wait", expect=ExitCode.VALIDATION)
    assert error["reason"] == "major-version-update" and "--allow-major" in error["hint"]
    assert op.json("job", "list", "--device", device_id) == []
    done = op.json("job", "ota", device_id, "--image-version", "5.0.0", "--allow-major", "--wait")
    assert done["Status"] == "COMPLETED"


def test_job_on_a_device_not_yet_provisioned_is_a_conflict(op):
    made = op.json("device", "provision", "--name", "cli-job-3")
    error = op.json("job", "reboot", made["DeviceId"], expect=ExitCode.CONFLICT)
    assert "AWAITING_PROVISIONING" in error["message"]
    error = op.json("job", "ota", made["DeviceId"], "--image-version", "", expect=ExitCode.VALIDATION)
    assert error["details"]["violations"][0]["field"] == "--image-version"  # the flag typed


def test_wait_timeout_names_the_last_state(own_authority, tmp_path):
    server = own_authority("--job-step-seconds", "30")
    op = Operator(server, tmp_path)
    device_id = op.online_device("cli-job-4")
    error = op.json("job", "reboot", device_id, "--wait", "--timeout", "0.3", expect=ExitCode.TIMEOUT)
    assert error["details"]["state"] == "PENDING" and "last state seen: PENDING" in error["message"]


# ---------------------------------------------------------------- packages


def test_package_import_is_idempotent_by_default(op):
    args = (
        "package",
        "import",
        "--bucket",
        "pkgs",
        "--key",
        "nodes/n1.tar.gz",
        "--name",
        "people-counter",
        "--version",
        "1.2",
        "--tag",
        "team=vision",
    )
    first = op.json(*args)
    again = op.json(*args)
    assert again["JobId"] == first["JobId"]  # same request, same derived ClientToken
    finished = op.json("package", "describe", first["JobId"], "--wait")
    assert finished["Status"] == "SUCCEEDED" and finished["Output"]["PackageVersion"] == "1.2"
    clash = op.json(
        "package",
        "import",
        "--bucket",
        "pkgs",
        "--key",
        "other",
        "--name",
        "people-counter",
        "--version",
        "1.3",
        "--client-token",
        first["ClientToken"],
        expect=ExitCode.CONFLICT,
    )
    assert clash["details"]["error_code"] == "ConflictException"
    bad = op.json(
        "package",
        "import",
        "--bucket",
        "b",
        "--key",
        "k",
        "--name",
        "p",
        "--version",
        "1.2.3",
        "--client-token",
        "has space",
        expect=ExitCode.VALIDATION,
    )
    assert {v["field"] for v in bad["details"]["violations"]} == {
        "ClientToken",
        "OutputConfig.PackageVersionOutputConfig.PackageVersion",
    }


# ---------------------------------------------------------------- snow


def test_snow_reboot_unlock_executions_cancel(op):
    devices = [d["managedDeviceId"] for d in op.json("snow", "devices")]
    assert len(devices) >= 2
    rebooted = op.json("snow", "reboot", *devices[:2], "--description", "weekly reboot", "--wait")
    assert rebooted["state"] == "COMPLETED"
    assert {e["state"] for e in rebooted["executions"]} == {"SUCCEEDED"}
    task = op.json("snow", "unlock", devices[0])
    one = op.json("snow", "executions", task["taskId"], "--device", devices[0])
    assert one["managedDeviceId"] == devices[0]
    canceled = op.json("snow", "cancel", task["taskId"])
    assert canceled["taskId"] == task["taskId"]
    assert op.json("snow", "describe", task["taskId"])["state"] == "CANCELED"
    assert task["taskId"] in {t["taskId"] for t in op.json("snow", "list", "--state", "CANCELED")}
    unknown = op.json("snow", "reboot", "smd-doesnotexist000000000000", expect=ExitCode.NOT_FOUND)
    assert unknown["details"]["error_code"] == "ResourceNotFoundException"
    bad = op.json("snow", "reboot", *(["smd-x"] * 11), "--description", "no-dashes", expect=ExitCode.VALIDATION)
    assert {v["field"] for v in bad["details"]["violations"]} == {"targets", "description"}


# ---------------------------------------------------------------- errors and retries


def test_wrong_credentials_are_access_denied(op):
    error = op.json("device", "list", expect=ExitCode.ACCESS_DENIED, AWS_SECRET_ACCESS_KEY="wrong" * 8)
    assert error["details"]["http_status"] == 403


def test_no_credentials_are_access_denied_with_a_hint(op):
    result = op.run("device", "list", AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    assert result.returncode == ExitCode.ACCESS_DENIED
    assert "hint:" in result.stderr and "Traceback" not in result.stderr


def test_quota_is_its_own_exit_code(own_authority, tmp_path):
    server = own_authority(PANOSTAGE_AUTHORITY_DEVICE_QUOTA="1")
    op = Operator(server, tmp_path)
    op.json("device", "provision", "--name", "q-1")
    error = op.json("device", "provision", "--name", "q-2", expect=ExitCode.QUOTA)
    assert error["details"]["quotaCode"]


@pytest.mark.parametrize(
    ("status", "code", "exit_code"),
    [
        (500, "InternalServerException", ExitCode.SERVICE),
        (429, "ThrottlingException", ExitCode.THROTTLED),
    ],
)
def test_persistent_service_errors_after_standard_retries(own_authority, tmp_path, status, code, exit_code):
    server = own_authority()
    server.admin.set_fault("ListDevices", error=status)
    op = Operator(server, tmp_path, PANOSTAGE_BACKEND_MAX_ATTEMPTS="3")
    error = op.json("device", "list", expect=exit_code)
    assert error["details"]["error_code"] == code
    assert error["details"]["retry_attempts"] == 2  # botocore's standard mode tried three times


def test_a_passing_fault_is_retried_away(own_authority, tmp_path):
    server = own_authority()
    server.admin.set_fault("ListDevices", error=500, count=2)
    op = Operator(server, tmp_path, PANOSTAGE_BACKEND_MAX_ATTEMPTS="3")
    assert op.json("device", "list") == []


def test_unreachable_endpoint(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    result = run_cli(
        "--endpoint-url",
        f"http://127.0.0.1:{port}",
        "device",
        "list",
        env={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "PANOSTAGE_BACKEND_MAX_ATTEMPTS": "1"},
        home=tmp_path,
    )
    assert result.returncode == ExitCode.UNREACHABLE and "cannot reach" in result.stderr


def test_read_timeout(own_authority, tmp_path):
    server = own_authority()
    server.admin.set_fault("ListDevices", latency_ms=3000)
    op = Operator(server, tmp_path, PANOSTAGE_BACKEND_READ_TIMEOUT="0.5", PANOSTAGE_BACKEND_MAX_ATTEMPTS="1")
    error = op.json("device", "list", expect=ExitCode.UNREACHABLE)
    assert error["reason"] == "timeout"


# ---------------------------------------------------------------- ProvisionDevice is not idempotent


@pytest.mark.parametrize("unique_names", ["true", "false"])
@pytest.mark.parametrize("fault", [{"error": 500}, {"drop_connection": True}])
def test_a_lost_provision_answer_never_leaves_two_devices(own_authority, tmp_path, unique_names, fault):
    server = own_authority("--job-step-seconds", "0.2", PANOSTAGE_AUTHORITY_UNIQUE_NAMES=unique_names)
    server.admin.set_fault("ProvisionDevice", after_commit=True, count=1, **fault)
    op = Operator(server, tmp_path)
    made = op.json("device", "provision", "--name", "lost-1", "--out", str(tmp_path / "a.zip"))
    assert made["attempts"] == 2 and len(made["orphans_deleted"]) == 1
    live = [d for d in op.json("device", "list", "--name", "lost-1") if d["ProvisioningStatus"] != "DELETING"]
    assert [d["DeviceId"] for d in live] == [made["DeviceId"]]
    assert made["orphans_deleted"][0] != made["DeviceId"]


def test_provision_that_keeps_failing_leaves_no_device(own_authority, tmp_path):
    server = own_authority()
    server.admin.set_fault("ProvisionDevice", after_commit=True, error=500)
    op = Operator(server, tmp_path, PANOSTAGE_BACKEND_MAX_ATTEMPTS="3")
    error = op.json("device", "provision", "--name", "lost-2", expect=ExitCode.SERVICE)
    assert error["details"]["error_code"] == "InternalServerException"
    server.admin.clear_faults()
    live = [d for d in op.json("device", "list", "--name", "lost-2") if d["ProvisioningStatus"] != "DELETING"]
    assert live == []


def test_a_conflict_on_the_first_attempt_is_not_retried(op):
    first = op.json("device", "provision", "--name", "taken-1")
    error = op.json("device", "provision", "--name", "taken-1", expect=ExitCode.CONFLICT)
    assert "already exists" in error["message"]
    assert op.json("device", "describe", first["DeviceId"])["ProvisioningStatus"] == "AWAITING_PROVISIONING"


# ---------------------------------------------------------------- other consumers of the model


def test_the_aws_cli_works_with_our_service_definition(op):
    aws = Path(sys.executable).with_name("aws")
    if not aws.exists():
        pytest.skip("awscli is not installed in this environment (scripts/test installs it)")
    data_path = op.json("config", "data-path")["data_path"]
    env = clean_env(op.home, {**op.env, "AWS_DATA_PATH": data_path, "AWS_DEFAULT_REGION": REGION})
    made = subprocess.run(
        [
            str(aws),
            "panorama",
            "provision-device",
            "--name",
            "awscli-1",
            "--endpoint-url",
            op.authority.endpoint_url,
            "--output",
            "json",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["Status"] == "AWAITING_PROVISIONING"
    without = subprocess.run(
        [str(aws), "panorama", "list-devices", "--endpoint-url", op.authority.endpoint_url],
        env={k: v for k, v in env.items() if k != "AWS_DATA_PATH"},
        capture_output=True,
        text=True,
    )
    assert without.returncode != 0  # the aws cli's own botocore no longer knows panorama


def test_an_older_botocore_uses_our_definition_too(op):
    python = os.environ.get("PANOSTAGE_COMPAT_PYTHON")
    if not python:
        pytest.skip("PANOSTAGE_COMPAT_PYTHON is not set (scripts/test sets up .venv-compat with an older botocore)")
    probe = (
        "import botocore, agent.aws.model as m; s = m.new_botocore_session(); "
        "print(botocore.__version__); print(s.get_service_model('panorama').documentation)"
    )
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=REPO, env=clean_env(op.home))
    assert out.returncode == 0, out.stderr
    version, doc = out.stdout.splitlines()[:2]
    assert tuple(int(x) for x in version.split(".")[:3]) < (1, 43, 38)  # a botocore that still ships panorama
    assert "subset used by panostage" in doc
    result = subprocess.run(
        [python, "-m", "agent", "--json", "device", "provision", "--name", "compat-1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=clean_env(op.home, op.env),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Status"] == "AWAITING_PROVISIONING"
