"""The native FAT reader agrees with mtools and mkfs.fat on real images."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from agent.stick.fatfs import FatReader, split_rel
from agent.stick.fatgeo import NotFat, identify, mbr_partitions, parse_boot_sector
from tests.fat_kit import SIZES, ext4_image, make_image, make_mbr_image, mtools


def _open(path: Path) -> FatReader:
    fd = os.open(path, os.O_RDONLY)
    return FatReader(fd, parse_boot_sector(os.pread(fd, 512, 0)))


@pytest.mark.parametrize("bits", [12, 16, 32])
def test_geometry_listing_and_free_space_match_mtools(tmp_path: Path, bits: int) -> None:
    img = make_image(tmp_path / "s.img", bits, label="LAB", volid="0BAD1DEA")
    payload = os.urandom(7000)
    mtools("mcopy", "-i", str(img), "-", "::certificates-omni_Dev-1.zip", stdin=payload)
    mtools("mmd", "-i", str(img), "::panorama")
    mtools("mcopy", "-i", str(img), "-", "::panorama/occ.log", stdin=b"log\n")
    mtools("mcopy", "-i", str(img), "-", "::README.TXT", stdin=b"x")
    mtools("mattrib", "-i", str(img), "+r", "::README.TXT")
    reader = _open(img)
    try:
        geo = reader.geo
        assert geo.fat_bits == bits
        assert geo.uuid == "0BAD-1DEA"
        assert reader.volume_label() == "LAB"
        entries = {e.name: e for e in reader.dir_entries()}
        assert set(entries) == {"certificates-omni_Dev-1.zip", "panorama", "README.TXT"}
        assert entries["certificates-omni_Dev-1.zip"].size == 7000
        assert entries["panorama"].is_dir and entries["README.TXT"].readonly
        assert reader.read_file(reader.lookup("CERTIFICATES-OMNI_DEV-1.ZIP")) == payload
        assert reader.read_file(reader.lookup("/panorama/OCC.LOG")) == b"log\n"
        mdir = mtools("mdir", "-i", str(img), "::").stdout.decode()
        free = int(re.search(r"([\d ]+) bytes free", mdir)[1].replace(" ", ""))
        assert reader.free_clusters() * geo.cluster_size == free
        if bits == 32:
            assert reader.fsinfo_free() == reader.free_clusters()
    finally:
        os.close(reader.fd)


def test_lookup_by_short_name_and_missing(tmp_path: Path) -> None:
    img = make_image(tmp_path / "s.img", 16)
    mtools("mcopy", "-i", str(img), "-", "::certificates-omni_a.zip", stdin=b"a")
    reader = _open(img)
    try:
        assert reader.lookup("CERTIF~1.ZIP").name == "certificates-omni_a.zip"
        assert reader.lookup("nope.zip") is None
        assert reader.lookup("nope/deeper.txt") is None
    finally:
        os.close(reader.fd)


@pytest.mark.parametrize(
    "content, found",
    [
        ("ext4", "ext4"),
        ("zeros", "only zeros"),
        ("random", "unrecognised"),
    ],
)
def test_non_fat_is_named(tmp_path: Path, content: str, found: str) -> None:
    path = tmp_path / "x.img"
    if content == "ext4":
        ext4_image(path)
    else:
        path.write_bytes(bytes(1 << 20) if content == "zeros" else b"\x17" + os.urandom(1 << 20))
    head = path.read_bytes()[: 72 * 1024]
    with pytest.raises(NotFat):
        parse_boot_sector(head[:512])
    assert found in identify(head)


def test_mbr_partitions(tmp_path: Path) -> None:
    img = make_mbr_image(tmp_path / "p.img", [(0x0C, 2048, 40960), (0x83, 43008, 8192)])
    parts = mbr_partitions(img.read_bytes()[:512])
    assert [(p.index, p.type, p.start, p.size) for p in parts] == [
        (1, 0x0C, 2048 * 512, 40960 * 512),
        (2, 0x83, 43008 * 512, 8192 * 512),
    ]


def test_split_rel_refuses_escapes() -> None:
    assert split_rel("/panorama/occ.log") == ["panorama", "occ.log"]
    assert split_rel("", allow_empty=True) == []
    for bad in ("../x", "a/../../b", ""):
        with pytest.raises(ValueError):
            split_rel(bad)


def test_sizes_table_makes_the_fat_type_asked_for(tmp_path: Path) -> None:
    for bits in SIZES:
        reader = _open(make_image(tmp_path / f"{bits}.img", bits))
        try:
            assert reader.geo.fat_bits == bits
        finally:
            os.close(reader.fd)
