"""The root help lists every command from the registry without importing any of them."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from agent.cli import SUBCOMMANDS
from tests.helpers import REPO


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_registry_summary_is_the_commands_own(name: str) -> None:
    target, summary = SUBCOMMANDS[name]
    module, attr = target.split(":")
    command = getattr(importlib.import_module(module), attr)
    assert command.name == name
    assert summary == command.get_short_help_str(1000), "update SUBCOMMANDS in agent/cli/__init__.py"


def test_root_help_lists_every_command_and_imports_none() -> None:
    probe = (
        "import sys\n"
        "from agent.cli import main\n"
        "code = main(['--help'])\n"
        "loaded = sorted(m for m in sys.modules if m.endswith('_cmd') or m.split('.')[0] in ('boto3', 'botocore'))\n"
        "print('LOADED', loaded, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(SUBCOMMANDS)
    assert "LOADED []" in result.stderr


def test_backend_clients_do_not_import_boto3(tmp_path) -> None:
    """The agent makes botocore clients directly: boto3's import (s3transfer, multiprocessing)
    would cost every process ~100 ms and the daemon ~2.6 MiB resident."""
    probe = (
        "import sys\n"
        "from agent import config\n"
        "from agent.aws.backend import open_backend\n"
        "backend = open_backend(config.load(None, flags={}).settings)\n"
        "backend.panorama().list_devices()\n"
        "backend.snow()\n"
        "backend.close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 's3transfer')))\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PANOSTAGE_SYSTEM_CONFIG": str(tmp_path / "none.toml"),
        "PANOSTAGE_PATHS_STATE_DIR": str(tmp_path / "state"),
        "PANOSTAGE_PATHS_RUNTIME_DIR": str(tmp_path / "run"),
    }
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
