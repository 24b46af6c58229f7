"""Fuzzing through the real command line: every input ends in success or in a clear error with its
documented exit code - never a traceback, never a hang (each run has a deadline).

* Mutated configuration archives fed to ``panostage verify`` (as a file, or on a stick directory):
  bytes flipped, cut, inserted, repeated; ZIP header and directory fields set to edge values.
  In-process, tests/test_archive.py goes much further; this is the same verifier behind the CLI
  boundary (argument handling, file reading, JSON output, exit-code mapping).
* Mutated configuration files given to ``panostage --config FILE`` (lines dropped, repeated,
  values swapped for other types, bytes flipped), plus a few ``PANOSTAGE_*`` variables.

Plan files through the CLI are fuzzed in tests/test_plan_fuzz.py.  The example counts are
modest (each is a process); FAULTS_FUZZ_SCALE=10 for a longer campaign.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ExitCode
from tests import archive_factory as af
from tests.helpers import PEM_KEY_HEADER, REPO, clean_env

SCALE = max(1, int(os.environ.get("FAULTS_FUZZ_SCALE", "1")))
CLI_FUZZ = settings(
    max_examples=30 * SCALE,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
        HealthCheck.data_too_large,
    ],
)
VERIFY_CODES = {
    ExitCode.OK,
    ExitCode.VERIFY_EXPIRING,
    ExitCode.VERIFY_EXPIRED,
    ExitCode.VERIFY_CORRUPT,
    ExitCode.VERIFY_UNVERIFIABLE,
}
DEADLINE = 60.0  # seconds: a hang fails the example instead of stalling the run


def cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args],
            env=clean_env(home, env),
            cwd=REPO,
            capture_output=True,
            timeout=DEADLINE,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"panostage {' '.join(args)} still running after {DEADLINE}s (a hang)")


def no_traceback(result: subprocess.CompletedProcess) -> None:
    text = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in text and result.returncode != ExitCode.ERROR, text


# ---------------------------------------------------------------------------- archives


def _archives() -> list[bytes]:
    now = datetime.now(UTC)
    valid = af.Pki.make(issued=now - timedelta(seconds=5))
    return [
        af.build(valid),  # ok until a mutation breaks it
        af.build(af.Pki.make(issued=now - timedelta(seconds=270))),  # expiring inside the margin
        af.build(),  # long expired (2026-03-01)
        af.write_zip(af.standard_members(valid), zip64=True),
    ]


BASES = _archives()
ZIP_FIELDS = [  # (signature, struct offset of a field, struct format) in local headers, directory, end record
    (b"PK\x03\x04", 6, "<H"),
    (b"PK\x03\x04", 8, "<H"),
    (b"PK\x03\x04", 14, "<I"),
    (b"PK\x03\x04", 18, "<I"),
    (b"PK\x03\x04", 22, "<I"),
    (b"PK\x03\x04", 26, "<H"),
    (b"PK\x03\x04", 28, "<H"),
    (b"PK\x01\x02", 10, "<H"),
    (b"PK\x01\x02", 20, "<I"),
    (b"PK\x01\x02", 24, "<I"),
    (b"PK\x01\x02", 28, "<H"),
    (b"PK\x01\x02", 30, "<H"),
    (b"PK\x01\x02", 38, "<I"),
    (b"PK\x01\x02", 42, "<I"),
    (b"PK\x05\x06", 8, "<H"),
    (b"PK\x05\x06", 10, "<H"),
    (b"PK\x05\x06", 12, "<I"),
    (b"PK\x05\x06", 16, "<I"),
    (b"PK\x05\x06", 20, "<H"),
]
EDGES = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


def mutate(data: bytes, rng: random.Random, steps: int) -> bytes:
    out = bytearray(data)
    for _ in range(steps):
        kind = rng.randrange(7)
        if not out:
            out += b"PK\x03\x04"
        pos = rng.randrange(len(out))
        if kind == 0:  # flip a bit
            out[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:  # cut the tail
            del out[pos:]
        elif kind == 2:  # insert bytes
            out[pos:pos] = rng.randbytes(rng.randrange(1, 64))
        elif kind == 3:  # repeat a slice
            end = min(len(out), pos + rng.randrange(1, 256))
            out[pos:pos] = out[pos:end] * rng.randrange(1, 4)
        elif kind == 4:  # delete a slice
            del out[pos : pos + rng.randrange(1, 128)]
        else:  # a header field to an edge value
            signature, offset, fmt = rng.choice(ZIP_FIELDS)
            spots = [i for i in range(len(out)) if out.startswith(signature, i)]
            if spots:
                at = rng.choice(spots) + offset
                size = struct.calcsize(fmt)
                if at + size <= len(out):
                    value = rng.choice(EDGES) & ((1 << (8 * size)) - 1)
                    out[at : at + size] = struct.pack(fmt, value)
    return bytes(out)


@st.composite
def mutated_archives(draw) -> tuple[bytes, bool, bool]:
    base = draw(st.sampled_from(BASES))
    seed = draw(st.integers(0, 2**32 - 1))
    steps = draw(st.integers(0, 6))
    on_stick = draw(st.booleans())
    name_it = draw(st.booleans())
    return mutate(base, random.Random(seed), steps), on_stick, name_it


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-cli")


@CLI_FUZZ
@given(case=mutated_archives())
def test_mutated_archive_through_verify(home, case):
    data, on_stick, name_it = case
    where = home / ("stick" if on_stick else "files")
    where.mkdir(exist_ok=True)
    for old in where.iterdir():
        old.unlink()
    path = where / "certificates-omni_cam-01.zip"
    path.write_bytes(data)
    args = ["verify", str(where if on_stick else path), "--json", *(["--device", "cam-01"] if name_it else [])]
    result = cli(home, *args)
    no_traceback(result)
    assert result.returncode in VERIFY_CODES, (result.returncode, result.stderr.decode("utf-8", "replace"))
    report = json.loads(result.stdout)  # --json always prints the report
    assert report["outcome"] in ("ok", "expiring", "expired", "corrupt", "unverifiable")
    assert {"ok": 0, "expiring": 20, "expired": 21, "corrupt": 22, "unverifiable": 23}[
        report["outcome"]
    ] == result.returncode


# ---------------------------------------------------------------------------- configuration files

VALID_CONFIG = """\
[backend]
name = "local"
region = "eu-central-1"
connect_timeout = 5.0
read_timeout = 30.0
max_attempts = 4

[authority]
cert_validity_seconds = 300
device_quota = 0
unique_names = true

[wait]
timeout_seconds = 600.0
interval_seconds = 2.0

[stage]
margin_seconds = 60.0
skew_seconds = 30.0
restarts = 1
operator = "lab"
allow_non_fat = false

[verify]
max_members = 64
max_ratio = 200
"""
SWAPS = [
    '"x"',
    "-1",
    "0",
    "1e999",
    "nan",
    "inf",
    "true",
    "[]",
    "{}",
    '"""',
    "'",
    "1979-05-27T07:32:00Z",
    "0x10",
    '"\\u0000"',
    "[[1]]",
    "= 1",
    "",
    "99999999999999999999999",
]
ENV = [
    ("PANOSTAGE_BACKEND_MAX_ATTEMPTS", ["0", "3", "x", "1e3", ""]),
    ("PANOSTAGE_STAGE_MARGIN_SECONDS", ["-5", "nan", "12.5", "inf"]),
    ("PANOSTAGE_NO_SUCH_KEY", ["1"]),
    ("PANOSTAGE_VERIFY_MAX_RATIO", ["0", "500", "many"]),
    ("PANOSTAGE_BACKEND_ENDPOINT_URL", ["notaurl", "http://", "ftp://h", "http://127.0.0.1:1", "https://[::1"]),
    ("PANOSTAGE_STAGE_OPERATOR", [PEM_KEY_HEADER, "a\nb", "x" * 200, "lab"]),
]


@st.composite
def mutated_configs(draw) -> tuple[bytes, dict[str, str]]:
    lines = VALID_CONFIG.splitlines()
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    for _ in range(draw(st.integers(0, 5))):
        kind = rng.randrange(5)
        i = rng.randrange(len(lines))
        if kind == 0:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif kind == 2 and "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + rng.choice(SWAPS)
        elif kind == 3:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        else:
            lines.insert(
                i, rng.choice(["[backend", "[[stage]]", "stage.margin_seconds = 1", "[nope]", "x = 1", "\x00"])
            )
    raw = bytearray("\n".join(lines).encode())
    for _ in range(draw(st.integers(0, 2))):
        if raw:
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    env = {name: rng.choice(values) for name, values in ENV if rng.random() < 0.15}
    return bytes(raw), env


@CLI_FUZZ
@given(case=mutated_configs())
def test_mutated_config_through_the_cli(home, case):
    raw, env = case
    path = home / "config.toml"
    path.write_bytes(raw)
    result = cli(home, "--config", str(path), "config", "show", "--json", env=env)
    no_traceback(result)
    assert result.returncode in (ExitCode.OK, ExitCode.CONFIG), (
        result.returncode,
        result.stderr.decode("utf-8", "replace"),
    )
    if result.returncode == ExitCode.OK:
        json.loads(result.stdout)
    else:
        error = json.loads(result.stderr.decode().splitlines()[-1])["error"]
        assert error["exit_code"] == ExitCode.CONFIG and error["message"]
        assert str(path) in error["message"] or "PANOSTAGE_" in error["message"], error


# ---------------------------------------------------------------------------- crafted stick paths


SPEC_PARTS = [
    "",
    "@@",
    "@@0",
    "@@512",
    "@@-1",
    "@@99999999999999999999999",
    "@@1e3",
    "@@@@4",
    "/",
    "/.",
    "/..",
    "\x00",
    "%",
    "*",
    "?",
    "[",
    " ",
    "\u017f",
]


@st.composite
def crafted_specs(draw) -> tuple[str, str]:
    base = draw(st.sampled_from(["image", "dir", "missing", "dev-null", "fifo", "symlink-loop", "ext4-ish"]))
    tail = "".join(draw(st.lists(st.sampled_from(SPEC_PARTS), max_size=3)))
    command = draw(st.sampled_from(["stage", "verify", "wipe", "collect"]))
    return base + tail, command


@CLI_FUZZ
@given(case=crafted_specs())
def test_crafted_stick_paths_through_the_cli(home, case):
    """Whatever a TARGET names - an offset past the end, a FIFO, a loop of symlinks, NUL bytes - the
    answer is a documented exit code and a message, never a traceback or a hang."""
    spec, command = case
    where = home / "targets"
    if not where.exists():
        where.mkdir()
        (where / "image").write_bytes(b"\xeb" + bytes(4095))
        (where / "dir").mkdir()
        (where / "dev-null").symlink_to("/dev/null")
        os.mkfifo(where / "fifo")
        (where / "symlink-loop").symlink_to(where / "symlink-loop")
        (where / "ext4-ish").write_bytes(bytes(1024) + bytes(56) + b"\x53\xef" + bytes(2048))
    target = str(where / spec) if "\x00" not in spec else str(where) + "/" + spec
    args = {
        "stage": ["stage", "--name", "cam-x", "--to", target],
        "verify": ["verify", target],
        "wipe": ["stick", "wipe", target],
        "collect": ["stick", "collect", target],
    }[command]
    try:
        result = cli(home, *args)
    except ValueError:  # a NUL byte cannot even be passed to a process: nothing to test
        return
    no_traceback(result)
    allowed = {
        ExitCode.USAGE,
        ExitCode.VALIDATION,
        ExitCode.CONFLICT,
        ExitCode.IO,
        ExitCode.STICK_REFUSED,
    } | VERIFY_CODES
    assert result.returncode in allowed, (result.returncode, result.stderr.decode("utf-8", "replace"))
