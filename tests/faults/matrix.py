"""The fault matrix's one helper: run a real hand-off under a fault, then prove the promise.

"Nothing lost, nothing leaked, nothing half-written" is checked the same way for every case
by :func:`assert_invariants`:

(a) the hand-off ended verified (``panostage verify`` on the stick says ok, for the right
    device) or with a clear error: a documented exit code (never 1), a message naming the
    cause, no traceback;
(b) the stick is consistent: ``fsck.fat -n`` clean, and its root holds exactly what it held
    before plus the archive on success, or exactly what it held before on failure (no
    partial or temporary file); refused-before-writing cases: not one byte changed;
(c) no orphan device: live (not DELETING) devices of that name in the authority: exactly one
    (the verified one) on success, none on failure;
(d) no archive or key byte on the workstation's disk: every archive the authority answered
    during the case (the :class:`~tests.faults.relay.Relay` saw them, even those the station
    threw away) - its bytes, its first and last 64 bytes, its private key as PEM, DER and raw
    scalar - is searched for in the station's state, runtime and TMPDIR and in /tmp, /var/tmp,
    /dev/shm (files changed since the case began); and no PEM private key at all is in the
    station's directories (the station talks to a served authority: it holds no CA key);
(e) ``panostage log verify`` exits 0 and the last hand-off record carries the outcome:
    ``ready`` with the device's ID, or ``failed`` with the expected reason.

Every station talks to one served authority (``panostage authority serve``, another process)
through the relay; faults are set on it per case through its admin API.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from agent.errors import ExitCode
from tests.authority_kit import REGION, TEST_KEY, TEST_SECRET, Authority, start_authority
from tests.fat_kit import loop_device, make_image, run
from tests.faults.relay import Relay
from tests.helpers import REPO, clean_env, wait_until

SHIM = Path(__file__).with_name("shim")
FIU_PRELOAD = "/usr/lib/fiu/fiu_posix_preload.so"
HAVE_FIU = shutil.which("fiu-run") is not None and os.path.exists(FIU_PRELOAD)
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (loop devices, mounts)")
needs_fiu = pytest.mark.skipif(not HAVE_FIU, reason="libfiu (fiu-utils) not installed")

#: exit codes a failed hand-off may end in (ERROR = a bug is never one of them)
DOCUMENTED = {int(c) for c in ExitCode} - {int(ExitCode.ERROR), int(ExitCode.OK)}
PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
SCAN_LIMIT = 8 << 20  # larger files are other tests' disk images; a leaked archive is a few KB


# ---------------------------------------------------------------------------- the authority


@dataclass
class Kit:
    """One served authority for the whole run, reached through a recording relay."""

    authority: Authority
    relay: Relay

    @classmethod
    def start(cls, tmp: Path) -> Kit:
        authority = start_authority(tmp, args=["--job-step-seconds", "0.2"])
        url = urlsplit(authority.endpoint_url)
        return cls(authority, Relay((url.hostname, url.port)))

    def stop(self) -> None:
        self.relay.stop()
        self.authority.stop()

    @contextlib.contextmanager
    def faults(self, rules: dict[str, dict[str, Any]] | None) -> Iterator[None]:
        """Authority faults for the duration of the block (always cleared afterwards)."""
        if rules:
            self.authority.admin.set_faults(rules, seed=1, replace=True)
        try:
            yield
        finally:
            if rules:
                self.authority.admin.clear_faults()

    def live(self, name: str) -> list[dict[str, Any]]:
        """Devices named exactly ``name`` that are not being deleted (ListDevices, every page)."""
        client = self.authority.client()
        found, token = [], None
        while True:
            page = client.list_devices(NameFilter=name, MaxResults=25, **({"NextToken": token} if token else {}))
            found += [d for d in page["Devices"] if d["Name"] == name and d.get("ProvisioningStatus") != "DELETING"]
            token = page.get("NextToken")
            if not token:
                return found


_names = iter(range(1, 1 << 30))


def unique(prefix: str) -> str:
    """A device name no other case (nor another run on the same authority) uses."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


# ---------------------------------------------------------------------------- the station


@dataclass
class Station:
    """One staging workstation: its own state, runtime and temp directories; the real CLI."""

    home: Path
    kit: Kit
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = self.home / "state"
        self.runtime = self.home / "run"
        self.tmpdir = self.home / "tmp"
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.env = {
            "AWS_ACCESS_KEY_ID": TEST_KEY,
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
            "PANOSTAGE_BACKEND_ENDPOINT_URL": self.kit.relay.endpoint_url,
            "PANOSTAGE_BACKEND_REGION": REGION,
            "PANOSTAGE_PATHS_STATE_DIR": str(self.state),
            "PANOSTAGE_PATHS_RUNTIME_DIR": str(self.runtime),
            "TMPDIR": str(self.tmpdir),
            **self.env,
        }

    def argv(self, args: Sequence[str], prefix: Sequence[str] = ()) -> list[str]:
        return [*prefix, sys.executable, "-m", "agent", *args]

    def full_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        extra = dict(env or {})
        if any(k.startswith("FAULTKIT_") for k in extra):
            extra["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SHIM), str(REPO), os.environ.get("PYTHONPATH")]))
        return clean_env(self.home, {**self.env, **extra})

    def run(
        self, *args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = (), timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(args, prefix), env=self.full_env(env), cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    def popen(self, *args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(args, prefix),
            env=self.full_env(env),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def records(self) -> list[dict[str, Any]]:
        path = self.state / "handoff.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------------------- sticks


@dataclass
class Stick:
    """A FAT image the hand-off writes to, given to the CLI as the image itself, a loop device
    (a block device: held with O_EXCL, written with mtools) or a mount point (kernel vfat)."""

    image: Path
    #: image | block | mount (fusefat) | dir (a plain directory: --allow-non-fat) | raw (an image that is not FAT)
    how: str = "image"
    spec: str = ""
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @classmethod
    def fat(cls, where: Path, how: str = "image", *, bits: int = 32, size: str | None = None) -> Stick:
        if how == "dir":
            where.mkdir(parents=True, exist_ok=True)
            return cls(where, "dir", str(where))
        return cls(make_image(where, bits, size=size), how)

    @contextlib.contextmanager
    def plugged(self) -> Iterator[str]:
        """The stick as the station sees it, for the duration of the block."""
        if self.how in ("image", "dir", "raw"):
            self.spec = str(self.image)
            yield self.spec
            return
        if self.how == "block":
            with loop_device(self.image) as dev:
                self.spec = dev
                yield dev
            return
        with _fusefat(self.image, self.image.with_suffix(".mnt")) as where:
            self.spec = str(where)
            yield self.spec

    def root(self) -> list[str]:
        """Every entry in the root directory (hidden ones and long names included)."""
        if self.how == "dir":
            return sorted(os.listdir(self.image))
        if self.how == "raw":  # not FAT at all: only "untouched" can be checked
            return []
        label = self._label()
        return sorted(p[1:] for p in self.fsck() if p.count("/") == 1 and p != "/" and p[1:].replace(".", "") != label)

    def _label(self) -> str | None:
        """The volume label (fsck.fat lists its root entry like a file)."""
        from agent.stick.fatfs import FatReader
        from agent.stick.fatgeo import parse_boot_sector

        with open(self.image, "rb") as handle:
            geo = parse_boot_sector(handle.read(512))
            return FatReader(handle.fileno(), geo).volume_label() or geo.boot_label

    def fsck(self) -> list[str]:
        """``fsck.fat -n -l`` must be clean; returns every path it checked (long names)."""
        proc = run("fsck.fat", "-n", "-l", str(self.image), check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"fsck.fat -n {self.image} is not clean:\n{out}"
        paths = []
        for line in out.splitlines():
            if line.startswith("Checking file "):
                paths.append(re.sub(r" \([^()]*\)$", "", line[len("Checking file ") :]))
        return paths

    def digest(self) -> str:
        if self.how == "dir":
            return hashlib.sha256(
                repr(
                    [
                        (p.name, p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
                        for p in sorted(self.image.iterdir())
                    ]
                ).encode()
            ).hexdigest()
        return hashlib.sha256(self.image.read_bytes()).hexdigest()


@contextlib.contextmanager
def _fusefat(image: Path, where: Path) -> Iterator[Path]:
    """The image mounted read-write by fusefat (this kernel has no vfat; FUSE is how a mounted
    FAT stick is had here), in the foreground so its process is ours to wait for."""
    if shutil.which("fusefat") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("needs fusefat and /dev/fuse for a mounted FAT stick")
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["fusefat", "-f", "-o", "rw+", str(image), str(where)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: os.path.ismount(where) or proc.poll() is not None, timeout=30, what="the fusefat mount")
        if proc.poll() is not None:
            pytest.skip(f"fusefat cannot mount here: {proc.stderr.read().decode(errors='replace')}")
        yield where
    finally:
        if os.path.ismount(where):
            done = run("umount", str(where), check=False)
            assert done.returncode == 0, f"umount {where}: {done.stderr}"
        proc.wait(timeout=30)  # fusefat has written everything back when it exits


# ---------------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Expect:
    """How a case must end.  ``exit`` OK means: verified on the stick."""

    exit: ExitCode = ExitCode.OK
    #: every one of these must be in the error message (case-insensitive)
    cause: tuple[str, ...] = ()
    #: ... and these in its hint
    hint: tuple[str, ...] = ()
    #: the failed hand-off record's error reason (None: not checked, only that it failed)
    reason: str | None = None
    #: refused before anything was written: the stick must be byte-for-byte unchanged
    untouched: bool = False
    #: root entries (regular expressions) that may be left because physics leaves them: a stick
    #: pulled after a temporary file reached it keeps it until its next hand-off scrubs it
    allow_left: tuple[str, ...] = ()
    #: root entries (regular expressions) that must be gone afterwards (a stale temporary file scrubbed)
    scrubbed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.exit == ExitCode.OK


@dataclass
class Ended:
    """How a hand-off ended, as the invariants need it (from the CLI, or from the daemon)."""

    exit: int
    stderr: str = ""
    device_id: str | None = None  # success: the device the station says it staged
    sha256: str | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def from_cli(cls, result: subprocess.CompletedProcess) -> Ended:
        ended = cls(result.returncode, result.stderr)
        if result.returncode == 0:
            staged = json.loads(result.stdout)
            ended.device_id, ended.sha256 = staged["device"]["id"], staged["archive"]["sha256"]
        elif result.returncode == ExitCode.INTERRUPTED:
            ended.error = {"message": result.stderr, "hint": ""}
        else:
            ended.error = error_of(result)
        return ended


@dataclass
class Case:
    """One hand-off under a fault: its station, stick, device name and what it must end in."""

    kit: Kit
    station: Station
    stick: Stick
    name: str
    started: float = 0.0
    before_root: list[str] = field(default_factory=list)
    before_digest: str = ""
    result: subprocess.CompletedProcess | None = None
    seen: list[bytes] = field(default_factory=list)  # archives of earlier hand-offs of this case

    def __post_init__(self) -> None:
        self.kit.relay.reset()  # what earlier cases' hand-offs were answered is theirs
        self.begin()

    def begin(self) -> None:
        """Take the stick's "before" and start listening for archives (call again for a second hand-off:
        the archives seen so far stay among those searched for)."""
        self.seen = list(dict.fromkeys([*self.seen, *self.kit.relay.archives()]))
        self.kit.relay.reset()
        self.before_root = self.stick.root()
        self.before_digest = self.stick.digest()
        self.started = self.started or time.time()  # the scan covers every hand-off of the case

    def stage_args(self, *extra: str) -> list[str]:
        return [
            "stage",
            "--name",
            self.name,
            "--eth0",
            "dhcp",
            "--ntp",
            "pool.ntp.org",
            "--to",
            self.stick.spec,
            "--json",
            *(["--allow-non-fat"] if self.stick.how == "dir" else []),
            *extra,
        ]

    def stage(
        self,
        *extra: str,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        faults: dict[str, dict[str, Any]] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """``panostage stage`` of this case's device onto its stick, under the given faults."""
        with self.kit.faults(faults), self.stick.plugged():
            self.result = self.station.run(*self.stage_args(*extra), env=env, prefix=prefix, timeout=timeout)
        return self.result

    def check(self, expect: Expect, result: subprocess.CompletedProcess | Ended | None = None) -> dict[str, Any]:
        ended = result if isinstance(result, Ended) else Ended.from_cli(result or self.result)
        return assert_invariants(self, expect, ended)


def error_of(result: subprocess.CompletedProcess) -> dict[str, Any]:
    """The JSON error object a ``--json`` command printed last on stderr."""
    for line in reversed(result.stderr.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)["error"]
    raise AssertionError(f"no JSON error on stderr (exit {result.returncode}):\n{result.stderr}")


# ---------------------------------------------------------------------------- the invariants


def assert_invariants(case: Case, expect: Expect, ended: Ended) -> dict[str, Any]:
    """Assert (a)-(e) for ``case`` after its hand-off ``ended``; returns what it learnt."""
    station, stick, name = case.station, case.stick, case.name
    # a request the station gave up on (a read timeout) may still be committing: wait for its end
    wait_until(case.kit.relay.drained, timeout=60, interval=0.05, what="the authority to finish abandoned requests")
    learnt: dict[str, Any] = {"archives": list(dict.fromkeys([*case.seen, *case.kit.relay.archives()]))}
    where = f"[{name} on {stick.how}, exit {ended.exit}]"

    # (a) verified, or a clear documented error
    assert "Traceback" not in ended.stderr, f"{where} a traceback:\n{ended.stderr}"
    if expect.ok:
        assert ended.exit == 0 and ended.device_id, f"{where} expected success:\n{ended.stderr}"
        spec = str(stick.image)
        verdict = station.run("verify", spec, "--device", name, "--margin", "0", "--json")
        assert verdict.returncode == 0, (
            f"{where} panostage verify {spec}: exit {verdict.returncode}\n{verdict.stdout}{verdict.stderr}"
        )
        report = json.loads(verdict.stdout)
        assert report["outcome"] == "ok" and len(report["archives"]) == 1, report
        assert report["archives"][0]["manifest"]["device_id"] == ended.device_id, (
            "the stick holds another device's archive"
        )
        if ended.sha256:
            assert report["archives"][0]["sha256"] == ended.sha256
        learnt["device_id"] = ended.device_id
    else:
        assert ended.exit == expect.exit, (
            f"{where} expected exit {int(expect.exit)} ({expect.exit.name}), got {ended.exit}:\n{ended.stderr}"
        )
        assert ended.exit in DOCUMENTED
        error = ended.error or {}
        for needle in expect.cause:
            assert needle.lower() in error.get("message", "").lower(), (
                f"{where} the message does not name {needle!r}: {error}"
            )
        for needle in expect.hint:
            assert needle.lower() in (error.get("hint") or "").lower(), (
                f"{where} the hint does not say {needle!r}: {error}"
            )
        learnt["error"] = error

    # (b) the stick is consistent: fsck clean, nothing partial or temporary in the root
    root = stick.root()  # runs fsck.fat -n for FAT sticks
    archive = f"certificates-omni_{name}.zip"
    allowed = [e for e in root if any(re.fullmatch(p, e) for p in expect.allow_left)]
    learnt["left"] = allowed
    gone = {e for e in case.before_root if any(re.fullmatch(p, e) for p in expect.scrubbed)}
    assert not gone & set(root), f"{where} still on the stick: {sorted(gone & set(root))}"
    if expect.ok:
        assert sorted(set(root) - {archive} - set(allowed)) == sorted(set(case.before_root) - {archive} - gone), (
            f"{where} the root holds {root}, it held {case.before_root}"
        )
        assert archive in root
    else:
        left = sorted(set(root) - set(case.before_root) - set(allowed))
        assert left == [], f"{where} left on the stick: {left} (root now {root})"
        assert sorted(set(case.before_root) - set(root) - gone) == [], (
            f"{where} removed from the stick: {root} was {case.before_root}"
        )
    if expect.untouched:
        assert stick.digest() == case.before_digest, (
            f"{where} the stick was written to although the case was refused before any write"
        )

    # (c) no orphan device
    live = case.kit.live(name)
    if expect.ok:
        assert [d["DeviceId"] for d in live] == [learnt["device_id"]], f"{where} live devices: {live}"
    else:
        assert live == [], f"{where} orphan device(s) left in the authority: {[d['DeviceId'] for d in live]}"

    # (d) no archive or key byte on the workstation's disk
    assert_no_leak(case, learnt["archives"], skip={stick.image})

    # (e) the hand-off log: chain intact, the outcome recorded
    chain = station.run("log", "verify", "--json")
    assert chain.returncode == 0, f"{where} log verify: exit {chain.returncode}\n{chain.stdout}{chain.stderr}"
    handoffs = [
        r for r in station.records() if r.get("kind") == "handoff" and (r.get("device") or {}).get("name") == name
    ]
    assert handoffs, f"{where} no hand-off record for {name}: {station.records()}"
    last = handoffs[-1]
    if expect.ok:
        assert last["outcome"] == "ready" and last["device"]["id"] == learnt["device_id"], last
    else:
        assert last["outcome"] == "failed", last
        assert last["error"]["message"], last
        if expect.reason is not None:
            assert last["error"]["reason"] == expect.reason, (
                f"{where} logged reason {last['error']['reason']!r}: {last}"
            )
    learnt["record"] = last
    return learnt


# ---------------------------------------------------------------------------- the key scan


def secret_needles(archive: bytes) -> dict[str, bytes]:
    """This archive's bytes and its private key(s) as PEM, DER and raw scalar.

    Works on malformed archives too: whatever members can be read are searched for keys.
    """
    from cryptography.hazmat.primitives import serialization

    needles = {"the archive": archive}
    if len(archive) >= 256:
        needles.update({"the archive's first 64 bytes": archive[:64], "the archive's last 64 bytes": archive[-64:]})
    contents: list[tuple[str, bytes]] = []
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            for info in zf.infolist():
                if info.file_size > 1 << 20:
                    continue  # the zip bomb's padding
                try:
                    contents.append((info.filename, zf.read(info)))
                except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
                    continue  # bad CRC: that member only
    except (zipfile.BadZipFile, ValueError):
        return needles
    for member, content in contents:
        for pem in re.findall(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", content, re.S):
            try:
                key = serialization.load_pem_private_key(pem, password=None)
            except (ValueError, TypeError):
                needles[f"key PEM in {member}"] = pem
                continue
            der = key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            scalar = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
            needles.update(
                {f"key PEM in {member}": pem, f"key DER in {member}": der, f"key scalar in {member}": scalar}
            )
    return needles


def _files(root: Path, *, since: float | None, skip: set[Path]) -> Iterator[tuple[Path, bytes]]:
    """``(path, bytes)`` of the regular files under ``root`` (not following symlinks), up to
    SCAN_LIMIT bytes each; with ``since``, only those changed since then (a leak of this case's
    archive can only be in a file written during the case).  Files that vanish are passed over."""
    stack = [str(root)]
    skipped = {str(p) for p in skip}
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.path not in skipped:
                        stack.append(entry.path)
                    continue
                if not entry.is_file(follow_symlinks=False) or entry.path in skipped:
                    continue
                st = entry.stat(follow_symlinks=False)
                if st.st_size > SCAN_LIMIT or (since is not None and max(st.st_mtime, st.st_ctime) < since):
                    continue
                with open(entry.path, "rb") as handle:
                    data = handle.read(SCAN_LIMIT + 1)
            except OSError:
                continue
            yield Path(entry.path), data


def assert_no_leak(
    case: Case, archives: list[bytes], *, skip: set[Path] = frozenset(), extra_station_dirs: Sequence[Path] = ()
) -> None:
    """(d): the archives of this case are nowhere on the workstation's disk but the stick."""
    station = case.station
    needles: dict[str, bytes] = {}
    for number, archive in enumerate(archives, start=1):
        needles.update({f"archive #{number}: {label}": data for label, data in secret_needles(archive).items()})
    station_dirs = [station.state, station.runtime, station.tmpdir, *extra_station_dirs]
    skip = set(skip)
    since = case.started - 2
    for root, changed_since in [
        *((d, None) for d in station_dirs),
        *((Path(d), since) for d in ("/tmp", "/var/tmp", "/dev/shm")),
    ]:
        for path, data in _files(root, since=changed_since, skip=skip):
            for label, needle in needles.items():
                assert needle not in data, f"{label} found in {path}"
    for root in station_dirs:
        for path, data in _files(root, since=None, skip=skip):
            assert not PEM_KEY.search(data), f"a PEM private key in the station's {path}"


# ---------------------------------------------------------------------------- fault recipes


def fiu_prefix(point: str, err: str) -> list[str]:
    """Run a program under libfiu with ``point`` failing every call with ``err``."""
    return ["fiu-run", "-x", "-f", "", "-c", f"enable name={point},failinfo={getattr(errno, err)}"]


def mtools_fault(tool: str, point: str, err: str) -> dict[str, str]:
    """Every ``tool`` child of the CLI fails ``point`` with ``err`` (the other mtools run clean)."""
    return {"FAULTKIT_MTOOLS": json.dumps({tool: fiu_prefix(point, err)})}


def own_fault(point: str, at: int, err: str, site: str | None = None) -> tuple[dict[str, str], list[str]]:
    """(env, prefix): the CLI's own ``at``-th call of ``point`` inside the stick write fails with ``err``
    (with ``site``: the ``at``-th such call made by the Python function of that name)."""
    env = {"FAULTKIT_FIU": json.dumps({"point": point, "at": at, "errno": err, **({"site": site} if site else {})})}
    return env, ["fiu-run", "-x", "-f", ""]


def call_fault(call: str, at: int, err: str) -> dict[str, str]:
    return {"FAULTKIT_CALL": json.dumps({"call": call, "at": at, "errno": err})}


def hold_at(call: str, at: int, marker: Path) -> dict[str, str]:
    return {"FAULTKIT_HOLD": json.dumps({"call": call, "at": at, "marker": str(marker)})}


def blocked_tool(tool: str, marker: Path) -> dict[str, str]:
    """``tool`` children first write ``marker`` (their pid) and then wait, until killed."""
    return {"FAULTKIT_MTOOLS": json.dumps({tool: [sys.executable, str(SHIM / "block.py"), str(marker), "--"]})}


def vanish_at(call: str, at: int) -> dict[str, str]:
    """From the ``at``-th ``call`` inside the write on, the stick is gone (EIO everywhere)."""
    children = ["fiu-run", "-x", "-f", "", "-c", f"enable name=posix/io/rw/*,failinfo={errno.EIO}"]
    return {"FAULTKIT_VANISH": json.dumps({"call": call, "at": at, "children": children})}


def terminate_when(proc: subprocess.Popen, marker: Path, *, timeout: float = 60) -> subprocess.CompletedProcess:
    """SIGTERM ``proc`` once ``marker`` exists (the write is held there); its result."""
    wait_until(
        lambda: marker.exists() or proc.poll() is not None,
        timeout=timeout,
        interval=0.02,
        what=f"the CLI to reach {marker.name}",
    )
    assert proc.poll() is None, f"the CLI ended before it was held: {proc.communicate()}"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
