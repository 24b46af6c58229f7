"""One reading of the geometry: our FAT reader and mtools see the same filesystem.

Every mtools call is made with the geometry parsed once (``agent.stick.fatgeo.parse_boot_sector``);
the native reader, the census and the undo journal use it too.  If our reading of a layout differed
from mtools', a write (by mtools) would land where our checks never looked.  So:

* for random ``mkfs.fat`` parameters (FAT12/16/32, sector sizes 512-4096, clusters of every power of
  two, root directories of whole sectors, one or two FATs, reserved areas, sizes that fit each FAT
  type; combinations mkfs.fat refuses are skipped) and random files put there by mtools (mixed
  case, long names, subdirectories), ``FatTarget`` lists the same names, kinds and sizes as
  ``mdir`` and reads the same bytes as ``mcopy``; it accepts every layout mkfs.fat makes except
  clusters over 64 KiB and FAT32 with fewer than 65525 clusters; and after ``write_atomic`` mtools
  reads the new file back identical, every old file is unchanged and ``fsck.fat -n`` is clean;
* the other direction: such images with boot-sector fields edited (a root directory that is no
  whole number of sectors, 3-4 FATs, 128 KiB clusters, a FAT too small, more sectors than the
  image, and others) are refused by ``FatTarget.open`` (``StickRefused``, exit 15) - or, where one is
  accepted and the census finds it sound, our reader and mtools still agree on every file.

mtools runs with ``MTOOLSRC=/dev/null`` and the rest of agent/stick/mtools.py's environment.
"""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
from pathlib import Path

from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

from agent.errors import ExitCode
from agent.stick import FatTarget, StickIOError, StickRefused
from agent.stick.errors import StickDamaged
from agent.stick.fatgeo import MAX_CLUSTER_BYTES, MIN_FAT32_CLUSTERS, parse_boot_sector
from agent.stick.mtools import SAFE_NAME
from agent.stick.names import fold
from tests.fat_kit import mtools_env

SCALE = max(1, int(os.environ.get("FAULTS_FUZZ_SCALE", "1")))
GEO = settings(
    max_examples=40 * SCALE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
ENV = {**mtools_env(), "MTOOLSRC": "/dev/null"}
ARCHIVE = "certificates-omni_geometry-check.zip"


def run(*argv: str, stdin: bytes | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), input=stdin, capture_output=True, env=ENV, check=check, timeout=timeout)


# ---------------------------------------------------------------------------- mtools' view


def mtools_tree(img: Path) -> dict[str, str] | None:
    """{path: "dir" | "file"} as ``mdir -/ -b`` lists it; None when mtools cannot read the image."""
    try:
        proc = run("mdir", "-/", "-b", "-i", str(img), "::", check=False, timeout=20)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    tree: dict[str, str] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("::/"):
            path = line[3:]
            tree[path.rstrip("/")] = "dir" if path.endswith("/") else "file"
    return tree


def mtools_read(img: Path, rel: str) -> bytes | None:
    proc = run("mcopy", "-n", "-i", str(img), f"::/{rel}", "-", check=False, timeout=20)
    return proc.stdout if proc.returncode == 0 else None


def mtools_free(img: Path) -> int | None:
    proc = run("mdir", "-i", str(img), "::", check=False)
    found = re.search(r"([\d ]+) bytes free", proc.stdout.decode("utf-8", "replace"))
    return int(found[1].replace(" ", "")) if found else None


# ---------------------------------------------------------------------------- ours


def our_tree(target: FatTarget) -> dict[str, tuple[str, int]]:
    """{path: (kind, size)} through FatTarget.list_dir, recursively."""
    tree: dict[str, tuple[str, int]] = {}
    pending = [""]
    while pending:
        where = pending.pop()
        for entry in target.list_dir(where):
            path = f"{where}/{entry.name}" if where else entry.name
            tree[path] = (entry.kind, entry.size)
            if entry.kind == "dir" and len(tree) < 2000:
                pending.append(path)
    return tree


# ---------------------------------------------------------------------------- making images


@st.composite
def layouts(draw) -> dict:
    bits = draw(st.sampled_from([12, 16, 32]))
    sector = draw(st.sampled_from([512, 1024, 2048, 4096]))
    spcs = [1, 2, 4, 8, 16, 32, 64, 128]
    if draw(st.integers(0, 6)):  # mostly clusters every reader takes; sometimes larger (we refuse those)
        spcs = [n for n in spcs if sector * n <= MAX_CLUSTER_BYTES]
    spc = draw(st.sampled_from(spcs))
    cluster = sector * spc
    if bits == 32:
        # mostly enough clusters for FAT32; sometimes fewer (mkfs.fat makes it on request; we refuse it)
        few = draw(st.integers(0, 9)) == 0
        clusters = draw(st.integers(2000, 60000) if few else st.integers(MIN_FAT32_CLUSTERS + 300, 70000))
        assume(clusters * cluster <= 12 << 30)  # sparse, but not absurd
    elif bits == 16:
        clusters = draw(st.integers(4096, 65000))
        assume(clusters * cluster <= 1 << 30)
    else:
        clusters = draw(st.integers(40, 4000))
    per_sector = sector // 32
    root = 0 if bits == 32 else per_sector * draw(st.integers(1, max(1, 1024 // per_sector)))
    reserved = draw(st.sampled_from([None, None, 1, 2, 4, 8] if bits != 32 else [None, None, 8, 12, 16, 64]))
    return {
        "bits": bits,
        "sector": sector,
        "spc": spc,
        "clusters": clusters,
        "fats": draw(st.sampled_from([1, 2])),
        "root": root,
        "reserved": reserved,
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def boot_sector(img: Path) -> bytes:
    with open(img, "rb") as handle:  # the images are sparse, up to some GiB: never read them whole
        return handle.read(512)


def make(path: Path, layout: dict, say=lambda text: None) -> bool:
    """mkfs.fat with these parameters on an image sized for about ``clusters`` clusters; False if mkfs refuses."""
    bits, sector, spc = layout["bits"], layout["sector"], layout["spc"]
    reserved = layout["reserved"] or (32 if bits == 32 else 1)
    fat_sectors = -(-(layout["clusters"] + 2) * bits // 8 // sector) + 1
    root_sectors = layout["root"] * 32 // sector
    sectors = reserved + layout["fats"] * fat_sectors + root_sectors + layout["clusters"] * spc
    size = -(-sectors * sector // 4096) * 4096
    path.unlink(missing_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
    argv = [
        "mkfs.fat",
        "-F",
        str(bits),
        "-S",
        str(sector),
        "-s",
        str(spc),
        "-f",
        str(layout["fats"]),
        "-i",
        "5EED0001",
        "-n",
        "GEOMETRY",
    ]
    if bits != 32:
        argv += ["-r", str(layout["root"])]
    if layout["reserved"]:
        argv += ["-R", str(layout["reserved"])]
    proc = subprocess.run([*argv, str(path)], capture_output=True, text=True, check=False)
    say(f"{' '.join(argv)} ({size} bytes): exit {proc.returncode} {proc.stderr.strip()[-300:]}")
    return proc.returncode == 0


#: No "~": mtools 4.0.32 writes NUL bytes into the 8.3 name of "- +b ~" (fsck.fat: "Bad short file name").
NAME_CHARS = "abcXYZ019 -_+.eé"


def random_name(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # 8.3, mixed case
        stem = "".join(rng.choice("abcdXYZ019") for _ in range(rng.randint(1, 8)))
        return stem + rng.choice(["", ".txt", ".TXT", ".Log", ".b"])
    if kind == 1:  # long
        return "".join(rng.choice("abcdefgXYZ0189-_") for _ in range(rng.randint(9, 80))) + rng.choice(["", ".data"])
    body = "".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(1, 30))).strip(" .")
    return (body or "n") + rng.choice(["", ".zip", ".tar.gz"])


def slots(name: str) -> int:
    return -(-len(name.encode("utf-16-le")) // 26) + 1


def populate(img: Path, rng: random.Random, cluster: int, root_entries: int = 0) -> dict[str, bytes]:
    """Random files and directories, put there by mtools; {path: bytes} of the files.

    A FAT12/16 root is never filled beyond ``root_entries`` - 8 slots: mtools 4.0.32 writes a short
    name with NUL bytes and no long name into the last free slots (fsck.fat: "Bad short file name").
    """
    files: dict[str, bytes] = {}
    dirs = [""]
    taken: set[str] = set()
    root_used = 1  # the volume label
    for _ in range(rng.randint(1, 12)):
        where = rng.choice(dirs)
        name = random_name(rng)
        rel = f"{where}/{name}" if where else name
        if rel.casefold() in taken:
            continue
        if root_entries and not where:
            if root_used + slots(name) > root_entries - 8:
                continue
            root_used += slots(name)
        if rng.random() < 0.2 and len(dirs) < 5:
            if run("mmd", "-i", str(img), f"::/{rel}", check=False).returncode == 0:
                dirs.append(rel)
                taken.add(rel.casefold())
            continue
        size = rng.choice([0, 1, 511, cluster - 1, cluster, cluster + 1, 2 * cluster + 3, rng.randrange(1, 70000)])
        data = rng.randbytes(min(size, 200_000))
        source = img.with_name("source.bin")  # a regular file: from a pipe mcopy fills a full disk and exits 0
        source.write_bytes(data)
        if run("mcopy", "-i", str(img), str(source), f"::/{rel}", check=False).returncode == 0:
            files[rel] = data
            taken.add(rel.casefold())
        source.unlink()
    return files


def expected_refusal(geo) -> bool:
    return geo.cluster_size > MAX_CLUSTER_BYTES or (geo.fat_bits == 32 and geo.cluster_count < MIN_FAT32_CLUSTERS)


def agree(img: Path, target: FatTarget, files: dict[str, bytes] | None = None) -> None:
    """Our listing is mtools' listing; every file reads the same bytes both ways (and as written)."""
    theirs = mtools_tree(img)
    assert theirs is not None, "mtools cannot list a filesystem we accepted"
    mine = our_tree(target)
    # names compared as FAT compares them: for an 8.3 name with a non-ASCII letter and the lower-case
    # flag, `mdir -b` lowers ASCII only ('É9b01-b9'), we (as Linux and Windows) the whole name ('é9b01-b9');
    # and mdir shows a '?' in an 8.3 name (garbage read as a directory) as '_', though only '?' finds it
    assert {fold(p).replace("?", "_"): k for p, (k, _) in mine.items()} == {fold(p): k for p, k in theirs.items()}, (
        f"listings differ:\nours   {sorted(mine)}\nmtools {sorted(theirs)}"
    )
    for path, (kind, size) in mine.items():
        if kind != "file":
            continue
        data = mtools_read(img, path)
        assert data is not None, f"mtools cannot read {path}"
        assert size == len(data), f"{path}: we say {size} bytes, mtools reads {len(data)}"
        assert target.read(path, bypass_cache=True) == data, f"{path}: O_DIRECT read differs from mtools'"
        if all(SAFE_NAME.fullmatch(part) for part in path.split("/")):
            # through mtools, by our naming of it (other names are refused: see test_fuzz_fat's
            # test_a_log_name_mtools_is_not_given)
            assert target.read(path, bypass_cache=False) == data
        if files is not None and path in files:
            assert data == files[path], f"{path}: not the bytes put there"


def fsck_clean(img: Path) -> None:
    proc = subprocess.run(["fsck.fat", "-n", str(img)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"fsck.fat -n is not clean:\n{proc.stdout}{proc.stderr}"


# ---------------------------------------------------------------------------- mkfs.fat layouts


@GEO
@given(layout=layouts())
def test_every_mkfs_layout_is_read_alike(tmp_path_factory, layout):
    img = tmp_path_factory.mktemp("geo") / "s.img"
    try:
        if not make(img, layout, note):
            assume(False)  # mkfs.fat refuses the combination
        geo = parse_boot_sector(boot_sector(img))
        note(f"geometry: {geo}")
        assert geo.fat_bits == layout["bits"], "mkfs.fat made another FAT type than asked"
        assert (geo.bytes_per_sector, geo.sectors_per_cluster, geo.num_fats) == (
            layout["sector"],
            layout["spc"],
            layout["fats"],
        )
        rng = random.Random(layout["seed"])
        files = populate(img, rng, geo.cluster_size, geo.root_entries)
        fsck_clean(img)  # what mtools made is sound
        try:
            target = FatTarget.open(img)
        except StickRefused as exc:
            why = "clusters over 64 KiB" if geo.cluster_size > MAX_CLUSTER_BYTES else "FAT32 below 65525 clusters"
            event(f"FAT{geo.fat_bits}: refused ({why})")
            assert expected_refusal(geo), f"a layout mkfs.fat makes was refused: {exc.message}"
            assert exc.exit_code == ExitCode.STICK_REFUSED and exc.reason == "stick-unsupported-layout"
            return
        with target:
            assert not expected_refusal(geo), f"accepted {geo}"
            assert target.geo == geo
            agree(img, target, files)
            assert set(files) <= set(our_tree(target))
            free = mtools_free(img)
            assert free is not None and target.fs_info().free_bytes == free, "free space differs from mdir's"
            assert target.check_sound() == []
            data = rng.randbytes(rng.choice([1, 2100, geo.cluster_size + 5]))
            try:
                target.check_room(ARCHIVE, len(data))  # what stage asks first; a small root fills up
            except StickRefused as exc:
                assert exc.reason in ("stick-root-full", "stick-full"), exc.message
                event(f"FAT{geo.fat_bits}: read alike, no room to write ({exc.reason})")
                return
            target.write_atomic(ARCHIVE, data)
            event(f"FAT{geo.fat_bits}: read alike and written")
        assert mtools_read(img, ARCHIVE) == data
        for rel, content in files.items():
            assert mtools_read(img, rel) == content, f"{rel} changed by write_atomic"
        fsck_clean(img)
    finally:
        img.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- edited boot sectors


def _edit(data: bytearray, rng: random.Random, kind: str, image_size: int) -> str:
    geo = parse_boot_sector(bytes(data[:512]))
    per_sector = geo.bytes_per_sector // 32
    (tot16,) = struct.unpack_from("<H", data, 19)
    (fat16,) = struct.unpack_from("<H", data, 22)

    def set_total(value: int) -> None:
        if tot16 and value <= 0xFFFF:
            struct.pack_into("<H", data, 19, value)
        else:
            struct.pack_into("<H", data, 19, 0)
            struct.pack_into("<I", data, 32, value)

    def set_fat_size(value: int) -> None:
        if fat16:
            struct.pack_into("<H", data, 22, min(value, 0xFFFF))
        else:
            struct.pack_into("<I", data, 36, value)

    if kind == "root-not-whole-sectors":
        value = geo.root_entries + rng.choice([1, per_sector - 1, -1, 1 - per_sector])
        struct.pack_into("<H", data, 17, max(1, value) & 0xFFFF)
        return f"root entries {value}"
    if kind == "fats":
        value = rng.choice([3, 4])
        data[16] = value
        return f"{value} FATs"
    if kind == "cluster-128k":
        value = min(128, 131072 // geo.bytes_per_sector)
        data[13] = value
        return f"{value} sectors per cluster ({value * geo.bytes_per_sector // 1024} KiB)"
    if kind == "fat-too-small":
        value = rng.choice([1, max(1, geo.fat_sectors // 4), geo.fat_sectors - 1])
        set_fat_size(value)
        return f"FAT of {value} sectors (was {geo.fat_sectors})"
    if kind == "total-beyond":
        held = image_size // geo.bytes_per_sector  # what the image holds (mkfs.fat may leave a tail unused)
        value = rng.choice([held + 1, held + geo.sectors_per_cluster, held * 2])
        set_total(value)
        return f"total sectors {value} (was {geo.total_sectors})"
    if kind == "total-less":
        value = geo.total_sectors - rng.choice([1, geo.sectors_per_cluster, geo.total_sectors // 3])
        set_total(value)
        return f"total sectors {value} (was {geo.total_sectors})"
    if kind == "reserved":
        value = max(1, geo.reserved_sectors + rng.choice([-1, 1, 2, geo.sectors_per_cluster]))
        struct.pack_into("<H", data, 14, value)
        return f"reserved sectors {value}"
    if kind == "spc":
        value = rng.choice([geo.sectors_per_cluster * 2, max(1, geo.sectors_per_cluster // 2)]) & 0xFF
        data[13] = value
        return f"sectors per cluster {value}"
    if kind == "sector-size":
        value = rng.choice([s for s in (512, 1024, 2048, 4096) if s != geo.bytes_per_sector])
        struct.pack_into("<H", data, 11, value)
        return f"bytes per sector {value}"
    if kind == "fat32-root-cluster":
        value = rng.choice([3, geo.cluster_count + 1, geo.cluster_count + 2])
        struct.pack_into("<I", data, 44, value)
        return f"root cluster {value}"
    value = rng.choice([0xF0, 0xF8, 0xFF])
    data[21] = value
    return f"media {value:#x}"


EDITS = [
    "root-not-whole-sectors",
    "fats",
    "cluster-128k",
    "fat-too-small",
    "total-beyond",
    "total-less",
    "reserved",
    "spc",
    "sector-size",
    "fat32-root-cluster",
    "media",
]


@GEO
@given(
    bits=st.sampled_from([12, 16, 32]),
    sector=st.sampled_from([512, 1024, 2048, 4096]),
    edit=st.sampled_from(EDITS),
    seed=st.integers(0, 2**32 - 1),
)
def test_edited_boot_sectors_are_refused_or_read_alike(tmp_path_factory, bits, sector, edit, seed):
    rng = random.Random(seed)
    assume(not (edit == "root-not-whole-sectors" and bits == 32) and not (edit == "fat32-root-cluster" and bits != 32))
    img = tmp_path_factory.mktemp("edit") / "s.img"
    spc = {12: 1, 16: 1, 32: 1}[bits]
    clusters = {
        12: rng.randint(200, 4000),
        16: rng.randint(5000, 30000),
        32: MIN_FAT32_CLUSTERS + rng.randint(50, 2000),
    }[bits]
    layout = {
        "bits": bits,
        "sector": sector,
        "spc": spc,
        "clusters": clusters,
        "fats": 2,
        "root": 0 if bits == 32 else (sector // 32) * rng.randint(1, 16),
        "reserved": None,
        "seed": seed,
    }
    try:
        if not make(img, layout, note):
            assume(False)
        geo = parse_boot_sector(boot_sector(img))
        populate(img, rng, geo.cluster_size, geo.root_entries)
        data = bytearray(boot_sector(img))
        what = _edit(data, rng, edit, img.stat().st_size)
        note(f"edit: {what}")
        with open(img, "r+b") as handle:
            handle.write(bytes(data[:512]))
        try:
            target = FatTarget.open(img)
        except StickRefused as exc:
            assert exc.exit_code == ExitCode.STICK_REFUSED
            event(f"{edit}: refused ({exc.reason})")
            if edit in ("fats", "total-beyond") or (edit == "root-not-whole-sectors"):
                note(f"refused as expected: {exc.reason}: {exc.message}")
            return
        with target:
            note(f"accepted: {target.geo}")
            assert edit not in ("fats", "total-beyond", "cluster-128k") or (
                edit == "cluster-128k" and target.geo.cluster_size <= MAX_CLUSTER_BYTES
            ), f"accepted {what}"
            assert edit != "root-not-whole-sectors", f"accepted {what}"
            try:
                target.check_sound()
            except StickDamaged as exc:
                event(f"{edit}: accepted, the census refuses it")
                note(f"census refuses it: {exc.problems[:3]}")
                _common_files_agree(img, target)
                return
            except StickIOError as exc:
                event(f"{edit}: accepted, the census cannot read it")
                note(f"census cannot read it: {exc.message}")
                return
            event(f"{edit}: accepted and sound")
            agree(img, target)
    finally:
        img.unlink(missing_ok=True)


def _common_files_agree(img: Path, target: FatTarget) -> None:
    """Where both readers name a file, they read the same bytes (even on a stick the census refuses)."""
    theirs = mtools_tree(img) or {}
    try:
        mine = our_tree(target)
    except (StickIOError, FileNotFoundError):
        return
    for path in set(theirs) & set(mine):
        if theirs[path] != "file" or mine[path][0] != "file":
            continue
        data = mtools_read(img, path)
        try:
            ours = target.read(path, bypass_cache=True)
        except (StickIOError, StickRefused):
            continue
        if data is not None:
            assert ours == data, f"{path}: we read other bytes than mtools"


def test_a_nul_in_an_8_3_name(tmp_path: Path) -> None:
    """Was a bug (found here): the reader kept the NUL bytes of an 8.3 name ('AB' + 6 NULs + 'TXT' read as
    'AB\\x00...\\x00.TXT'); mtools ends the name at the NUL ('AB.TXT') and fsck.fat calls it a bad short name.
    mtools 4.0.32 itself writes such names (mcopy to '::- +b ~')."""
    img = tmp_path / "s.img"
    assert make(img, {"bits": 12, "sector": 512, "spc": 1, "clusters": 500, "fats": 2, "root": 32, "reserved": None})
    run("mcopy", "-i", str(img), "-", "::/AB.TXT", stdin=b"hello\n")
    data = bytearray(img.read_bytes())
    at = data.find(b"AB      TXT")
    data[at + 2 : at + 8] = bytes(6)
    img.write_bytes(bytes(data))
    with FatTarget.open(img) as target:
        ours = {fold(p): k for p, (k, _) in our_tree(target).items()}
        assert ours == {fold(p): k for p, k in mtools_tree(img).items()}
        assert target.read(target.list_root()[0].name, bypass_cache=False) == b"hello\n"
