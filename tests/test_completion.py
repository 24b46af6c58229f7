"""Shell completion through the real command, as click documents it: ``_PANOSTAGE_COMPLETE=bash_complete``
with ``COMP_WORDS`` / ``COMP_CWORD``; file names are left to the shell (``file`` items), sticks come from
udev's database (a fake one here: the test cannot make a USB stick)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import completion, main
from tests.helpers import REPO


def complete(cwd: Path, line: str) -> list[tuple[str, ...]]:
    """(type, value) pairs the real ``panostage`` answers for ``line`` (the word under the cursor last)."""
    words = line.split(" ")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "PANOSTAGE_SYSTEM_CONFIG": str(cwd / "none.toml"),
        "_PANOSTAGE_COMPLETE": "bash_complete",
        "COMP_WORDS": line,
        "COMP_CWORD": str(len(words) - 1),
    }
    result = subprocess.run(
        [sys.executable, "-m", "agent"], cwd=cwd, env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [tuple(item.split(",", 1)) for item in result.stdout.splitlines()]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "plan.img").write_bytes(b"")
    (tmp_path / "m.img").write_bytes(b"")
    (tmp_path / "request.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize(
    "line",
    [
        "panostage stage --to pl",
        "panostage stage --name cam-1 --to pl",
        "panostage verify m.i",
        "panostage stage --input-json ",
        "panostage plan add --input-json re",
        "panostage device provision --input-json re",
        "panostage device provision --out ou",
        "panostage stick wipe pl",
        "panostage stick collect pl",
        "panostage stick check pl",
        "panostage stick enroll pl",
        "panostage stick prepare pl",
        "panostage sim appliance pl",
    ],
)
def test_paths_are_completed_by_the_shell(workdir: Path, line: str) -> None:
    typed = line.rsplit(" ", 1)[1]
    assert ("file", typed) in complete(workdir, line)


def test_config_completes_file_names(workdir: Path) -> None:
    assert ("file", "") in complete(workdir, "panostage --config ")


def fake_udev(root: Path, sticks: dict[str, str], stale: dict[str, str]) -> tuple[Path, Path]:
    """A /run/udev and /sys/dev/block holding ``sticks`` (devnum -> name) and ``stale`` ones (tag left behind)."""
    run, sysfs = root / "run-udev", root / "sys-dev-block"
    (run / "tags" / "panostage").mkdir(parents=True)
    (run / "data").mkdir()
    for devnum, name in {**sticks, **stale}.items():
        (run / "tags" / "panostage" / f"b{devnum}").write_bytes(b"")
        (sysfs / devnum).mkdir(parents=True)
        (sysfs / devnum / "uevent").write_text(f"MAJOR={devnum.split(':')[0]}\nDEVNAME={name}\nDEVTYPE=partition\n")
        record = "G:panostage\nQ:panostage\nE:PANOSTAGE_STICK=1\n" if devnum in sticks else "G:panostage\nQ:systemd\n"
        (run / "data" / f"b{devnum}").write_text(f"S:disk/by-label/X\nE:ID_FS_TYPE=vfat\n{record}")
    return run, sysfs


def test_stick_devices_from_udev(tmp_path: Path) -> None:
    run, sysfs = fake_udev(tmp_path, {"8:17": "sdb1", "8:32": "sdc"}, {"7:0": "loop0"})
    assert completion.stick_devices(run, sysfs) == ["/dev/sdb1", "/dev/sdc"]  # loop0 lost its mark: not offered


def test_no_udev_no_sticks_and_no_error(tmp_path: Path) -> None:
    assert completion.stick_devices(tmp_path / "absent", tmp_path / "absent-too") == []
    run, sysfs = fake_udev(tmp_path, {"8:17": "sdb1"}, {})
    (run / "data" / "b8:17").unlink()  # a record gone between the listing and the read
    assert completion.stick_devices(run, sysfs) == []


def _complete_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], line: str
) -> list[tuple[str, ...]]:
    monkeypatch.setenv("_PANOSTAGE_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", line)
    monkeypatch.setenv("COMP_CWORD", str(len(line.split(" ")) - 1))
    previous = signal.getsignal(signal.SIGTERM)  # main() installs its own SIGTERM handler: not for pytest
    try:
        with pytest.raises(SystemExit) as done:
            main([])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert done.value.code == 0
    return [tuple(item.split(",", 1)) for item in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("command", ["stage --to", "verify"])
def test_sticks_are_offered_after_the_file_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """A stick matching the typed prefix is offered; the ``file`` item first (click's bash script clears
    what came before it), so bash shows the sticks when one matches and file names otherwise."""
    run, sysfs = fake_udev(tmp_path, {"8:17": "sdb1"}, {"7:0": "loop0"})
    monkeypatch.setattr(completion, "UDEV_RUN", run)
    monkeypatch.setattr(completion, "SYS_DEV_BLOCK", sysfs)
    monkeypatch.setenv("PANOSTAGE_SYSTEM_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.chdir(tmp_path)
    got = _complete_in_process(monkeypatch, capsys, f"panostage {command} /dev/")
    assert got == [("file", "/dev/"), ("plain", "/dev/sdb1")]
    assert _complete_in_process(monkeypatch, capsys, f"panostage {command} pl") == [("file", "pl")]


def test_completion_stays_light() -> None:
    """The root group's options use the completion module: it must not pull in a command or udev."""
    probe = (
        "import sys, agent.cli.completion; print(sorted(m for m in sys.modules if m.endswith('_cmd') or 'udev' in m))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
