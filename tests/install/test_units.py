"""The systemd units as installed: `systemd-analyze verify` against the installed root (ExecStart
must exist there) and `systemd-analyze security --offline=yes` (overall exposure <= 2.0), plus the
settings the design depends on, read back through systemd's own parser where it can."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.install.conftest import PREFIX, Installed, run_install
from tests.install.sandbox import unit_settings

UNITS = ("panostage.service", "panostage-authority.service")
UNITDIR = "/usr/local/lib/systemd/system"
HOST_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 2.0


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120, check=False)


def verify_in(root: Path, *units: str) -> subprocess.CompletedProcess:
    """`systemd-analyze verify --root=ROOT`: units, ExecStart= and dependencies all resolved inside
    ROOT.  The staged root is not a whole system, so the host's own units (targets such as
    sysinit.target, systemd-udevd.service) are copied in for the check and taken out again."""
    system = root / HOST_UNITS.relative_to("/")
    added = not system.exists()
    if added:
        shutil.copytree(HOST_UNITS, system, symlinks=True)
    try:
        return analyze("verify", f"--root={root}", *units)
    finally:
        if added:
            shutil.rmtree(system)
            for parent in (system.parent, system.parent.parent):
                if parent != root and not any(parent.iterdir()):
                    parent.rmdir()


def exposure(unit_file: Path) -> tuple[float, str]:
    proc = analyze("security", "--offline=yes", str(unit_file))
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match[1]), proc.stdout


@pytest.fixture(scope="module", autouse=True)
def _host_units() -> None:
    if not HOST_UNITS.is_dir():
        pytest.skip("no /usr/lib/systemd/system on this machine (systemd is not installed)")


def test_verify_is_clean_in_the_installed_root(installed: Installed) -> None:
    proc = verify_in(installed.root, *UNITS)
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_verify_notices_a_missing_exec_start(installed: Installed, tmp_path: Path) -> None:
    """The control: the same check fails when ExecStart= names nothing in the root."""
    root = tmp_path / "root"
    unit = root / UNITDIR.lstrip("/") / "panostage.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(installed.path(f"{UNITDIR}/panostage.service").read_text())
    proc = verify_in(root, "panostage.service")
    assert proc.returncode != 0 and f"{PREFIX}/bin/panostage is not executable" in proc.stdout + proc.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure(installed: Installed, unit: str) -> None:
    score, report = exposure(installed.path(f"{UNITDIR}/{unit}"))
    print(f"\n{unit}: overall exposure {score}")
    print("\n".join(line for line in report.splitlines() if line.startswith("✗")))
    assert score <= MAX_EXPOSURE, report


def test_the_daemon_unit_keeps_what_the_design_needs() -> None:
    from tests.helpers import REPO

    s = unit_settings(REPO / "systemd" / "panostage.service")
    assert s["Type"] == ["notify"] and s["WatchdogSec"] == ["30s"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{PREFIX}/bin/panostage watch"]
    assert s["User"] == ["panostage"] and "DynamicUser" not in s
    assert "PrivateNetwork" not in s, "udev events do not reach a private network namespace"
    assert "AF_NETLINK" in s["RestrictAddressFamilies"][0].split()
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    assert s["DevicePolicy"] == ["closed"] and s["DeviceAllow"] == ["block-sd rw"]
    assert s["StateDirectory"] == ["panostage"] and s["RuntimeDirectory"] == ["panostage"]
    assert s["RuntimeDirectoryMode"] == ["0700"] and s["UMask"] == ["0077"]
    assert s["KillMode"] == ["mixed"]
    assert "systemd-modules-load.service" in s["After"]  # block-sd resolves at start: sd_mod must be there
    assert "PANOSTAGE_CONFIG" in s["UnsetEnvironment"][0].split()
    assert "Environment" not in s


def test_a_custom_prefix_reaches_exec_start(installed: Installed, tmp_path: Path) -> None:
    """PREFIX=/srv/pst: the venv is built for it, the units and the symlink name it, verify finds it."""
    root = tmp_path / "root"
    run_install(root, env={"PREFIX": "/srv/pst"})
    for unit in UNITS:
        text = (root / UNITDIR.lstrip("/") / unit).read_text()
        assert "/opt/panostage" not in text.replace("file:/srv/pst", "")
        assert re.search(r"^ExecStart=/srv/pst/bin/panostage ", text, re.M)
        assert "Documentation=file:/srv/pst/share/doc/panostage/README.md" in text
    assert (root / "usr/local/bin/panostage").readlink() == Path("/srv/pst/bin/panostage")
    assert (root / "srv/pst/bin/panostage").read_text().startswith("#!/srv/pst/bin/python")
    verified = verify_in(root, *UNITS)
    assert verified.returncode == 0, verified.stdout + verified.stderr
