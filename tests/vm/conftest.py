"""The VM tier: a Debian 12 staging laptop under QEMU (systemd as PID 1, Debian's kernel with its vfat
driver, USB sticks plugged and pulled through QMP).  Runs in CI (``CI=true``) or with ``PANOSTAGE_VM=1``;
skipped otherwise, because it takes minutes.  Alone: ``PANOSTAGE_VM=1 scripts/test tests/vm``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest

from tests.vm import image, machine

_timings: dict[str, float] = {}


def _why_skip() -> str | None:
    if not (os.environ.get("CI") == "true" or os.environ.get("PANOSTAGE_VM") == "1"):
        return "VM tests run in CI (CI=true) or with PANOSTAGE_VM=1 (a few minutes: tests/vm)"
    if os.geteuid() != 0:
        return "VM tests need root (debootstrap)"
    missing = [t for t in ("qemu-system-x86_64", "debootstrap", "mkfs.ext4", "mkfs.fat") if shutil.which(t) is None]
    if missing:
        return f"VM tests need {', '.join(missing)} (apt-get install qemu-system-x86 debootstrap e2fsprogs dosfstools)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _why_skip()
    for item in items:
        if "tests/vm/" in item.nodeid:
            item.add_marker(pytest.mark.vm)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def station_files() -> image.BootFiles:
    """The cached station image (built on first use: debootstrap, then scripts/install in the guest)."""
    started = time.monotonic()
    files = image.station_image(machine.boot)
    _timings["image (cache hit or build)"] = time.monotonic() - started
    return files


@pytest.fixture(scope="module")
def laptop(station_files: image.BootFiles, request: pytest.FixtureRequest) -> Iterator[machine.Machine]:
    """A staging laptop booted for this module; its disk's writes are discarded when it ends."""
    started = time.monotonic()
    accel = machine.choose_accel(station_files, image.cache_dir())
    with machine.boot(station_files, snapshot=True, accel=accel) as guest:
        _timings[f"boot ({accel}) for {request.module.__name__.rsplit('.', 1)[-1]}"] = guest.booted_in
        yield guest
    _timings[request.module.__name__.rsplit(".", 1)[-1]] = time.monotonic() - started


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _timings:
        terminalreporter.section("VM tier: where the time went")
        for what, seconds in _timings.items():
            terminalreporter.write_line(f"{what:<45} {seconds:7.1f} s")
        terminalreporter.write_line(
            f"{'total (modules, incl. their boots)':<45} "
            f"{sum(v for k, v in _timings.items() if not k.startswith(('boot', 'image'))):7.1f} s"
        )
