"""Configuration: precedence, provenance, and clear errors for bad files and variables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import config
from agent.errors import ConfigError, ExitCode
from tests.helpers import run_cli


def isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
            "PANOSTAGE_SYSTEM_CONFIG": str(tmp_path / "etc.toml"), **extra}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_when_no_file(tmp_path):
    loaded = config.load(env=isolated_env(tmp_path))
    assert loaded.settings.backend.name == "local"
    assert loaded.settings.authority.cert_validity_seconds == 300
    assert loaded.files == []
    assert all(row["source"] == "default" for row in loaded.rows())


def test_precedence_default_file_env_flag(tmp_path):
    write(tmp_path / "etc.toml", '[backend]\nregion = "eu-west-1"\nread_timeout = 9\nconnect_timeout = 2.5\n')
    write(tmp_path / "xdg/panostage/config.toml", '[backend]\nregion = "eu-central-1"\n')
    env = isolated_env(tmp_path, PANOSTAGE_BACKEND_READ_TIMEOUT="11.5", PANOSTAGE_BACKEND_MAX_ATTEMPTS="2")
    loaded = config.load(env=env, flags={"backend.max_attempts": 7, "backend.region": None})
    s = loaded.settings.backend
    assert (s.region, s.read_timeout, s.connect_timeout, s.max_attempts) == ("eu-central-1", 11.5, 2.5, 7)
    src = loaded.sources
    assert src["backend.region"] == f"file {tmp_path / 'xdg/panostage/config.toml'}"
    assert src["backend.connect_timeout"] == f"file {tmp_path / 'etc.toml'}"
    assert src["backend.read_timeout"] == "env PANOSTAGE_BACKEND_READ_TIMEOUT"
    assert src["backend.max_attempts"] == "flag --max-attempts"
    assert isinstance(s.read_timeout, float) and isinstance(s.max_attempts, int)


def test_explicit_file_replaces_the_standard_ones(tmp_path):
    write(tmp_path / "etc.toml", '[backend]\nregion = "eu-west-1"\n')
    mine = write(tmp_path / "mine.toml", '[wait]\ninterval_seconds = 0.5\n')
    loaded = config.load(str(mine), env=isolated_env(tmp_path))
    assert loaded.settings.backend.region == "us-east-1"
    assert loaded.settings.wait.interval_seconds == 0.5
    assert loaded.files == [str(mine)]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[backend]\nregoin = "x"\n', "unknown key backend.regoin"),
        ('[backnd]\nregion = "x"\n', "unknown section [backnd]"),
        ('[backend]\nread_timeout = "fast"\n', "backend.read_timeout must be a number, got str 'fast'"),
        ('[backend]\nmax_attempts = 2.5\n', "backend.max_attempts must be an integer"),
        ('[authority]\nunique_names = "yes"\n', "authority.unique_names must be a boolean"),
        ('[backend]\nname = "cloud"\n', "backend.name = 'cloud' must be one of local, aws"),
        ('[authority]\nport = 70000\n', "authority.port = 70000 must be at most 65535"),
        ('[backend\n', "not valid TOML"),
        ('backend = 3\n', "backend must be a table"),
    ],
)
def test_bad_file_names_file_key_and_type(tmp_path, text, needle):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        config.load(str(path), env=isolated_env(tmp_path))
    message = info.value.message
    assert needle in message
    assert str(path) in message
    assert info.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("PANOSTAGE_BACKEND_READ_TIMEOUT", "soon", "PANOSTAGE_BACKEND_READ_TIMEOUT: backend.read_timeout must be a number"),
        ("PANOSTAGE_AUTHORITY_UNIQUE_NAMES", "maybe", "must be a boolean"),
        ("PANOSTAGE_BACKEND_REGOIN", "x", "PANOSTAGE_BACKEND_REGOIN is not a configuration key"),
        ("PANOSTAGE_AUTHORITY_DEVICE_QUOTA", "-1", "must be at least 0"),
    ],
)
def test_bad_environment_names_the_variable(tmp_path, var, value, needle):
    with pytest.raises(ConfigError) as info:
        config.load(env=isolated_env(tmp_path, **{var: value}))
    assert needle in info.value.message


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(str(tmp_path / "nope.toml"), env=isolated_env(tmp_path))


def test_config_show_cli_reports_sources_and_hides_secrets(tmp_path):
    write(tmp_path / "xdg/panostage/config.toml", '[authority]\nsecret_access_key = "s3cr3t"\n[backend]\nregion = "ap-south-1"\n')
    result = run_cli("--profile", "lab", "config", "show", "--json", env=isolated_env(tmp_path), home=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = {row["key"]: row for row in data["settings"]}
    assert rows["backend.region"]["value"] == "ap-south-1"
    assert rows["backend.region"]["source"].startswith("file ")
    assert rows["backend.profile"] == {**rows["backend.profile"], "value": "lab", "source": "flag --profile"}
    assert rows["authority.secret_access_key"]["value"] == "***"
    assert "s3cr3t" not in result.stdout + result.stderr
    assert data["resolved"]["state_dir"]


def test_config_error_exit_code_and_message_from_the_cli(tmp_path):
    bad = write(tmp_path / "bad.toml", '[wait]\ntimeout_seconds = "long"\n')
    result = run_cli("--config", str(bad), "config", "show", env=isolated_env(tmp_path), home=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert result.stdout == ""
    assert "wait.timeout_seconds must be a number" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_cli("--config", str(bad), "config", "show", "--json", env=isolated_env(tmp_path), home=tmp_path)
    error = json.loads(result.stderr)["error"]
    assert error["exit_name"] == "CONFIG" and error["details"]["key"] == "wait.timeout_seconds"
