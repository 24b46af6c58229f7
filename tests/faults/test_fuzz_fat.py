"""Crafted FAT sticks through the real command line: a stick is trusted only as far as it checks out.

Each example starts from a real ``mkfs.fat`` image (FAT12/16/32) with user files put there by
mtools (random bytes, subdirectories, ``panorama/occ.log``, sometimes an archive written by a first
``stage``, sometimes a look-alike of an archive's name), then breaks it the way a damaged or hostile
stick would: BIOS parameter block fields at edge values, FAT chains that loop, cross, leave the
volume or run into free clusters, FAT copies that disagree, directory entries with another first
cluster, size, attribute or name (long-name slots too), a directory pointing back at the root, the
dirty flag.  Then one of ``stage`` (with and without ``--replace``), ``stick wipe``, ``stick collect``
or ``verify`` runs on it, and whatever the outcome:

* the exit code is a documented one (never 1, never a traceback);
* a refusal (15, 6, 4, or 14 for a full stick) leaves the image byte-identical, and ``verify`` and
  ``stick collect`` never change it at all;
* every pre-existing file that is not panostage's (not an archive or a look-alike at the root, not
  ``/panorama/*.log``, not a ``.<archive>.<pid>.tmp``) reads back identical through mtools;
* ``fsck.fat -n`` is no worse than before (clean stays clean);
* no device is left without its archive: a failed ``stage`` adds no device, a successful one
  leaves exactly one ``cam`` whose archive mtools reads back with the reported SHA-256.

The positions edited come from this file's own reading of the boot sector (``Fat``), not from the
product's reader.  The hand-written cases below the fuzzer each failed on commit d8260e3; the last
group are bugs this file found (each docstring has the reproduction), kept as regression tests.

Example counts are modest (every example is a few processes); FAULTS_FUZZ_SCALE=10 for a longer run,
FAT_FUZZ_TRACE=FILE appends one line per command run (exit code, reason, damage) to see what was covered.
Every CLI run gets its own state directory (PANOSTAGE_PATHS_STATE_DIR): as root the default is the
system's /var/lib/panostage.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ExitCode
from tests.helpers import REPO, clean_env

TOOLS = ("mkfs.fat", "fsck.fat", "mcopy", "mdir", "mmd")
if any(shutil.which(t) is None for t in TOOLS):
    pytest.skip("mtools/dosfstools missing (apt-get install mtools dosfstools)", allow_module_level=True)

SCALE = max(1, int(os.environ.get("FAULTS_FUZZ_SCALE", "1")))
FAT_FUZZ = settings(
    max_examples=40 * SCALE,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
DEADLINE = 60.0  # seconds per CLI run: a hang fails the example instead of stalling the run
DOCUMENTED = {int(code) for code in ExitCode} - {int(ExitCode.ERROR)}
#: Refusals that must come before any byte is written (14 only with reason stick-full).
REFUSALS = {int(ExitCode.STICK_REFUSED), int(ExitCode.CONFLICT), int(ExitCode.VALIDATION)}
MT_ENV = {
    **os.environ,
    "MTOOLSRC": "/dev/null",
    "HOME": "/nonexistent",
    "MTOOLS_SKIP_CHECK": "1",
    "MTOOLS_LOWER_CASE": "0",
    "MTOOLS_NO_VFAT": "0",
    "MTOOLS_NAME_NUMERIC_TAIL": "1",
    "LC_ALL": "C.UTF-8",
}
ARCHIVE_PREFIX, ARCHIVE_SUFFIX = "certificates-omni_", ".zip"
LOOK_ALIKES = ["certificate\u017f-omni_cam.zip", "CERTIFICATES-OMNI_CAM.ZIP", "Certificates-Omni_cam.zip"]


# ---------------------------------------------------------------------------- running things


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    """``panostage ARGS`` as a process, its state (and the embedded authority's) under ``home``."""
    env = clean_env(
        home, {"PANOSTAGE_PATHS_STATE_DIR": str(home / "state"), "PANOSTAGE_PATHS_RUNTIME_DIR": str(home / "run")}
    )
    try:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args], env=env, cwd=REPO, capture_output=True, timeout=DEADLINE
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"panostage {' '.join(args)} still running after {DEADLINE}s (a hang)")


def err_text(result: subprocess.CompletedProcess) -> str:
    return result.stderr.decode("utf-8", "replace")


def error_of(result: subprocess.CompletedProcess) -> dict:
    """The JSON error object on the last line of stderr (``--json``), or {}."""
    for line in reversed(err_text(result).splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line).get("error", {})
            except ValueError:
                return {}
    return {}


def documented(result: subprocess.CompletedProcess, what: str) -> None:
    text = err_text(result)
    assert "Traceback" not in text, f"{what}: a traceback\n{text}"
    assert result.returncode in DOCUMENTED, f"{what}: exit {result.returncode}, not a documented code\n{text[-3000:]}"


def run(*argv: str, check: bool = True, stdin: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), input=stdin, capture_output=True, env=MT_ENV, check=check, timeout=timeout)


def mkfs(path: Path, bits: int, size_kib: int, *extra: str) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size_kib * 1024)
    run("mkfs.fat", "-F", str(bits), "-i", "C0FFEE11", "-n", "PANOSTICK", *extra, str(path))


def mput(img: Path, rel: str, data: bytes) -> None:
    run("mcopy", "-o", "-i", str(img), "-", f"::/{rel}", stdin=data)


def mmd(img: Path, rel: str) -> None:
    run("mmd", "-i", str(img), f"::/{rel}")


def mget(img: Path, rel: str) -> bytes | None:
    """A file's bytes as mtools reads them (None when mtools cannot)."""
    try:
        proc = run("mcopy", "-n", "-i", str(img), f"::/{rel}", "-", check=False, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout if proc.returncode == 0 else None


#: Names mtools can be given as typed (no wildcard, quote or separator).
MT_SAFE = re.compile(r"[^*?\[\]\\/\"<>|:\x00-\x1f]+")


def mtools_files(img: Path) -> list[str] | None:
    """Every file mtools lists (recursively), as paths without ``::/``; None when it cannot list."""
    try:
        proc = run("mdir", "-/", "-b", "-i", str(img), "::", check=False, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    seen: dict[str, None] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("::/") and not line.endswith("/"):
            seen.setdefault(line[3:], None)
    return list(seen)[:300]


def fsck_lines(img: Path) -> tuple[int, set[str]]:
    """``fsck.fat -n``: its exit code and what it reports, numbers blanked (they move when files come and go)."""
    try:
        proc = subprocess.run(["fsck.fat", "-n", str(img)], capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        return -1, {"fsck.fat did not finish"}
    lines = set()
    for line in (proc.stdout + proc.stderr).decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith(("fsck.fat ", "Leaving filesystem unchanged")) or line.startswith(str(img)):
            continue
        lines.add(re.sub(r"\d+", "#", line))
    return proc.returncode, lines


def fold(name: str) -> str:
    return name.casefold().replace("\u0131", "i").replace("\u0307", "")


def ours(rel: str) -> bool:
    """Is this path panostage's: an archive (or look-alike) or its temporary at the root, or a /panorama/*.log?"""
    parts = rel.split("/")
    low = fold(parts[-1])
    if len(parts) == 1:
        if low.startswith(ARCHIVE_PREFIX) and low.endswith(ARCHIVE_SUFFIX):
            return True
        return bool(re.fullmatch(r"\..+\.[0-9]+\.tmp", low)) and low[1:].startswith(ARCHIVE_PREFIX)
    return len(parts) == 2 and fold(parts[0]) == "panorama" and low.endswith(".log")


def user_files(img: Path) -> dict[str, bytes]:
    """Every file mtools can name and read that is not panostage's."""
    listed = mtools_files(img) or []
    found = {}
    for rel in listed:
        if ours(rel) or not all(MT_SAFE.fullmatch(p) for p in rel.split("/")):
            continue
        data = mget(img, rel)
        if data is not None:
            found[rel] = data
    return found


def devices(home: Path) -> list[dict]:
    result = cli(home, "device", "list", "--json")
    assert result.returncode == 0, err_text(result)
    return json.loads(result.stdout)


# ---------------------------------------------------------------------------- this file's reading of FAT


@dataclass(frozen=True)
class Geo:
    bps: int
    spc: int
    reserved: int
    nfats: int
    root_entries: int
    total: int
    fatsz: int
    bits: int
    clusters: int
    root_cluster: int

    @property
    def cluster_size(self) -> int:
        return self.bps * self.spc

    def fat_off(self, index: int) -> int:
        return (self.reserved + index * self.fatsz) * self.bps

    @property
    def root_off(self) -> int:
        return self.fat_off(self.nfats)

    @property
    def data_off(self) -> int:
        return self.root_off + -(-self.root_entries * 32 // self.bps) * self.bps

    def cluster_off(self, cluster: int) -> int:
        return self.data_off + (cluster - 2) * self.cluster_size

    @property
    def eoc(self) -> int:
        return {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}[self.bits]

    @property
    def dirty_at(self) -> int:
        return 65 if self.bits == 32 else 37


def geo_of(data: bytes) -> Geo:
    bps, spc, reserved, nfats, root_entries, tot16, _media, fat16 = struct.unpack_from("<HBHBHHBH", data, 11)
    tot32, fat32 = struct.unpack_from("<II", data, 32)
    (root_cluster,) = struct.unpack_from("<I", data, 44)
    total, fatsz = tot16 or tot32, fat16 or fat32
    data_sectors = total - reserved - nfats * fatsz - -(-root_entries * 32 // bps)
    clusters = data_sectors // spc
    bits = 32 if fat16 == 0 else 12 if clusters < 4085 else 16
    return Geo(bps, spc, reserved, nfats, root_entries, total, fatsz, bits, clusters, root_cluster if bits == 32 else 0)


@dataclass
class Ent:
    name: str
    short: str
    attr: int
    first: int
    size: int
    slot: int  # offset of the 8.3 entry
    lfn_slots: list[int] = field(default_factory=list)

    @property
    def is_dir(self) -> bool:
        return bool(self.attr & 0x10)


def _lfn_sum(short: bytes) -> int:
    total = 0
    for byte in short:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


class Fat:
    """An image's bytes with the layout mkfs.fat gave it; reads and edits by position."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.geo = geo_of(self.data)

    # the FAT
    def get(self, cluster: int, copy: int = 0) -> int:
        g, base = self.geo, self.geo.fat_off(copy)
        if g.bits == 32:
            return struct.unpack_from("<I", self.data, base + 4 * cluster)[0] & 0x0FFFFFFF
        if g.bits == 16:
            return struct.unpack_from("<H", self.data, base + 2 * cluster)[0]
        (value,) = struct.unpack_from("<H", self.data, base + cluster + cluster // 2)
        return value >> 4 if cluster & 1 else value & 0xFFF

    def set(self, cluster: int, value: int, copies: list[int] | None = None) -> None:
        g = self.geo
        for copy in range(g.nfats) if copies is None else copies:
            base = g.fat_off(copy)
            if g.bits == 32:
                (old,) = struct.unpack_from("<I", self.data, base + 4 * cluster)
                struct.pack_into("<I", self.data, base + 4 * cluster, (old & 0xF0000000) | (value & 0x0FFFFFFF))
            elif g.bits == 16:
                struct.pack_into("<H", self.data, base + 2 * cluster, value & 0xFFFF)
            else:
                pos = base + cluster + cluster // 2
                (old,) = struct.unpack_from("<H", self.data, pos)
                new = (old & 0x000F) | ((value & 0xFFF) << 4) if cluster & 1 else (old & 0xF000) | (value & 0xFFF)
                struct.pack_into("<H", self.data, pos, new)

    def chain(self, first: int) -> list[int] | None:
        """The clusters from ``first`` to the end-of-chain mark; None when the chain is broken."""
        if first == 0:
            return []
        out, cluster, limit = [], first, self.geo.clusters + 2
        while True:
            if not 2 <= cluster < limit or len(out) > self.geo.clusters:
                return None
            out.append(cluster)
            nxt = self.get(cluster)
            if nxt >= self.geo.eoc - 7:
                return out
            if nxt < 2:
                return None
            cluster = nxt

    # directories
    def extents(self, first: int | None) -> list[tuple[int, int]] | None:
        g = self.geo
        if first is None and g.bits != 32:
            return [(g.root_off, g.root_entries * 32)]
        clusters = self.chain(g.root_cluster if first is None else first)
        return None if clusters is None else [(g.cluster_off(c), g.cluster_size) for c in clusters]

    def entries(self, first: int | None, *, past_end: bool = False) -> list[Ent]:
        """Live entries of a directory (no '.', '..', labels); ``past_end``: read on past a 0x00 slot as Linux does."""
        out: list[Ent] = []
        extents = self.extents(first)
        if extents is None:
            return out
        lfn: dict[int, str] = {}
        lfn_sum, lfn_slots = -1, []
        for base, length in extents:
            for pos in range(base, base + length, 32):
                slot = bytes(self.data[pos : pos + 32])
                if len(slot) < 32:
                    return out
                if slot[0] == 0x00:
                    if not past_end:
                        return out
                    lfn, lfn_slots = {}, []
                    continue
                if slot[0] == 0xE5:
                    lfn, lfn_slots = {}, []
                    continue
                attr = slot[11]
                if attr & 0x3F == 0x0F:
                    if slot[0] & 0x40:
                        lfn, lfn_slots, lfn_sum = {}, [], slot[13]
                    lfn[slot[0] & 0x1F] = (slot[1:11] + slot[14:26] + slot[28:32]).decode("utf-16-le", "replace")
                    lfn_slots.append(pos)
                    continue
                raw = bytearray(slot[:11])
                if raw[0] == 0x05:
                    raw[0] = 0xE5
                stem, ext = raw[:8].decode("cp850").rstrip(), raw[8:].decode("cp850").rstrip()
                stem, ext = (stem.lower() if slot[12] & 0x08 else stem), (ext.lower() if slot[12] & 0x10 else ext)
                short = f"{stem}.{ext}" if ext else stem
                name = short
                if lfn and lfn_sum == _lfn_sum(slot[:11]) and sorted(lfn) == list(range(1, len(lfn) + 1)):
                    name = "".join(lfn[i] for i in sorted(lfn)).split("\x00", 1)[0]
                (hi,) = struct.unpack_from("<H", slot, 20)
                lo, size = struct.unpack_from("<HI", slot, 26)
                first_cluster = (hi << 16 | lo) if self.geo.bits == 32 else lo
                if not (attr & 0x08 and not attr & 0x10) and short not in (".", ".."):
                    out.append(Ent(name, short, attr, first_cluster, size, pos, lfn_slots))
                lfn, lfn_slots = {}, []
        return out

    def walk(self, *, past_end: bool = False) -> list[tuple[str, Ent]]:
        """(path, entry) for every entry reachable from the root (each directory visited once)."""
        out: list[tuple[str, Ent]] = []
        seen: set[int] = set()
        pending: list[tuple[int | None, str]] = [(None, "")]
        while pending and len(out) < 2000:
            first, where = pending.pop()
            for ent in self.entries(first, past_end=past_end):
                path = f"{where}{ent.name}"
                out.append((path, ent))
                if ent.is_dir and ent.first >= 2 and ent.first not in seen and ent.first != self.geo.root_cluster:
                    seen.add(ent.first)
                    pending.append((ent.first, path + "/"))
        return out

    def find(self, rel: str) -> Ent:
        found = [e for p, e in self.walk() if p == rel]
        assert found, f"{rel} not found"
        return found[0]

    # edits
    def set_first(self, ent: Ent, cluster: int) -> None:
        struct.pack_into("<H", self.data, ent.slot + 26, cluster & 0xFFFF)
        if self.geo.bits == 32:
            struct.pack_into("<H", self.data, ent.slot + 20, (cluster >> 16) & 0xFFFF)

    def save(self, path: Path) -> None:
        path.write_bytes(bytes(self.data))


# ---------------------------------------------------------------------------- a stick to break


@dataclass
class Stick:
    img: Path
    home: Path
    fat: Fat
    files: list[str]  # user files put there (paths)
    archive: str | None = None  # the archive a first stage wrote
    prestaged: dict | None = None  # that device
    boot: bytes = b""  # the boot sector mkfs.fat wrote
    notes: list[str] = field(default_factory=list)


NAMES = [
    "notes.txt",
    "README",
    "Photo 2024.JPG",
    "MixedCase.Txt",
    "a-very-long-file-name-for-slots.data",
    "x.bin",
    "UPPER.DOC",
    "data.tar.gz",
    "cam.zip",
    "certificates.zip",
    "omni_cam.zip",
    "~lock.tmp",
    ".hidden",
    "keep.log",
    "occ (1).log",
]
SUBDIRS = ["docs", "Sub Dir", "docs/deeper"]
SIZES = {12: [2048, 4096], 16: [16384, 24576], 32: [34816, 40960]}


def build(tmp: Path, rng: random.Random, bits: int, prestage: str | None) -> Stick:
    img, home = tmp / "stick.img", tmp / "home"
    home.mkdir()
    extra: list[str] = []
    if bits == 32:
        extra += ["-s", "1"]
    elif rng.random() < 0.3:
        extra += ["-r", str(rng.choice([16, 32, 64]))]  # a small root: it fills up
    mkfs(img, bits, rng.choice(SIZES[bits]), *extra)
    geo = geo_of(img.read_bytes())
    files: list[str] = []
    made: set[str] = set()
    for _ in range(rng.randrange(1, 7)):
        where = rng.choice(["", "", "docs/", "Sub Dir/", "docs/deeper/", "panorama/"])
        for part in filter(None, [where.rstrip("/")]):
            chain = part.split("/")
            for i in range(1, len(chain) + 1):
                sub = "/".join(chain[:i])
                if sub not in made:
                    mmd(img, sub)
                    made.add(sub)
        name = rng.choice(NAMES)
        rel = where + name
        if rel in files or (where == "panorama/" and name.endswith(".log")):
            continue
        size = rng.choice([0, 1, 100, geo.cluster_size, geo.cluster_size + 1, 3 * geo.cluster_size - 7])
        try:
            mput(img, rel, rng.randbytes(size))
        except subprocess.CalledProcessError:  # the root of a small FAT12/16 is full
            continue
        files.append(rel)
    if rng.random() < 0.7:
        if "panorama" not in made:
            mmd(img, "panorama")
            made.add("panorama")
        mput(img, "panorama/occ.log", b"appliance log\n" * rng.randrange(1, 400))
    stick = Stick(img, home, Fat(img.read_bytes()), files)
    if prestage:
        result = cli(home, "stage", "--name", prestage, "--to", str(img), "--json")
        documented(result, "the first stage")
        if result.returncode == 0:
            stick.prestaged = json.loads(result.stdout)["device"]
            stick.archive = f"certificates-omni_{prestage}.zip"
        else:
            assert error_of(result).get("reason") in ("stick-root-full", "stick-full"), err_text(result)
    if rng.random() < 0.3:
        try:
            mput(img, rng.choice(LOOK_ALIKES), rng.randbytes(rng.choice([0, 700, 5000])))
        except subprocess.CalledProcessError:
            pass
    stick.fat = Fat(img.read_bytes())
    stick.boot = bytes(stick.fat.data[:512])
    return stick


# ---------------------------------------------------------------------------- ways to break it

EDGE32 = [0, 1, 2, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]


def mutate_bpb(stick: Stick, rng: random.Random) -> str:
    fat, g = stick.fat, stick.fat.geo
    fields = [
        (11, "<H", [0, 256, 512, 1024, 2048, 4096, 8192, g.bps]),  # bytes per sector
        (13, "B", [0, 1, 2, 3, 64, 128, 255, g.spc * 2, max(1, g.spc // 2)]),  # sectors per cluster
        (14, "<H", [0, 1, g.reserved - 1, g.reserved + 1, g.reserved + g.fatsz, 0xFFFF]),
        (16, "B", [0, 1, 2, 3, 4, 5, 255]),  # FAT copies
        (17, "<H", [0, 1, 15, 16, 17, 32, 520, g.root_entries + 1, g.root_entries - 16, 0xFFFF]),
        (19, "<H", [0, 1, g.total & 0xFFFF, (g.total + 1) & 0xFFFF, (g.total - 1) & 0xFFFF, 0xFFFF]),
        (21, "B", [0, 0x12, 0xF0, 0xF8, 0xF9, 0xFF]),  # media
        (22, "<H", [0, 1, g.fatsz - 1, g.fatsz + 1, 0xFFFF] if g.bits != 32 else [0, 1, 0xFFFF]),
        (28, "<I", EDGE32),  # hidden sectors
        (32, "<I", [0, g.total - 1, g.total + 1, g.total * 2, 0xFFFFFFFF]),
    ]
    if g.bits == 32:
        fields += [
            (36, "<I", [0, 1, g.fatsz - 1, g.fatsz + 1, 0xFFFFFFFF]),  # FAT size
            (40, "<H", [0, 0x80, 0x81, 0x0F, 0xFFFF]),  # mirroring flags
            (42, "<H", [0, 1, 0xFFFF]),  # version
            (44, "<I", [0, 1, 2, 3, g.clusters + 1, g.clusters + 2, 0x0FFFFFFF, 0xFFFFFFFF]),  # root
            (48, "<H", [0, 1, 2, 6, g.reserved, 0xFFFF]),  # FSInfo sector
            (50, "<H", [0, 1, 6, 0xFFFF]),  # backup boot sector
            (66, "B", [0x00, 0x28, 0x29, 0xFF]),
        ]  # extended signature
    else:
        fields += [(38, "B", [0x00, 0x28, 0x29, 0xFF])]
    offset, fmt, values = rng.choice(fields)
    value = rng.choice(values) & ((1 << (8 * struct.calcsize(fmt))) - 1)
    struct.pack_into(fmt, fat.data, offset, value)
    return f"BPB byte {offset} = {value:#x}"


def _chains(stick: Stick) -> list[tuple[str, Ent, list[int]]]:
    fat = stick.fat
    out = []
    for path, ent in fat.walk():
        clusters = fat.chain(ent.first)
        if clusters:
            out.append((path, ent, clusters))
    return out


def mutate_fat(stick: Stick, rng: random.Random) -> str:
    fat, g = stick.fat, stick.fat.geo
    chains = _chains(stick)
    if not chains:
        return "no chain to break"
    path, _ent, clusters = rng.choice(chains)
    at = rng.choice(clusters)
    kind = rng.choice(["loop", "cross", "outside", "free", "bad", "copies", "eoc-early"])
    if kind == "loop":
        fat.set(clusters[-1], rng.choice(clusters))
    elif kind == "cross":
        others = [c for p, _, cs in chains if p != path for c in cs]
        if not others:
            return "no other chain to cross into"
        fat.set(at, rng.choice(others))
    elif kind == "outside":
        fat.set(at, rng.choice([g.clusters + 2, g.clusters + 3, g.eoc - 8, 1]))
    elif kind == "free":
        fat.set(at, 0)
    elif kind == "bad":
        fat.set(at, g.eoc - 8)  # the bad-cluster mark
    elif kind == "copies" and g.nfats > 1:
        fat.set(at, rng.choice([0, g.eoc, at + 1]), copies=[rng.randrange(g.nfats)])
    else:
        fat.set(at, g.eoc)
    return f"FAT {kind} in {path} at cluster {at}"


def mutate_entry(stick: Stick, rng: random.Random) -> str:
    fat, g = stick.fat, stick.fat.geo
    walked = fat.walk()
    if not walked:
        return "no entry"
    path, ent = rng.choice(walked)
    kind = rng.choice(["first", "first", "size", "attr", "short", "lfn", "to-root"])
    firsts = [e.first for _, e in walked if e.first]
    if kind == "first":
        value = rng.choice([0, 1, g.clusters + 1, g.clusters + 2, 0xFFFF, *(firsts or [2]), ent.first + 1])
        fat.set_first(ent, value)
        return f"{path}: first cluster {value}"
    if kind == "size":
        value = rng.choice([0, 1, max(0, ent.size - 1), ent.size + 1, ent.size + g.cluster_size, 0xFFFFFFFF])
        struct.pack_into("<I", fat.data, ent.slot + 28, value)
        return f"{path}: size {value}"
    if kind == "attr":
        value = rng.choice([0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x18, 0x20, 0x21, 0x40, 0x80])
        fat.data[ent.slot + 11] = value
        return f"{path}: attributes {value:#x}"
    if kind == "short":
        pos = rng.randrange(11)
        value = rng.choice([0x00, 0xE5, 0x05, ord(" "), ord("a"), ord("~"), ord("."), ord("Z"), 0x80])
        fat.data[ent.slot + pos] = value
        return f"{path}: 8.3 name byte {pos} = {value:#x}"
    if kind == "lfn":
        if not ent.lfn_slots:
            return f"{path}: no long name"
        slot = rng.choice(ent.lfn_slots)
        what = rng.choice(["char", "checksum", "order"])
        if what == "char":
            pos = rng.choice([1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30])
            char = rng.choice(["s", "S", "\u017f", "K", "\u212a", "_", ".", "/", "\\", "\x00"])
            fat.data[slot + pos : slot + pos + 2] = char.encode("utf-16-le")
        elif what == "checksum":
            fat.data[slot + 13] ^= 0xFF
        else:
            fat.data[slot] = (fat.data[slot] & 0xE0) | rng.randrange(1, 20)
        return f"{path}: long-name slot {what}"
    dirs = [(p, e) for p, e in walked if e.is_dir]
    if not dirs:
        return "no directory"
    path, ent = rng.choice(dirs)
    fat.set_first(ent, g.root_cluster if g.bits == 32 and rng.random() < 0.7 else 0)
    return f"directory {path} points at the root"


def mutate_misc(stick: Stick, rng: random.Random) -> str:
    fat, g = stick.fat, stick.fat.geo
    kind = rng.choice(["dirty", "fat1-clean-bit", "fsinfo"] if g.bits == 32 else ["dirty", "fat1-clean-bit"])
    if kind == "dirty":
        fat.data[g.dirty_at] |= 0x01
    elif kind == "fat1-clean-bit":
        fat.set(1, fat.get(1) & ~(0x08000000 if g.bits == 32 else 0x8000))
    else:
        info = 1 * g.bps  # mkfs.fat puts FSInfo in sector 1
        struct.pack_into("<I", fat.data, info + 488, rng.choice([0, 1, g.clusters, g.clusters + 5, 0xFFFFFFFF]))
    return kind


MUTATIONS = [mutate_bpb, mutate_fat, mutate_fat, mutate_entry, mutate_entry, mutate_entry, mutate_misc]
COMMANDS = ["stage", "stage --replace", "stick wipe", "stick collect", "verify"]


# ---------------------------------------------------------------------------- the property


@FAT_FUZZ
@given(
    bits=st.sampled_from([12, 16, 32]),
    command=st.sampled_from(COMMANDS),
    prestage=st.sampled_from([None, None, "cam", "old"]),
    steps=st.sampled_from([1, 1, 2, 2, 3, 0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_crafted_stick_through_the_cli(tmp_path_factory, bits, command, prestage, steps, seed):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as scratch:
        stick = build(Path(scratch), rng, bits, prestage)
        done = [rng.choice(MUTATIONS)(stick, rng) for _ in range(steps)]
        stick.fat.save(stick.img)
        check_command(stick, command, done)


def check_command(stick: Stick, command: str, done: list[str]) -> None:
    img, home = stick.img, stick.home
    what = f"`{command}` after {done or 'no damage'}"
    raw_before = img.read_bytes()
    users_before = user_files(img)
    fsck_before = fsck_lines(img)
    bpb_intact = raw_before[:512] == stick.boot
    logs_before = set(_panorama_logs(img).values()) if command == "stick collect" else set()
    args = command.split()
    if args[0] == "stage":
        args = ["stage", "--name", "cam", *args[1:], "--to", str(img)]
    else:
        args.append(str(img))
    result = cli(home, *args, "--json")
    documented(result, what)
    error = error_of(result)
    code = result.returncode
    if os.environ.get("FAT_FUZZ_TRACE"):
        with open(os.environ["FAT_FUZZ_TRACE"], "a") as trace:
            trace.write(f"{code:3} {error.get('reason', '-'):28} {what}\n")
    raw_after = img.read_bytes()
    if args[0] == "verify" or args[:2] == ["stick", "collect"]:
        assert raw_after == raw_before, f"{what}: a command that only reads changed the image (exit {code})"
    refused = code in REFUSALS or (code == ExitCode.IO and error.get("reason") == "stick-full")
    if refused:
        assert raw_after == raw_before, f"{what}: refused (exit {code}, {error.get('reason')}) but the image changed"
    # every file that is not panostage's reads back the same
    if raw_after != raw_before:
        for rel, data in users_before.items():
            now = mget(img, rel)
            assert now == data, (
                f"{what}: exit {code}; the user's file {rel} "
                f"{'is gone' if now is None else 'changed'}\n{err_text(result)[-1500:]}"
            )
        rc_before, lines_before = fsck_before
        rc_after, lines_after = fsck_lines(img)
        if rc_before == 0:
            assert rc_after == 0, f"{what}: exit {code}; fsck.fat was clean before, now: {sorted(lines_after)}"
        else:
            assert lines_after <= lines_before, (
                f"{what}: exit {code}; fsck.fat finds more than before: {sorted(lines_after - lines_before)}"
            )
    if args[0] == "stage":
        check_devices(stick, result, what, bpb_intact)
    if args[:2] == ["stick", "collect"]:
        kept = [p for p in (home / "state" / "handoffs").rglob("*") if p.is_file()]
        if code != 0:
            assert not kept, f"{what}: exit {code}, yet files were copied off the stick: {kept}"
        for path in kept:
            assert path.read_bytes() in logs_before, f"{what}: {path} is no /panorama/*.log of the stick"


def _panorama_logs(img: Path) -> dict[str, bytes]:
    found = {}
    for rel in mtools_files(img) or []:
        parts = rel.split("/")
        if len(parts) == 2 and ours(rel) and MT_SAFE.fullmatch(parts[1]):
            data = mget(img, rel)
            if data is not None:
                found[rel] = data
    return found


def check_devices(stick: Stick, result: subprocess.CompletedProcess, what: str, bpb_intact: bool) -> None:
    listed = devices(stick.home)
    before = {stick.prestaged["id"]} if stick.prestaged else set()
    now = {d["DeviceId"] for d in listed if d.get("ProvisioningStatus") != "DELETING"}
    if result.returncode != 0:
        assert now == before, f"{what}: failed (exit {result.returncode}) but left devices {now - before}"
        return
    staged = json.loads(result.stdout)
    cams = [d["DeviceId"] for d in listed if d["Name"] == "cam" and d.get("ProvisioningStatus") != "DELETING"]
    assert cams == [staged["device"]["id"]], f"{what}: devices named cam: {cams}"
    assert now - before == {staged["device"]["id"]}, f"{what}: devices {now}, before {before}"
    on_stick = mget(stick.img, staged["archive"]["file"])
    assert on_stick is not None and hashlib.sha256(on_stick).hexdigest() == staged["archive"]["sha256"], (
        f"{what}: mtools does not read back the archive that was reported"
    )
    if bpb_intact:  # what the appliance's Linux would meet at the root (it reads on past a 0x00 slot)
        root = sorted(p for p, _ in Fat(stick.img.read_bytes()).walk(past_end=True) if "/" not in p and ours(p))
        assert root == [staged["archive"]["file"]], f"{what}: the stick holds {root}, not exactly our archive"


# ---------------------------------------------------------------------------- hand-written (each failed on d8260e3)


def fresh(tmp_path: Path, bits: int, size_kib: int, *extra: str) -> tuple[Path, Path]:
    img, home = tmp_path / "stick.img", tmp_path / "home"
    home.mkdir()
    mkfs(img, bits, size_kib, *extra)
    return img, home


def stage_cam(img: Path, home: Path, name: str = "cam") -> dict:
    result = cli(home, "stage", "--name", name, "--to", str(img), "--json")
    assert result.returncode == 0, err_text(result)
    return json.loads(result.stdout)


def refused_untouched(home: Path, img: Path, args: list[str], reason: str | None = None) -> dict:
    """Run ``args``; it must be refused with exit 15 and leave the image as it was, byte for byte."""
    before = img.read_bytes()
    result = cli(home, *args, "--json")
    documented(result, " ".join(args))
    error = error_of(result)
    assert result.returncode == ExitCode.STICK_REFUSED, (result.returncode, err_text(result))
    if reason:
        assert error.get("reason") == reason, error
    assert img.read_bytes() == before, f"{' '.join(args)} was refused but changed the image"
    return error


@pytest.mark.parametrize(
    "command", [["stick", "wipe"], ["stage", "--name", "cam", "--to"], ["stage", "--name", "cam", "--replace", "--to"]]
)
def test_archive_cross_linked_with_a_user_file(tmp_path: Path, command: list[str]) -> None:
    img, home = fresh(tmp_path, 16, 16384)
    keep = os.urandom(3 * geo_of(img.read_bytes()).cluster_size)
    mput(img, "keep.bin", keep)
    first = stage_cam(img, home)
    fat = Fat(img.read_bytes())
    archive, user = fat.find("certificates-omni_cam.zip"), fat.find("keep.bin")
    archive_chain, user_chain = fat.chain(archive.first), fat.chain(user.first)
    assert len(archive_chain) == 2 and len(user_chain) == 3
    fat.set(archive_chain[0], user_chain[-1])  # the archive's second cluster is now the user's last one
    fat.save(img)
    error = refused_untouched(home, img, [*command, str(img)], "stick-damaged")
    assert "cross-linked" in error["message"]
    assert mget(img, "keep.bin") == keep
    assert {d["DeviceId"] for d in devices(home)} == {first["device"]["id"]}


@pytest.mark.parametrize("entries", [520, 65535])
@pytest.mark.parametrize("command", [["stage", "--name", "cam", "--to"], ["stick", "wipe"]])
def test_fat16_root_not_whole_sectors_is_refused(tmp_path: Path, entries: int, command: list[str]) -> None:
    img, home = fresh(tmp_path, 16, 16384)
    mmd(img, "panorama")
    mput(img, "panorama/occ.log", b"log\n")
    mput(img, "user.txt", b"the user's\n" * 300)
    data = bytearray(img.read_bytes())
    struct.pack_into("<H", data, 17, entries)
    img.write_bytes(bytes(data))
    error = refused_untouched(home, img, [*command, str(img)], "stick-unsupported-layout")
    assert f"{entries} entries" in error["message"]
    assert devices(home) == []


@pytest.mark.parametrize("bits", [16, 32])
def test_panorama_pointing_at_the_root(tmp_path: Path, bits: int) -> None:
    img, home = fresh(tmp_path, bits, 34816 if bits == 32 else 16384, *(["-s", "1"] if bits == 32 else []))
    mmd(img, "panorama")
    mput(img, "panorama/occ.log", b"appliance\n")
    root_files = {"boot.log": b"the user's own log\n" * 50, "report.txt": os.urandom(5000)}
    for name, data in root_files.items():
        mput(img, name, data)
    stage_cam(img, home)
    fat = Fat(img.read_bytes())
    fat.set_first(fat.find("panorama"), fat.geo.root_cluster)  # FAT32: the root's cluster; FAT16: 0
    fat.save(img)
    for command in (["stick", "collect"], ["stick", "wipe"], ["stick", "collect", "--wipe"]):
        error = refused_untouched(home, img, [*command, str(img)], "stick-damaged")
        assert "points back at the root" in error["message"]
        for name, data in root_files.items():
            assert mget(img, name) == data
        handoffs = home / "state" / "handoffs"
        assert not handoffs.exists() or not any(p.is_file() for p in handoffs.rglob("*"))


# ---------------------------------------------------------------------------- bugs found here (regressions)


def test_a_long_name_with_a_slash_is_not_a_path(tmp_path: Path) -> None:
    """Was a bug (found by this file): names read from the stick are used as paths. A file in /panorama whose long
    name is 'keep/notes.log' makes `stick wipe` zero and delete /panorama/keep/notes.log, a user's file in a
    subdirectory (and `stick collect` copies it off). Repro: mkfs.fat -F 12 on 4M; mmd ::panorama ::panorama/keep;
    mcopy notes to ::panorama/keep/notes.log; mcopy x to '::panorama/keepXnotes.log'; patch the 'X' in its LFN slot
    to '/'; panostage stick wipe IMG -> exit 0, removed ['panorama/keep/notes.log', ...]; the user's file is gone."""
    img, home = fresh(tmp_path, 12, 4096)
    mmd(img, "panorama")
    mmd(img, "panorama/keep")
    notes = b"precious user notes, not an appliance log\n" * 20
    mput(img, "panorama/keep/notes.log", notes)
    mput(img, "panorama/occ.log", b"appliance log\n")
    mput(img, "panorama/keepXnotes.log", b"crafted\n")
    fat = Fat(img.read_bytes())
    crafted = fat.find("panorama/keepXnotes.log")
    slot = crafted.lfn_slots[-1]  # order 1: characters 1-5 at bytes 1-10
    assert bytes(fat.data[slot + 1 : slot + 11]).decode("utf-16-le") == "keepX"
    fat.data[slot + 9 : slot + 11] = "/".encode("utf-16-le")
    fat.save(img)
    assert "panorama/keep/notes.log" in [p for p, _ in Fat(img.read_bytes()).walk()]
    result = cli(home, "stick", "collect", str(img), "--json")
    documented(result, "stick collect")
    kept = [p.read_bytes() for p in (home / "state" / "handoffs").rglob("*") if p.is_file()]
    result = cli(home, "stick", "wipe", str(img), "--json")
    documented(result, "stick wipe")
    assert mget(img, "panorama/keep/notes.log") == notes, f"the user's file was wiped: {result.stdout[:300]!r}"
    assert notes not in kept, "collect copied a user's file that is no /panorama/*.log"


def test_entries_after_an_end_marker(tmp_path: Path) -> None:
    """Was a bug (found by this file): the census and reader stop at the first 0x00 directory slot (as mtools does),
    fsck.fat and the Linux vfat driver read on. A root [A.TXT][0x00][S1..S6][certificates-omni_evil.zip] passes the
    census, `stage` writes over the slots after the marker and exits 0, and afterwards fsck.fat -n reports
    'Duplicate directory entry /certificates-omni_cam.zip' (a second archive, 3000 bytes, the appliance's Linux sees
    too) while `verify IMG` says ok. Repro: mkfs.fat -F 12 4M; mcopy A.TXT, Z.TXT, S1..S6.TXT,
    certificates-omni_evil.zip; set the first byte of Z's 8.3 entry to 0x00; panostage stage --name cam --to IMG;
    fsck.fat -n IMG."""
    img, home = fresh(tmp_path, 12, 4096)
    for name in ["A.TXT", "Z.TXT", *(f"S{i}.TXT" for i in range(1, 7))]:
        mput(img, name, name.encode())
    mput(img, "certificates-omni_evil.zip", os.urandom(3000))
    fat = Fat(img.read_bytes())
    fat.data[fat.find("Z.TXT").slot] = 0x00
    fat.save(img)
    assert [p for p, _ in Fat(img.read_bytes()).walk()] == ["A.TXT"]  # mtools' view
    linux = [p for p, _ in Fat(img.read_bytes()).walk(past_end=True)]
    assert "certificates-omni_evil.zip" in linux  # fsck.fat's and Linux's view
    _rc_before, lines_before = fsck_lines(img)
    before = img.read_bytes()
    result = cli(home, "stage", "--name", "cam", "--to", str(img), "--json")
    documented(result, "stage")
    if result.returncode != 0:
        assert result.returncode == ExitCode.STICK_REFUSED and img.read_bytes() == before
        return
    root = sorted(p for p, _ in Fat(img.read_bytes()).walk(past_end=True) if ours(p))
    assert root == ["certificates-omni_cam.zip"], f"after the stage the stick holds {root}"
    assert fsck_lines(img)[1] <= lines_before


def test_refused_for_a_live_device_after_clearing(tmp_path: Path) -> None:
    """Was a bug (found by this file): Stager.stage clears the stick (plan.remove_before: look-alikes, junk, dead
    archives) before check_room and the existing-device check, so a stage refused there has already changed the
    stick. Repro: stage --name cam --to IMG; mcopy junk to '::certificateſ-omni_cam.zip'; stage --name cam --replace
    --to IMG -> exit 6 device-live, and the look-alike is gone."""
    img, home = fresh(tmp_path, 12, 4096)
    stage_cam(img, home)
    mput(img, LOOK_ALIKES[0], os.urandom(500))
    before = img.read_bytes()
    result = cli(home, "stage", "--name", "cam", "--replace", "--to", str(img), "--json")
    documented(result, "stage")
    assert result.returncode == ExitCode.CONFLICT and error_of(result)["reason"] == "device-live"
    assert img.read_bytes() == before, "refused with exit 6, but the stick was changed first"


def test_refused_for_a_full_root_after_clearing(tmp_path: Path) -> None:
    """Was a bug (found by this file): as above, for the root-directory check: FAT12 with 16 root entries holding a
    label, a look-alike (3 slots) and 12 user files; `stage --name cam --replace` wipes the look-alike, then refuses
    with exit 15 stick-root-full (4 slots needed, 3 free). Repro: mkfs.fat -F 12 -r 16 4M; mcopy 500 bytes to
    '::certificateſ-omni_cam.zip'; mcopy U1.TXT..U12.TXT; panostage stage --name cam --replace --to IMG."""
    img, home = fresh(tmp_path, 12, 4096, "-r", "16")
    mput(img, LOOK_ALIKES[0], os.urandom(500))
    for i in range(1, 13):  # with the volume label, the root is full
        mput(img, f"U{i}.TXT", b"%d" % i)
    before = img.read_bytes()
    result = cli(home, "stage", "--name", "cam", "--replace", "--to", str(img), "--json")
    documented(result, "stage")
    assert devices(home) == []
    assert result.returncode == ExitCode.STICK_REFUSED and error_of(result)["reason"] == "stick-root-full"
    assert img.read_bytes() == before, "refused with exit 15, but the stick was changed first"


def test_wipe_an_archive_beside_its_look_alike(tmp_path: Path) -> None:
    """Was a bug (found by this file): `stick wipe` cannot clear a stick holding an archive and its look-alike: it
    zeroes certificates-omni_cam.zip, then FatTarget._addr refuses its long name as ambiguous (the look-alike
    certificateſ-omni_cam.zip folds to it) although its 8.3 name is unique: exit 6 stick-ambiguous-name, the stick
    changed (archive zeroed, still there), and every later wipe fails the same way. Repro: stage --name cam --to
    IMG; echo junk | mcopy -i IMG - '::certificateſ-omni_cam.zip'; panostage stick wipe IMG -> exit 6."""
    img, home = fresh(tmp_path, 12, 4096)
    stage_cam(img, home)
    mput(img, LOOK_ALIKES[0], b"junk\n")
    mput(img, "user.txt", b"the user's\n")
    before = img.read_bytes()
    result = cli(home, "stick", "wipe", str(img), "--json")
    documented(result, "stick wipe")
    if result.returncode != 0:
        assert img.read_bytes() == before, f"exit {result.returncode}, and the stick was changed"
    assert result.returncode == 0, err_text(result)
    assert [p for p, _ in Fat(img.read_bytes()).walk()] == ["user.txt"]
    assert mget(img, "user.txt") == b"the user's\n"


@pytest.mark.parametrize("name", ["occ (1).log", "caf\u00e9.log"])
def test_a_log_name_mtools_is_not_given(tmp_path: Path, name: str) -> None:
    """Was a bug (found by this file): FatTarget._addr refuses every name outside mtools.SAFE_NAME whose 8.3 name is
    outside it too, calling it ambiguous: a /panorama log named 'occ (1).log' (8.3 OCC(1)~1.LOG) or 'café.log' makes
    `stick collect` fail with exit 6 stick-ambiguous-name (no log collected) and `stick wipe` zero it, then fail
    with exit 6 - on every later try too. Repro: mkfs.fat -F 12 4M; mmd ::panorama; echo a | mcopy -
    ::panorama/occ.log; echo b | mcopy - '::panorama/occ (1).log'; panostage stick collect IMG -> 6; panostage stick
    wipe IMG -> 6."""
    img, home = fresh(tmp_path, 12, 4096)
    mmd(img, "panorama")
    mput(img, "panorama/occ.log", b"first\n")
    mput(img, f"panorama/{name}", b"second\n")
    result = cli(home, "stick", "collect", str(img), "--json")
    documented(result, "stick collect")
    assert result.returncode == 0, err_text(result)
    kept = sorted(p.read_bytes() for p in (home / "state" / "handoffs").rglob("*") if p.is_file())
    assert kept == [b"first\n", b"second\n"]
    result = cli(home, "stick", "wipe", str(img), "--json")
    documented(result, "stick wipe")
    assert result.returncode == 0, err_text(result)
    assert Fat(img.read_bytes()).walk() == []


def test_verify_reports_a_damaged_archive_as_corrupt(tmp_path: Path) -> None:
    """Was a bug (found by this file) (minor): `verify IMG` catches the census's StickDamaged to report outcome
    'corrupt' (22) with problem stick_damaged, but then reads the archive anyway: when its own chain is the damage,
    the read raises stick-corrupt and verify ends with exit 14 and no report, against its documented 0/20/21/22/23.
    Repro: stage --name cam --to IMG (FAT12); set FAT[first cluster of the archive] = 0xFFF (chain shorter than the
    size); panostage verify IMG --json -> exit 14, stdout empty."""
    img, home = fresh(tmp_path, 12, 4096)
    stage_cam(img, home)
    fat = Fat(img.read_bytes())
    archive = fat.find("certificates-omni_cam.zip")
    fat.set(fat.chain(archive.first)[0], fat.geo.eoc)
    fat.save(img)
    before = img.read_bytes()
    result = cli(home, "verify", str(img), "--json")
    documented(result, "verify")
    assert img.read_bytes() == before
    assert result.returncode == ExitCode.VERIFY_CORRUPT, err_text(result)
    report = json.loads(result.stdout)
    assert report["outcome"] == "corrupt" and "stick_damaged" in [p["code"] for p in report["problems"]]


@pytest.mark.parametrize("fsinfo", [0xFFFF, 6])
def test_fsinfo_sector_where_mtools_must_not_write(tmp_path: Path, fsinfo: int) -> None:
    """Was a bug (found by this file) (data loss): layout_problems accepts a FAT32 FSInfo sector field of 0xFFFF
    (the FAT spec's 'none') or one that is the backup boot sector (6), and mtools 4.0.32 writes an FSInfo sector
    there on every change: at 0xFFFF that is sector 65535, in the data area - inside a user's file; at 6 it
    overwrites the backup boot sector fsck.fat repairs from. Repro: truncate -s 34M IMG; mkfs.fat -F 32 -s 1 IMG;
    mcopy a 32 MiB file to ::big.bin; set BPB bytes 48-49 to FF FF; panostage stage --name cam --to IMG -> exit 0;
    mcopy -i IMG ::big.bin - | cmp - big.bin -> differ at byte 32988161 (the 'RRaA' signature)."""
    img, home = fresh(tmp_path, 32, 34816, "-s", "1")
    big = os.urandom(32 << 20)  # clusters 2.. 65537: sector 65535 is inside it
    source = tmp_path / "big.bin"
    source.write_bytes(big)
    run("mcopy", "-i", str(img), str(source), "::/big.bin")
    data = bytearray(img.read_bytes())
    struct.pack_into("<H", data, 48, fsinfo)
    img.write_bytes(bytes(data))
    backup = bytes(data[6 * 512 : 8 * 512])
    before = img.read_bytes()
    source.unlink()
    try:
        result = cli(home, "stage", "--name", "cam", "--to", str(img), "--json")
        documented(result, "stage")
        if result.returncode != 0:
            assert result.returncode == ExitCode.STICK_REFUSED and img.read_bytes() == before, err_text(result)
            return
        assert mget(img, "big.bin") == big, "the user's file changed"
        assert img.read_bytes()[6 * 512 : 8 * 512] == backup, "the backup boot sector changed"
    finally:
        img.unlink()  # 34 MB


def test_replace_another_archive_beside_its_look_alike(tmp_path: Path) -> None:
    """Was a bug (found by this file): same cause as test_wipe_an_archive_beside_its_look_alike, at the end of a
    stage: with another device's live archive and a copy of it under a look-alike name, `stage --name cam --replace`
    writes and verifies cam's archive, then tidying zeroes certificates-omni_old.zip and _addr refuses to name it:
    exit 6, cam's archive wiped and its device deleted, old's archive zeroed. Repro: stage --name old --to IMG;
    mcopy -i IMG ::certificates-omni_old.zip - | mcopy -i IMG - '::certificateſ-omni_old.zip'; panostage stage
    --name cam --replace --to IMG -> exit 6 stick-ambiguous-name."""
    img, home = fresh(tmp_path, 12, 4096)
    stage_cam(img, home, "old")
    mput(img, "certificate\u017f-omni_old.zip", mget(img, "certificates-omni_old.zip"))
    result = cli(home, "stage", "--name", "cam", "--replace", "--to", str(img), "--json")
    documented(result, "stage")
    assert result.returncode == 0, err_text(result)
    assert [p for p, _ in Fat(img.read_bytes()).walk()] == ["certificates-omni_cam.zip"]


def test_format_at_an_unaligned_offset(tmp_path: Path) -> None:
    """Was a bug (found by this file): `stick wipe --format IMAGE@@OFFSET` with an offset that is no multiple of the
    sector size (accepted everywhere else: mtools and the reader take byte offsets) runs mkfs.fat
    --offset=OFFSET//512, so the new filesystem lands at byte 512 instead of 1000, over the old one; re-reading at
    1000 then raises NotFat unhandled: exit 1 ('unexpected NotFat'). Repro: a FAT12 image copied to byte 1000 of a 6
    MiB file; panostage stick wipe --format FILE@@1000 -> exit 1, bytes 512-999 overwritten, no FAT at 1000."""
    fs, home = fresh(tmp_path, 12, 4096)
    mput(fs, "a.txt", b"a")
    img = tmp_path / "disk.img"
    outside = os.urandom(1000)
    img.write_bytes(outside + fs.read_bytes() + os.urandom(1 << 20))
    before = img.read_bytes()
    result = cli(home, "stick", "wipe", "--format", f"{img}@@1000", "--json")
    documented(result, "stick wipe --format")
    after = img.read_bytes()
    assert after[:1000] == outside and after[1000 + (4 << 20) :] == before[1000 + (4 << 20) :], (
        "bytes outside the filesystem changed"
    )
    if result.returncode == 0:
        assert mget(Path(f"{img}@@1000"), "a.txt") is None
    else:
        assert result.returncode == ExitCode.STICK_REFUSED and after == before
