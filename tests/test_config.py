"""Configuration: precedence, provenance, and clear errors for bad files and variables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import config
from agent.errors import ConfigError, ExitCode
from tests.helpers import PEM_KEY_HEADER, run_cli


def isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "PANOSTAGE_SYSTEM_CONFIG": str(tmp_path / "etc.toml"),
        **extra,
    }


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
    mine = write(tmp_path / "mine.toml", "[wait]\ninterval_seconds = 0.5\n")
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
        ("[backend]\nmax_attempts = 2.5\n", "backend.max_attempts must be an integer"),
        ('[authority]\nunique_names = "yes"\n', "authority.unique_names must be a boolean"),
        ('[backend]\nname = "cloud"\n', "backend.name = 'cloud' must be one of local, aws"),
        ("[authority]\nport = 70000\n", "authority.port = 70000 must be at most 65535"),
        ("[backend\n", "not valid TOML"),
        ("backend = 3\n", "backend must be a table"),
        ("[backend]\nconnect_timeout = 1" + "0" * 400 + "\n", "backend.connect_timeout must be a number"),
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
        (
            "PANOSTAGE_BACKEND_READ_TIMEOUT",
            "soon",
            "PANOSTAGE_BACKEND_READ_TIMEOUT: backend.read_timeout must be a number",
        ),
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
    write(
        tmp_path / "xdg/panostage/config.toml",
        '[authority]\nsecret_access_key = "s3cr3t"\n[backend]\nregion = "ap-south-1"\n',
    )
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


def test_authority_regions_is_a_list_in_files_comma_separated_in_the_environment(tmp_path):
    assert config.load(env=isolated_env(tmp_path)).settings.authority.regions == ()  # empty: the backend region
    path = write(tmp_path / "regions.toml", '[authority]\nregions = ["us-east-1", "eu-west-1"]\n')
    assert config.load(str(path), env=isolated_env(tmp_path)).settings.authority.regions == ("us-east-1", "eu-west-1")
    loaded = config.load(env=isolated_env(tmp_path, PANOSTAGE_AUTHORITY_REGIONS=" us-west-2 , ap-south-1,,"))
    assert loaded.settings.authority.regions == ("us-west-2", "ap-south-1")
    assert loaded.sources["authority.regions"] == "env PANOSTAGE_AUTHORITY_REGIONS"
    for text, needle in [
        ('regions = "us-east-1"', "authority.regions must be a list of strings, got str"),
        ("regions = [1]", "authority.regions must be a list of strings, got list"),
        ('regions = ["us east-1"]', "must hold region names such as us-east-1"),
    ]:
        bad = write(tmp_path / "bad.toml", f"[authority]\n{text}\n")
        with pytest.raises(ConfigError) as info:
            config.load(str(bad), env=isolated_env(tmp_path))
        assert needle in info.value.message and str(bad) in info.value.message
    with pytest.raises(ConfigError) as info:
        config.load(env=isolated_env(tmp_path, PANOSTAGE_AUTHORITY_REGIONS="eu-west-1,eu_west_2"))
    assert "PANOSTAGE_AUTHORITY_REGIONS" in info.value.message and "'eu_west_2' is not one" in info.value.message
    shown = run_cli(
        "config", "show", "--json", env=isolated_env(tmp_path, PANOSTAGE_AUTHORITY_REGIONS="eu-west-1"), home=tmp_path
    )
    row = {row["key"]: row for row in json.loads(shown.stdout)["settings"]}["authority.regions"]
    assert (row["value"], row["type"]) == (["eu-west-1"], "list of strings"), row
    human = run_cli("config", "show", env=isolated_env(tmp_path), home=tmp_path)
    assert human.returncode == 0 and "authority.regions" in human.stdout


@pytest.mark.parametrize("value", ["nan", "inf", "-1e999"])
def test_a_value_json_cannot_hold_is_reported_in_valid_json(tmp_path, value):
    env = {**isolated_env(tmp_path), "PANOSTAGE_BACKEND_CONNECT_TIMEOUT": value}
    result = run_cli("config", "show", "--json", env=env, home=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    out = result.stdout or result.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    error = json.loads(out, parse_constant=refuse)["error"]
    assert error["details"]["key"] == "backend.connect_timeout" and "finite" in error["message"]


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


@pytest.mark.parametrize(
    "value",
    [
        "notaurl",
        "ftp://authority.example",
        "http://",
        "https:///path",
        "http://-bad-.example",
        "http://host:99999",
        "http://a b.example",
        "http://[nope]:80",
    ],
)
def test_endpoint_url_must_be_an_http_url_with_a_host(tmp_path, value):
    with pytest.raises(ConfigError) as info:
        config.load(env=isolated_env(tmp_path, PANOSTAGE_BACKEND_ENDPOINT_URL=value))
    message = info.value.message
    assert "PANOSTAGE_BACKEND_ENDPOINT_URL" in message and "backend.endpoint_url" in message
    assert repr(value) in message and "http:// or https:// URL with a host, e.g. http://127.0.0.1:8750" in message
    assert info.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize(
    "value",
    [
        "",
        "http://127.0.0.1:8750",
        "https://panorama.us-east-1.amazonaws.com/",
        "http://[::1]:8750",
        "HTTP://Authority.Example.:80",
    ],
)
def test_endpoint_url_accepts_http_urls(tmp_path, value):
    loaded = config.load(env=isolated_env(tmp_path, PANOSTAGE_BACKEND_ENDPOINT_URL=value))
    assert loaded.settings.backend.endpoint_url == value


def test_endpoint_url_rule_holds_in_files_and_flags(tmp_path):
    path = write(tmp_path / "bad.toml", '[backend]\nendpoint_url = "localhost:8750"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: backend.endpoint_url = 'localhost:8750' must be an http"):
        config.load(str(path), env=isolated_env(tmp_path))
    with pytest.raises(ConfigError, match=r"command line: backend.endpoint_url = 'x' must be an http"):
        config.load(env=isolated_env(tmp_path), flags={"backend.endpoint_url": "x"})


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (PEM_KEY_HEADER, "not key material"),
        ("ops\nsecond line", "control characters"),
        ("x" * 129, "at most 128 characters"),
        ("alice\x1b[2J", "control characters"),
        ("alice\u202e", "control characters"),
    ],
)
def test_operator_rules(tmp_path, value, rule):
    with pytest.raises(ConfigError) as info:
        config.load(env=isolated_env(tmp_path, PANOSTAGE_STAGE_OPERATOR=value))
    assert "PANOSTAGE_STAGE_OPERATOR" in info.value.message and "stage.operator" in info.value.message
    assert rule in info.value.message and info.value.exit_code == ExitCode.CONFIG
    path = write(tmp_path / "op.toml", f"[stage]\noperator = {json.dumps(value)}\n")
    with pytest.raises(ConfigError, match=rule):
        config.load(str(path), env=isolated_env(tmp_path))


def test_operator_key_material_is_not_repeated(tmp_path):
    secret = PEM_KEY_HEADER + "\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
    with pytest.raises(ConfigError) as info:
        config.load(env=isolated_env(tmp_path, PANOSTAGE_STAGE_OPERATOR=secret))
    shown = json.dumps(info.value.to_dict())
    assert "MIGHAgEA" not in shown and "withheld" in info.value.message


def test_check_operator_for_the_login_name_fallback():
    assert config.check_operator("alice", "login name") == "alice"
    assert config.check_operator("Zoë Ångström", "login name") == "Zoë Ångström"
    with pytest.raises(ConfigError) as info:
        config.check_operator("bob\nseq 7 forged", "environment USER")
    assert info.value.message.startswith("environment USER: ") and "U+000A" in info.value.message
    assert info.value.exit_code == ExitCode.CONFIG and "PANOSTAGE_STAGE_OPERATOR" in info.value.hint


def test_operator_refused_by_the_cli_before_anything_runs(tmp_path):
    result = run_cli(
        "config", "show", env=isolated_env(tmp_path, PANOSTAGE_STAGE_OPERATOR=PEM_KEY_HEADER), home=tmp_path
    )
    assert result.returncode == ExitCode.CONFIG and "Traceback" not in result.stderr
    assert "PRIVATE KEY" not in result.stdout
    result = run_cli(
        "device", "list", env=isolated_env(tmp_path, PANOSTAGE_BACKEND_ENDPOINT_URL="notaurl"), home=tmp_path
    )
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert "PANOSTAGE_BACKEND_ENDPOINT_URL" in result.stderr and "'notaurl'" in result.stderr


# ------------------------------------------------- which PANOSTAGE_* names are configuration (README)

#: Variables of tools and test kits (scripts/test, tests/vm), not configuration: never an error.
NOT_CONFIGURATION = {
    "PANOSTAGE_COMPAT_PYTHON": "/opt/compat/bin/python",
    "PANOSTAGE_VM": "1",
    "PANOSTAGE_VM_CACHE": "/tmp/vm-cache",
    "PANOSTAGE_VM_ACCEL": "tcg",
    "PANOSTAGE_TEST_GI_DIR": "/usr/lib/girepository-1.0",
    "PANOSTAGE_NO_SUCH_KEY": "1",
    "PANOSTAGE_STICK": "1",
}


def test_other_tools_variables_are_ignored_and_shown_as_such(tmp_path):
    env = isolated_env(tmp_path, **NOT_CONFIGURATION)
    loaded = config.load(env=env)
    assert loaded.ignored_env == sorted(NOT_CONFIGURATION)
    assert all(row["source"] == "default" for row in loaded.rows())

    listed = run_cli("plan", "list", env=env, home=tmp_path)
    assert listed.returncode == ExitCode.OK, listed.stderr

    shown = run_cli("config", "show", "--json", env=env, home=tmp_path)
    assert shown.returncode == ExitCode.OK, shown.stderr
    assert json.loads(shown.stdout)["ignored_env"] == sorted(NOT_CONFIGURATION)
    human = run_cli("config", "show", env=env, home=tmp_path)
    assert "not configuration, ignored: " + ", ".join(sorted(NOT_CONFIGURATION)) in human.stdout
    assert "/tmp/vm-cache" not in human.stdout  # names only: the values are another tool's


def test_reserved_and_configuration_variables_are_not_listed_as_ignored(tmp_path):
    env = isolated_env(tmp_path, PANOSTAGE_DEBUG="0", PANOSTAGE_DEBUG_HOLD_AT="written", PANOSTAGE_STICKS_LABEL="P*")
    loaded = config.load(env=env)
    assert loaded.ignored_env == []
    assert loaded.settings.sticks.label == "P*"
    shown = run_cli("config", "show", env=env, home=tmp_path)
    assert shown.returncode == ExitCode.OK and "ignored" not in shown.stdout, shown.stdout


def test_a_misspelt_variable_is_refused_with_the_nearest_name_through_the_cli(tmp_path):
    env = isolated_env(tmp_path, PANOSTAGE_STAGE_MARGN_SECONDS="5")
    result = run_cli("plan", "list", env=env, home=tmp_path)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert "PANOSTAGE_STAGE_MARGN_SECONDS is not a configuration key" in result.stderr
    assert "did you mean PANOSTAGE_STAGE_MARGIN_SECONDS?" in result.stderr
    assert "panostage config show" in result.stderr  # where the list is, instead of the list
    assert "PANOSTAGE_DAEMON_NOTIFY" not in result.stderr and "PANOSTAGE_BACKEND_REGION" not in result.stderr

    result = run_cli("config", "show", "--json", env=env, home=tmp_path)
    error = json.loads(result.stderr.splitlines()[-1])["error"]
    assert error["exit_name"] == "CONFIG"
    assert error["details"] == {
        "source": "env PANOSTAGE_STAGE_MARGN_SECONDS",
        "key": "PANOSTAGE_STAGE_MARGN_SECONDS",
        "suggestion": "PANOSTAGE_STAGE_MARGIN_SECONDS",
    }


@pytest.mark.parametrize(
    ("var", "needles"),
    [
        # in a section's space (PANOSTAGE_<SECTION>_...) but no key of it
        ("PANOSTAGE_BACKEND_REGOIN", ["did you mean PANOSTAGE_BACKEND_REGION?"]),
        ("PANOSTAGE_STICKS_LABLE", ["did you mean PANOSTAGE_STICKS_LABEL?"]),
        ("PANOSTAGE_DAEMON_NOTIFI", ["did you mean PANOSTAGE_DAEMON_NOTIFY?"]),
        ("PANOSTAGE_DAEMON_POLL", ["[daemon] has no key 'poll' (its keys: ", "poll_seconds, poll_max_seconds"]),
        ("PANOSTAGE_STAGE_XYZZY", ["[stage] has no key 'xyzzy'", "margin_seconds, skew_seconds", "allow_non_fat"]),
        ("PANOSTAGE_STAGE", ["names the section [stage], not a key (PANOSTAGE_STAGE_<KEY>; its keys: margin"]),
        # a key without its section
        ("PANOSTAGE_REGION", ["'region' is a key without its section: did you mean PANOSTAGE_BACKEND_REGION?"]),
        ("PANOSTAGE_MAX_ATTEMPTS", ["PANOSTAGE_BACKEND_MAX_ATTEMPTS or PANOSTAGE_DAEMON_MAX_ATTEMPTS"]),
        # a letter or two off a variable
        ("PANOSTAGE_STICK_LABEL", ["did you mean PANOSTAGE_STICKS_LABEL?"]),
        ("PANOSTAGE_STAEG_MARGIN_SECONDS", ["did you mean PANOSTAGE_STAGE_MARGIN_SECONDS?"]),
        ("PANOSTAGE_BACKND_REGION", ["did you mean PANOSTAGE_BACKEND_REGION?"]),
    ],
)
def test_a_near_miss_is_an_error_naming_the_variable_and_what_to_do(tmp_path, var, needles):
    with pytest.raises(ConfigError) as info:
        config.load(env=isolated_env(tmp_path, **{var: "1"}))
    error = info.value
    assert error.exit_code == ExitCode.CONFIG
    assert error.message.startswith(f"environment {var} is not a configuration key: "), error.message
    for needle in needles:
        assert needle in error.message, error.message
    assert "PANOSTAGE_<SECTION>_<KEY>" in error.hint and "panostage config show" in error.hint
    assert "PANOSTAGE_WAIT_INTERVAL_SECONDS" not in error.message + error.hint  # never the whole list


def test_every_variable_with_a_letter_dropped_suggests_itself(tmp_path):
    from agent.config.schema import iter_keys

    for section, key, _fld in iter_keys():
        wanted = f"PANOSTAGE_{section}_{key}".upper()
        cut = len(f"PANOSTAGE_{section}_") + len(key) // 2
        var = wanted[:cut] + wanted[cut + 1 :]
        with pytest.raises(ConfigError) as info:
            config.load(env=isolated_env(tmp_path, **{var: "1"}))
        assert info.value.details.get("suggestion") == wanted, (var, info.value.message)


@pytest.mark.parametrize(
    ("var", "meant"),
    [
        ("PANOSTAGE_STATION_NAME", "PANOSTAGE_STAGE_STATION"),  # a station's name keeps stations apart
        ("PANOSTAGE_CONFIG_FILE", "PANOSTAGE_CONFIG"),  # near a reserved name
        ("PANOSTAGE_AWS_REGION", "PANOSTAGE_BACKEND_REGION"),
        ("PANOSTAGE_STATE_DIRECTORY", "PANOSTAGE_PATHS_STATE_DIR"),
        ("PANOSTAGE_NO_ENROLLMENT", "PANOSTAGE_STICKS_REQUIRE_ENROLLMENT"),
        ("PANOSTAGE_DEBUG_HOLD", "PANOSTAGE_DEBUG_HOLD_AT"),
        ("panostage_stage_margin_seconds", "PANOSTAGE_STAGE_MARGIN_SECONDS"),  # names are case-sensitive
    ],
)
def test_a_variable_sharing_a_keys_word_is_taken_for_a_mistake(tmp_path, var, meant):
    with pytest.raises(ConfigError) as caught:
        config.load(env=isolated_env(tmp_path, **{var: "x"}))
    assert var in caught.value.message and f"did you mean {meant}?" in caught.value.message
    assert caught.value.details["suggestion"] == meant


@pytest.mark.parametrize("var", ["PANOSTAGE_VM_CACHE", "PANOSTAGE_COMPAT_PYTHON", "PANOSTAGE_URL", "panostage_foo"])
def test_names_sharing_no_word_with_a_key_are_another_tools(tmp_path, var):
    loaded = config.load(env=isolated_env(tmp_path, **{var: "x"}))
    assert loaded.settings == config.load(env=isolated_env(tmp_path)).settings
