"""scripts/install into a temporary root (DESTDIR): every file and its mode, the installed command,
shell completion, idempotency, uninstall and purge.  The units are checked against that root with
systemd-analyze (verify, security) in test_units.py.

One install per session (the ``installed`` fixture); tests that change a tree work on a copy of it
(a venv made for its final path does not care where the copy sits).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from agent.config import Settings, iter_keys, load
from tests.helpers import REPO
from tests.install.conftest import PREFIX, Installed, run_install, tree

IS_ROOT = os.geteuid() == 0

#: Everything outside the venv, with its mode (None: a symbolic link, with its target).
EXPECTED = {
    "/etc/panostage": ("dir", 0o755),
    "/etc/panostage/config.toml": ("file", 0o644),
    "/etc/udev/rules.d/85-panostage.rules": ("file", 0o644),
    "/usr/local/bin/panostage": ("link", f"{PREFIX}/bin/panostage"),
    "/usr/local/lib/systemd/system/panostage.service": ("file", 0o644),
    "/usr/local/lib/systemd/system/panostage-authority.service": ("file", 0o644),
    "/usr/local/lib/sysusers.d/panostage.conf": ("file", 0o644),
    "/usr/local/lib/modules-load.d/panostage.conf": ("file", 0o644),
    "/usr/local/share/bash-completion/completions/panostage": ("file", 0o644),
    "/usr/local/share/zsh/site-functions/_panostage": ("file", 0o644),
    "/usr/local/share/fish/vendor_completions.d/panostage.fish": ("file", 0o644),
}


def outside_venv(entries: dict[str, tuple]) -> dict[str, tuple]:
    return {p: e for p, e in entries.items() if p != PREFIX and not p.startswith(PREFIX + "/")}


def copy_of(installed: Installed, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(installed.root, root, symlinks=True)
    return root


def test_every_installed_file_and_mode(installed: Installed) -> None:
    entries = tree(installed.root)
    files = {p: e for p, e in outside_venv(entries).items() if e[0] != "dir"}
    assert set(files) == {p for p, (kind, _) in EXPECTED.items() if kind != "dir"}, sorted(files)
    for path, (kind, want) in EXPECTED.items():
        got = entries[path]
        assert got[0] == kind, (path, got)
        if kind == "link":
            assert got[4] == want, (path, got)
        else:
            assert got[1] == want, f"{path}: mode {oct(got[1])}, want {oct(want)}"
    # every directory made on the way: 0755 (nothing group- or world-writable)
    for path, entry in outside_venv(entries).items():
        if entry[0] == "dir":
            assert entry[1] == 0o755, (path, oct(entry[1]))
    if IS_ROOT:
        assert {e[2:4] for e in entries.values()} == {(0, 0)}, "everything belongs to root"

    # the artefacts are the repository's, the units with the default prefix unchanged
    for name in ("panostage.service", "panostage-authority.service"):
        assert (
            installed.path(f"/usr/local/lib/systemd/system/{name}").read_text() == (REPO / "systemd" / name).read_text()
        )
    assert (
        installed.path("/etc/udev/rules.d/85-panostage.rules").read_bytes()
        == (REPO / "udev-rules" / "85-panostage.rules").read_bytes()
    )
    sysusers = installed.path("/usr/local/lib/sysusers.d/panostage.conf").read_text()
    modules = installed.path("/usr/local/lib/modules-load.d/panostage.conf").read_text()
    assert [line for line in modules.splitlines() if not line.startswith("#")] == ["sd_mod"]
    assert re.search(r'^u\s+panostage\s+-\s+"panostage staging daemon"\s+/\s+-$', sysusers, re.M), sysusers


def test_the_venv(installed: Installed) -> None:
    venv = installed.path(PREFIX)
    entries = tree(venv, hashes=False)
    for rel, (kind, mode, *_rest) in entries.items():
        if kind == "dir":
            assert mode == 0o755, (rel, oct(mode))
        elif kind == "file":
            assert mode in (0o644, 0o755), (rel, oct(mode))  # readable by the service, writable by root only
    assert (venv / ".panostage-install").read_text().strip()
    assert (venv / "share/doc/panostage/README.md").read_bytes() == (REPO / "README.md").read_bytes()
    assert (venv / "share/panostage-config.toml.default").read_bytes() == installed.path(
        "/etc/panostage/config.toml"
    ).read_bytes()
    assert os.readlink(venv / "bin" / "python3").startswith("/")  # the system interpreter, not one under /root
    assert not os.readlink(venv / "bin" / "python3").startswith(("/root/", "/home/"))
    cfg = (venv / "pyvenv.cfg").read_text()
    assert f"-m venv {PREFIX}\n" in cfg and str(installed.root) not in cfg
    for script in ("panostage", "pip"):
        first = (venv / "bin" / script).read_text().splitlines()[0]
        assert first in (f"#!{PREFIX}/bin/python", f"#!{PREFIX}/bin/python3"), first
    # nothing remembers where it was built: no text file and no byte-code names the staging root
    needle = str(installed.root).encode()
    leaks = [str(p) for p in venv.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]
    assert leaks == []
    import marshal

    pyc = next((venv / "lib").glob("python3*/site-packages/agent/cli/__pycache__/__init__.cpython-*.pyc"))
    assert marshal.loads(pyc.read_bytes()[16:]).co_filename.startswith(f"{PREFIX}/lib/python3")
    assert not list((venv / "lib").glob("python3*/site-packages/panostage-*.dist-info/direct_url.json"))


def test_the_installed_command_runs(installed: Installed, tmp_path: Path) -> None:
    proc = installed.panostage("--help", env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    for command in ("stage", "status", "stick", "watch", "authority"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), proc.stdout
    version = installed.panostage("--version", env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert version.returncode == 0 and "0.1.0" in version.stdout


@pytest.mark.skipif(not IS_ROOT or shutil.which("unshare") is None, reason="needs root (a private mount namespace)")
def test_the_installed_command_runs_from_its_final_path(installed: Installed, tmp_path: Path) -> None:
    """In a private mount namespace the staged tree is mounted where it will live (/opt/panostage,
    /etc/panostage): the shebang, the venv and the system configuration file all resolve for real."""
    script = f"""
set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /opt && mkdir /opt/panostage && mount --bind '{installed.path(PREFIX)}' /opt/panostage
mkdir -p /etc/panostage && mount --bind '{installed.path("/etc/panostage")}' /etc/panostage
/opt/panostage/bin/panostage --help >/dev/null
exec /opt/panostage/bin/panostage config show --json
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"no mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    import json

    shown = json.loads(proc.stdout)
    assert "/etc/panostage/config.toml" in shown["files"], shown["files"]
    assert all(row["source"] == "default" for row in shown["settings"]), "the template sets nothing"


def test_config_template_lists_every_key_with_its_default(installed: Installed, tmp_path: Path) -> None:
    text = installed.path("/etc/panostage/config.toml").read_text()
    assert tomllib.loads(text) == {section: {} for section in {s for s, _k, _f in iter_keys()}}
    section = None
    seen = []
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        match = re.match(r"^# ([a-z_]+) = (.*)$", line)
        if match:
            seen.append((section, match[1]))
    assert seen == [(s, k) for s, k, _f in iter_keys()], "every key once, in declaration order, in its section"
    # uncommented, the file is valid and changes nothing: every value shown is the default
    uncommented = tmp_path / "all.toml"
    uncommented.write_text(re.sub(r"^# ([a-z_]+ = )", r"\1", text, flags=re.M))
    loaded = load(str(uncommented), env={})
    assert loaded.settings == Settings()
    assert len(loaded.sources) == len(seen)


def test_bash_completion_completes_st(installed: Installed, tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "panostage"  # `panostage` on PATH, as /usr/local/bin/panostage would be
    wrapper.write_text(f'#!/bin/sh\nexec "{installed.python}" "{installed.path(PREFIX)}/bin/panostage" "$@"\n')
    wrapper.chmod(0o755)
    completion = installed.path("/usr/local/share/bash-completion/completions/panostage")

    def complete(*words: str) -> list[str]:
        script = (
            f'source "{completion}"\n'
            f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}; COMPREPLY=()\n"
            '_panostage_completion panostage\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        proc = subprocess.run(
            ["bash", "--norc", "--noprofile", "-c", script],
            capture_output=True,
            text=True,
            env={"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)},
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return sorted(line for line in proc.stdout.splitlines() if line)

    assert complete("panostage", "st") == ["stage", "status", "stick"]
    assert complete("panostage", "stick", "en") == ["enroll"]


def test_zsh_and_fish_completion(installed: Installed) -> None:
    zsh = installed.path("/usr/local/share/zsh/site-functions/_panostage").read_text()
    fish = installed.path("/usr/local/share/fish/vendor_completions.d/panostage.fish").read_text()
    assert zsh.startswith("#compdef panostage") and "_PANOSTAGE_COMPLETE=zsh_complete" in zsh
    assert "complete --no-files --command panostage" in fish and "_PANOSTAGE_COMPLETE=fish_complete" in fish
    for shell, path in (
        ("zsh", "/usr/local/share/zsh/site-functions/_panostage"),
        ("fish", "/usr/local/share/fish/vendor_completions.d/panostage.fish"),
    ):
        if shutil.which(shell):
            proc = subprocess.run([shell, "-n", str(installed.path(path))], capture_output=True, text=True, check=False)
            assert proc.returncode == 0, proc.stderr


def test_a_second_run_changes_nothing(installed: Installed) -> None:
    before = tree(installed.root)
    started = time.monotonic()
    again = run_install(installed.root)
    took = time.monotonic() - started
    assert tree(installed.root) == before
    verbs = [line.split()[0] for line in again.stdout.splitlines() if line.strip()]
    assert set(verbs) <= {"unchanged", "kept"}, again.stdout
    assert "kept       /etc/panostage/config.toml" in again.stdout
    print(f"\nfirst install {installed.seconds:.1f}s, second run {took:.1f}s")


def test_an_existing_config_is_never_overwritten(installed: Installed, tmp_path: Path) -> None:
    root = copy_of(installed, tmp_path)
    config = root / "etc/panostage/config.toml"
    config.write_text('[backend]\nregion = "eu-west-1"\n')
    run_install(root)
    assert config.read_text() == '[backend]\nregion = "eu-west-1"\n'


def test_uninstall_keeps_state_and_an_edited_config_purge_removes_everything(
    installed: Installed, tmp_path: Path
) -> None:
    root = copy_of(installed, tmp_path)
    state = {
        "/var/lib/panostage/handoff.jsonl": b'{"seq": 1}\n',
        "/var/lib/panostage/state.db": b"db",
        "/var/log/panostage/collected.log": b"log\n",
    }
    for final, data in state.items():
        (root / final.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / final.lstrip("/")).write_bytes(data)
    config = root / "etc/panostage/config.toml"
    config.write_text(config.read_text() + "\n# edited by the operator\n")

    out = run_install(root, "--uninstall").stdout
    remaining = {p for p, e in tree(root).items() if e[0] != "dir"}
    assert remaining == set(state) | {"/etc/panostage/config.toml"}, (sorted(remaining), out)
    assert "kept       /etc/panostage/config.toml (edited" in out and "kept       /var/lib/panostage" in out
    assert not (root / PREFIX.lstrip("/")).exists()
    assert run_install(root, "--uninstall").returncode == 0  # twice: nothing left to do, no error

    out = run_install(root, "--uninstall", "--purge").stdout
    assert {p for p, e in tree(root).items() if e[0] != "dir"} == set(), out
    assert not (root / "var/lib/panostage").exists() and not (root / "etc/panostage").exists()


def test_uninstall_removes_an_unedited_config(installed: Installed, tmp_path: Path) -> None:
    root = copy_of(installed, tmp_path)
    out = run_install(root, "--uninstall").stdout
    assert {p for p, e in tree(root).items() if e[0] != "dir"} == set(), out
    for final in EXPECTED:
        if EXPECTED[final][0] != "dir":
            assert f"removed    {final}" in out


def test_uninstall_refuses_a_prefix_it_did_not_make(tmp_path: Path) -> None:
    root = tmp_path / "root"
    other = root / "opt" / "other"
    other.mkdir(parents=True)
    (other / "precious").write_text("keep me")
    proc = run_install(root, "--uninstall", env={"PREFIX": "/opt/other"}, check=False)
    assert proc.returncode == 1 and "not made by scripts/install" in proc.stderr
    assert (other / "precious").read_text() == "keep me"
    assert run_install(root, "--purge", check=False).returncode == 2  # --purge only with --uninstall
    assert run_install(root, env={"PREFIX": "/usr"}, check=False).returncode == 1


def test_the_sysusers_entry_makes_the_account(installed: Installed, tmp_path: Path) -> None:
    """systemd-sysusers reads the installed entry as intended (a dry run against an empty root)."""
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()
    conf = installed.path("/usr/local/lib/sysusers.d/panostage.conf")
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "--dry-run", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert "Creating group 'panostage'" in said and "Creating user 'panostage' (panostage staging daemon)" in said
    assert not any((tmp_path / "etc").iterdir()), "a dry run writes nothing"


def test_refuses_an_interpreter_the_service_cannot_see(tmp_path: Path) -> None:
    """A venv made from a Python under /root or /home (pyenv, a user's build) would be invisible to
    the service (ProtectHome=yes): refused before anything is written."""
    import sys

    real = os.path.realpath(sys.executable)
    if not real.startswith(("/root/", "/home/")):
        pytest.skip("this test's own interpreter is not under /root or /home")
    link = tmp_path / "python3"
    link.symlink_to(sys.executable)
    proc = run_install(tmp_path / "root", env={"PYTHON": str(link)}, check=False)
    assert proc.returncode == 1 and "ProtectHome" in proc.stderr
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").rglob("*"))
