"""The authority as a process: start-up line, signals, sd_notify, credentials, CA creation
race, and the `authority fault` / `authority clock` commands."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.authority_kit import REGION, ROOT, TEST_KEY, TEST_SECRET, _base_env, read_line, start_authority


def run_cli(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        env=_base_env(tmp, env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_start_line_and_clean_exit_on_sigint(tmp_path):
    server = start_authority(tmp_path)
    assert set(server.info) == {"endpoint_url", "access_key_id", "credentials_file", "state_dir", "pid", "regions"}
    assert server.info["regions"] == [REGION]
    assert server.info["pid"] == server.proc.pid
    assert server.info["access_key_id"] == TEST_KEY and server.info["credentials_file"] is None
    assert server.info["endpoint_url"].startswith("http://127.0.0.1:")
    assert server.admin.health()["status"] == "ok"
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=15) == 0
    output = server.proc.stdout.read().decode()
    assert TEST_SECRET not in output and output == ""  # exactly one line was printed
    assert TEST_SECRET not in server.stderr_path.read_text()


def test_generated_credentials_are_kept_private_and_reused(tmp_path):
    env = {"PANOSTAGE_AUTHORITY_ACCESS_KEY_ID": "", "PANOSTAGE_AUTHORITY_SECRET_ACCESS_KEY": ""}
    first = start_authority(tmp_path, env=env)
    try:
        path = Path(first.info["credentials_file"])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        creds = json.loads(path.read_text())
        assert creds["access_key_id"] == first.info["access_key_id"]
        first.access_key_id, first.secret_access_key = creds["access_key_id"], creds["secret_access_key"]
        assert first.client().list_devices()["Devices"] == []
    finally:
        assert first.stop() == 0
    assert creds["secret_access_key"] not in first.stderr_path.read_text()
    again = start_authority(tmp_path, env=env)
    try:
        assert again.info["access_key_id"] == creds["access_key_id"]
    finally:
        again.stop()


def test_ready_is_notified_to_systemd(tmp_path):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        server = start_authority(tmp_path, env={"NOTIFY_SOCKET": address})
        try:
            assert sock.recv(256) == b"READY=1"
        finally:
            assert server.stop() == 0
        assert sock.recv(256) == b"STOPPING=1"


def test_two_processes_starting_together_make_one_ca(tmp_path):
    """Many processes released at the same instant all end up with the same CA."""
    state = tmp_path / "race"
    code = (
        "import os, sys; from pathlib import Path; from agent.authority.ca import CertificateAuthority; "
        "os.read(int(sys.argv[1]), 1); print(CertificateAuthority.load_or_create(Path(sys.argv[2])).fingerprint)"
    )
    read_fd, write_fd = os.pipe()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(read_fd), str(state)],
            cwd=ROOT,
            pass_fds=(read_fd,),
            stdout=subprocess.PIPE,
            text=True,
            env=_base_env(tmp_path),
        )
        for _ in range(6)
    ]
    os.close(read_fd)
    os.close(write_fd)  # releases every waiting process at once
    prints = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(prints) == 1 and all(p.returncode == 0 for p in procs)
    assert stat.S_IMODE((state / "ca-key.pem").stat().st_mode) == 0o600
    assert sorted(p.name for p in state.iterdir()) == ["ca-key.pem", "ca.lock", "ca.pem"]

    # and two servers started together on one state dir share it too
    both = [start_authority(tmp_path / f"s{i}", state_dir=tmp_path / "shared") for i in range(2)]
    try:
        assert both[0].admin.health()["ca_fingerprint"] == both[1].admin.health()["ca_fingerprint"]
        device = both[0].client().provision_device(Name="one")["DeviceId"]
        assert both[1].client().describe_device(DeviceId=device)["Name"] == "one"
    finally:
        for server in both:
            server.stop()


def test_fault_and_clock_commands(tmp_path, fresh_authority):
    server = fresh_authority()
    aws = {"AWS_ACCESS_KEY_ID": TEST_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET}
    base = ["--endpoint-url", server.endpoint_url, "authority"]
    out = run_cli(tmp_path, *base, "fault", "set", "ProvisionDevice", "error=500", "count=2", "--json", env=aws)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rules"]["ProvisionDevice"] == {"error": 500, "rate": 1.0, "count": 2}
    assert server.admin.faults()["rules"]["ProvisionDevice"]["count"] == 2
    shown = run_cli(tmp_path, *base, "fault", "show", env=aws)
    assert shown.returncode == 0 and "ProvisionDevice" in shown.stdout and "error=500" in shown.stdout
    cleared = run_cli(tmp_path, *base, "fault", "clear", "ProvisionDevice", "--json", env=aws)
    assert json.loads(cleared.stdout)["rules"] == {}
    clock = run_cli(tmp_path, *base, "clock", "--offset", "30", "--json", env=aws)
    assert json.loads(clock.stdout)["offset_seconds"] == 30
    clock = run_cli(tmp_path, *base, "clock", "--advance", "5", env=aws)
    assert clock.returncode == 0 and "+35 s" in clock.stdout
    assert server.admin.clock()["offset_seconds"] == 35


def test_fault_command_errors(tmp_path, fresh_authority):
    no_endpoint = run_cli(tmp_path, "authority", "fault", "show")
    assert no_endpoint.returncode == 2 and "--endpoint-url" in no_endpoint.stderr
    bad_rule = run_cli(
        tmp_path, "--endpoint-url", "http://127.0.0.1:9", "authority", "fault", "set", "ProvisionDevice", "error=418"
    )
    assert bad_rule.returncode == 2 and "418" in bad_rule.stderr
    server = fresh_authority()
    wrong = run_cli(
        tmp_path,
        "--endpoint-url",
        server.endpoint_url,
        "authority",
        "fault",
        "show",
        env={"AWS_ACCESS_KEY_ID": "AKIDNOPE", "AWS_SECRET_ACCESS_KEY": "nope"},
    )
    assert wrong.returncode == 7 and "UnrecognizedClientException" in wrong.stderr  # ExitCode.ACCESS_DENIED
    unreachable = run_cli(
        tmp_path,
        "--endpoint-url",
        "http://127.0.0.1:9",
        "authority",
        "clock",
        env={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
    )
    assert unreachable.returncode == 11  # ExitCode.UNREACHABLE


def test_serve_refuses_a_busy_port_and_half_credentials(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        busy = run_cli(tmp_path, "authority", "serve", "--port", str(port), "--state-dir", str(tmp_path / "s"))
    assert busy.returncode == 14 and "cannot listen" in busy.stderr
    half = run_cli(
        tmp_path,
        "authority",
        "serve",
        "--state-dir",
        str(tmp_path / "s"),
        env={"PANOSTAGE_AUTHORITY_SECRET_ACCESS_KEY": ""},
    )
    assert half.returncode == 3  # ExitCode.CONFIG


def test_command_module_stays_light(tmp_path):
    code = (
        "import sys, time; t = time.perf_counter(); import agent.cli.authority_cmd; "
        "print(sorted(m for m in ('boto3', 'botocore', 'cryptography', 'sqlite3') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_base_env(tmp_path), capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]", out.stderr
    started = time.perf_counter()
    helped = run_cli(tmp_path, "authority", "--help")
    assert helped.returncode == 0 and "serve" in helped.stdout and "fault" in helped.stdout
    assert time.perf_counter() - started < 5  # generous: a loaded CI machine; the import check above is the real guard


def test_start_line_is_read_with_a_deadline(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        with pytest.raises(TimeoutError):
            read_line(proc, time.monotonic() + 0.2)
    finally:
        proc.kill()
        proc.wait()
