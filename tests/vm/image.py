"""The staging laptop's disk for the VM tests, cached outside the repository and keyed by its inputs.

Two layers, each rebuilt only when what it is made from changes:

* **base** — a Debian 12 root made by ``debootstrap --variant=minbase`` (systemd as PID 1, udev, Debian's
  kernel, Python with venv, mtools/dosfstools, the QEMU guest agent) from the mirror this machine's apt
  configuration names, set up as a console-less laptop, as an ext4 image beside its kernel and initrd.
  Key: the suite, the mirror, the package list and :data:`GUEST_SETUP`.  ~100 s once.
* **station** — the base with panostage installed *inside the booted guest* by ``scripts/install``, exactly
  as an operator would, from a read-only disk holding the source tree and a wheelhouse prepared on the host
  (the guest has no network: ``PIP_NO_INDEX`` + ``PIP_FIND_LINKS``), then ``systemctl enable panostage``.
  Key: the base's, every file ``scripts/install`` reads, and the dependency list.

Where: ``$PANOSTAGE_VM_CACHE``, else ``$XDG_CACHE_HOME/panostage-vm`` (``~/.cache/panostage-vm``).  Older
station images are removed when a new one is made; a lock file keeps two builds from racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
PACKAGES = (
    "systemd-sysv",
    "udev",
    "kmod",
    "linux-image-amd64",
    "initramfs-tools",
    "dbus",
    "python3",
    "python3-venv",
    "mtools",
    "dosfstools",
    "qemu-guest-agent",
)
#: What the host does to the debootstrapped root (bump the number when it changes).
GUEST_SETUP = 1
ROOT_SIZE = "3G"  # sparse; the root uses ~1 GiB with panostage installed
#: What ``scripts/install`` reads: any change here means a new station image.
INSTALL_INPUTS = ("agent", "scripts/install", "systemd", "udev-rules", "pyproject.toml", "README.md")
#: Timers of a desktop install that would wake an idle guest for nothing.
QUIET_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "man-db.timer",
    "serial-getty@ttyS0.service",  # a getty on the console would hang it up (FACTS.md)
)


#: Boots ``files`` with a second, read-only disk and waits for the guest (machine.boot).
Boot = Callable[["BootFiles", Path], AbstractContextManager[Any]]


@dataclass(frozen=True)
class BootFiles:
    """A root disk image and the kernel and initrd that boot it."""

    disk: Path
    kernel: Path
    initrd: Path


def cache_dir() -> Path:
    explicit = os.environ.get("PANOSTAGE_VM_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "panostage-vm"


def debian_mirror() -> str:
    """The Debian archive this machine's apt configuration names (deb822 ``.sources`` or ``sources.list``)."""
    candidates: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                candidates += line.split()[1:]
    with contextlib.suppress(FileNotFoundError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"]:
                candidates += [p for p in parts[1:] if "://" in p][:1]
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_key() -> str:
    return _digest(SUITE, debian_mirror(), PACKAGES, GUEST_SETUP, ROOT_SIZE)


def install_inputs() -> list[Path]:
    files: list[Path] = []
    for name in INSTALL_INPUTS:
        path = REPO / name
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        else:
            files.append(path)
    return files


def station_key() -> str:
    sources = {str(p.relative_to(REPO)): hashlib.sha256(p.read_bytes()).hexdigest() for p in install_inputs()}
    return _digest(base_key(), sources, _requirements())


def _requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [*project["build-system"]["requires"], *project["project"]["dependencies"]]


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))}: exit {result.returncode}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result


def _report(message: str) -> None:
    print(f"tests/vm: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- base


def base_image() -> BootFiles:
    """The cached Debian root (built when missing)."""
    cache = cache_dir()
    where = cache / f"base-{base_key()}"
    files = BootFiles(where / "root.img", where / "vmlinuz", where / "initrd.img")
    if (where / "manifest.json").exists():
        return files
    with _locked(cache):
        if not (where / "manifest.json").exists():
            _build_base(where)
    return files


def _build_base(where: Path) -> None:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="base-", dir=where.parent))
    try:
        root = work / "root"
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(root),
            debian_mirror(),
        ]
        _report(f"building the Debian root: {' '.join(argv)}")
        for attempt in (1, 2):  # one retry: a mirror hiccup should not fail CI
            try:
                _run(*argv)
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                shutil.rmtree(root, ignore_errors=True)
        _set_up_guest(root)
        [kernel] = sorted((root / "boot").glob("vmlinuz-*"))
        [initrd] = sorted((root / "boot").glob("initrd.img-*"))
        shutil.copy(kernel, work / "vmlinuz")
        shutil.copy(initrd, work / "initrd.img")
        _run("truncate", "-s", ROOT_SIZE, work / "root.img")
        _run("mkfs.ext4", "-q", "-F", "-L", "pano-root", "-d", root, work / "root.img")
        shutil.rmtree(root)
        manifest = {"suite": SUITE, "mirror": debian_mirror(), "packages": PACKAGES, "kernel": kernel.name}
        manifest["seconds"] = round(time.monotonic() - started, 1)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(where, ignore_errors=True)
        work.rename(where)
        _report(f"Debian root built in {manifest['seconds']} s: {where}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _set_up_guest(root: Path) -> None:
    """A console-less laptop: a name, a root file system, no getty on the console, no idle timers."""
    (root / "etc/hostname").write_text("station\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 station\n::1 localhost\n")
    (root / "etc/fstab").write_text("LABEL=pano-root / ext4 rw,errors=remount-ro 0 1\n")
    for unit in QUIET_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # The journal survives the hard-reset scenario, as on a laptop.
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------- station


def station_image(boot: Boot) -> BootFiles:
    """The cached station: the base with panostage installed by scripts/install inside the guest.

    ``boot`` is tests/vm/machine.py's, passed in to keep this module free of QEMU.
    """
    base = base_image()
    cache = cache_dir()
    key = station_key()
    disk = cache / f"station-{key}.img"
    files = BootFiles(disk, base.kernel, base.initrd)
    if disk.exists():
        return files
    with _locked(cache):
        if not disk.exists():
            _build_station(base, disk, boot)
            for old in cache.glob("station-*.img"):
                if old != disk:
                    old.unlink()
    return files


def _build_station(base: BootFiles, disk: Path, boot: Boot) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="station-", dir=disk.parent) as tmp:
        work = Path(tmp)
        source = work / "source"
        _copy_sources(source / "panostage")
        _report("preparing the wheelhouse on the host (the guest has no network)")
        _run(
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--dest", source / "wheelhouse", *_requirements(),
        )  # fmt: skip
        source_disk = work / "source.img"
        _run("truncate", "-s", "512M", source_disk)
        _run("mkfs.ext4", "-q", "-F", "-L", "pano-source", "-d", source, source_disk)
        target = work / "station.img"
        _run("cp", "--sparse=always", base.disk, target)
        with boot(BootFiles(target, base.kernel, base.initrd), source_disk) as guest:
            guest.sh("mkdir -p /mnt/source && mount -o ro /dev/vdb /mnt/source")
            out = guest.sh(
                "PIP_NO_INDEX=1 PIP_FIND_LINKS=/mnt/source/wheelhouse /mnt/source/panostage/scripts/install"
                " && systemctl enable panostage.service && umount /mnt/source",
                timeout=900,
            )
            _report("scripts/install in the guest:\n" + out.strip())
            guest.power_off()
        target.rename(disk)
    _report(f"station image built in {time.monotonic() - started:.0f} s: {disk}")


def _copy_sources(dest: Path) -> None:
    for path in install_inputs():
        relative = path.relative_to(REPO)
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / relative)


def kernel_release(files: BootFiles) -> str:
    manifest = json.loads((files.kernel.parent / "manifest.json").read_text())
    match = re.match(r"vmlinuz-(.+)", manifest["kernel"])
    return match.group(1) if match else manifest["kernel"]
