"""``--input-json FILE``: every bad file ends in a usage error naming the flag, the file and the rule."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.inputs import INPUT_JSON_MAX_BYTES, INPUT_JSON_MAX_DEPTH, read_input_json
from agent.errors import ExitCode, UsageError
from tests.helpers import REPO, run_cli


def plan_add(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    return run_cli(
        "--state-dir", str(tmp_path / "state"), "plan", "add", "--name", "cam-1", "--input-json", source, home=tmp_path
    )


def assert_usage(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "Traceback" not in result.stderr
    for needle in ("--input-json", *needles):
        assert needle in result.stderr, result.stderr


def test_deeply_nested_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert_usage(plan_add(tmp_path, str(path)), str(path), f"nested more than {INPUT_JSON_MAX_DEPTH} levels")


def test_nesting_just_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(
        json.dumps({"Name": "cam-1", "Tags": json.loads("[" * INPUT_JSON_MAX_DEPTH + "]" * INPUT_JSON_MAX_DEPTH)})
    )
    with pytest.raises(UsageError, match="nested more than"):
        read_input_json(str(path))
    path.write_text(
        json.dumps({"Tags": json.loads("[" * (INPUT_JSON_MAX_DEPTH - 1) + "]" * (INPUT_JSON_MAX_DEPTH - 1))})
    )
    assert read_input_json(str(path))["Tags"]


def test_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b'{"Description": "' + b"x" * INPUT_JSON_MAX_BYTES + b'"}')
    assert_usage(plan_add(tmp_path, str(path)), f"larger than the {INPUT_JSON_MAX_BYTES} bytes allowed")


def test_endless_device_is_cut_at_the_limit(tmp_path: Path) -> None:
    assert_usage(plan_add(tmp_path, "/dev/zero"), "/dev/zero", "larger than")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"Description": "caf\u00e9"}'.encode("latin-1"))
    assert_usage(plan_add(tmp_path, str(path)), "not UTF-8 text (byte 0xe9 at offset 20)", "save the file as UTF-8")


@pytest.mark.parametrize(("text", "needle"), [("{oops", "not valid JSON"), ("[1, 2]", "must hold a JSON object")])
def test_not_a_json_object(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert_usage(plan_add(tmp_path, str(path)), needle)


def test_a_directory(tmp_path: Path) -> None:
    assert_usage(plan_add(tmp_path, str(tmp_path)), str(tmp_path))
    with pytest.raises(UsageError, match=r"cannot read it: Is a directory \[EISDIR\]"):  # past click's check too
        read_input_json(str(tmp_path))


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv (to read the file as an unprivileged user)",
)
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "private.json"
    path.write_text("{}")
    path.chmod(0o600)
    code = (
        "import sys; from agent.cli.inputs import read_input_json\n"
        "try:\n    read_input_json(sys.argv[1])\n"
        "except Exception as exc:\n    print(int(exc.exit_code), exc.message)\n"
    )
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert proc.stdout.startswith(f"{int(ExitCode.USAGE)} --input-json {path}: cannot read it: Permission denied"), proc


def test_a_good_file_is_used(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_bytes(b'\xef\xbb\xbf{"Description": "from the file"}')  # a UTF-8 BOM is fine
    result = plan_add(tmp_path, str(path))
    assert result.returncode == 0, result.stderr
    shown = run_cli("--state-dir", str(tmp_path / "state"), "--json", "plan", "list", home=tmp_path)
    assert json.loads(shown.stdout)[0]["request"]["Description"] == "from the file"
