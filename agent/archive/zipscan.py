"""A defensive ZIP reader: the central directory is parsed and judged before any byte is inflated.

Not :mod:`zipfile`: the verifier must decide every limit from the declared sizes first, compare
each local header with its directory entry, notice overlapping members, and inflate at most the
declared size + 1 byte of any member, whatever the headers claim.  Only what an archive of a few
kilobytes needs is supported: stored and deflated members, one disk, optional ZIP64 fields.
"""

from __future__ import annotations

import itertools
import re
import struct
import zlib
from dataclasses import dataclass

from agent.archive.model import Limits, Problem

_EOCD = struct.Struct("<4sHHHHIIH")  # 22 bytes
_Z64_LOCATOR = struct.Struct("<4sIQI")  # 20 bytes
_Z64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_EOCD_SIG, _Z64_LOC_SIG, _Z64_EOCD_SIG = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_CENTRAL_SIG, _LOCAL_SIG = b"PK\x01\x02", b"PK\x03\x04"

FLAG_ENCRYPTED, FLAG_STRONG_ENCRYPTION, FLAG_UTF8 = 0x0001, 0x0040, 0x0800
STORED, DEFLATED, AES = 0, 8, 99
_UNIX = 3
_S_IFMT, _S_IFREG, _S_IFDIR, _S_IFLNK = 0o170000, 0o100000, 0o040000, 0o120000
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class Entry:
    """One central-directory entry."""

    index: int
    name: str
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compressed_size: int
    size: int
    local_offset: int
    made_by: int
    external_attr: int
    data_start: int = -1  # resolved from the local header; -1 when it could not be
    inflatable: bool = True  # False: encrypted, unsupported or unresolvable (never inflated)

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")


@dataclass
class Directory:
    """The parsed central directory and what is wrong with it.  ``refused``: inflate nothing."""

    entries: list[Entry]
    problems: list[Problem]
    refused: bool


def read_directory(data: bytes, limits: Limits) -> Directory:
    """Parse and judge the central directory of ``data`` (nothing is inflated here)."""
    problems: list[Problem] = []

    def refuse(code: str, message: str) -> Directory:
        problems.append(Problem(code, message))
        return Directory([], problems, refused=True)

    eocd = _find_end_record(data)
    if isinstance(eocd, Problem):
        problems.append(eocd)
        return Directory([], problems, refused=True)
    _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _ = _EOCD.unpack_from(data, eocd)
    cd_end = eocd
    if 0xFFFF in (n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset):
        z64 = _zip64_end_record(data, eocd)
        if isinstance(z64, str):
            return refuse("malformed", z64)
        cd_end, disk, cd_disk, n_disk, n_total, cd_size, cd_offset = z64
    if disk or cd_disk or n_disk != n_total:
        return refuse("malformed", "multi-disk archives are not supported")
    if n_total > limits.max_members:
        return refuse("too_many_members", f"{n_total} members declared, the limit is {limits.max_members}")
    if cd_offset + cd_size != cd_end:
        return refuse("malformed", "the central directory does not end where the end record begins")
    if n_total * _CENTRAL.size > cd_size:
        return refuse("truncated", f"the central directory is too short for {n_total} members")

    entries: list[Entry] = []
    pos = cd_offset
    for index in range(n_total):
        if pos + _CENTRAL.size > cd_end:
            return refuse("truncated", "the central directory ends inside an entry")
        (sig, made_by, _, flags, method, _, _, crc, csize, usize, nlen, xlen, clen, _, _, ext_attr, offset) = (
            _CENTRAL.unpack_from(data, pos)
        )
        if sig != _CENTRAL_SIG:
            return refuse("malformed", f"central directory entry {index} has a bad signature")
        name_at, extra_at = pos + _CENTRAL.size, pos + _CENTRAL.size + nlen
        pos = extra_at + xlen + clen
        if pos > cd_end:
            return refuse("truncated", f"central directory entry {index} runs past the directory")
        raw_name = data[name_at:extra_at]
        if 0xFFFFFFFF in (csize, usize, offset):
            sizes = _zip64_extra(data[extra_at : extra_at + xlen], usize, csize, offset)
            if sizes is None:
                return refuse("malformed", f"central directory entry {index} lacks its ZIP64 sizes")
            usize, csize, offset = sizes
        try:
            name = raw_name.decode("utf-8") if flags & FLAG_UTF8 else raw_name.decode("cp437")
        except UnicodeDecodeError:
            name = raw_name.decode("utf-8", "replace")
            problems.append(Problem("unsafe_path", "member name is not valid UTF-8", member=name))
        entries.append(Entry(index, name, raw_name, flags, method, crc, csize, usize, offset, made_by, ext_attr))
    if pos != cd_end:
        return refuse("malformed", "the central directory holds bytes after its last entry")

    refused = _judge_sizes(entries, limits, problems)
    _resolve_local_headers(data, entries, cd_offset, problems)
    refused = _judge_overlaps(entries, problems) or refused
    for entry in entries:
        _judge_entry(entry, problems)
    _judge_duplicates(entries, problems)
    return Directory(entries, problems, refused)


def inflate(data: bytes, entry: Entry) -> tuple[bytes | None, Problem | None]:
    """The member's bytes, checked against its declared size and CRC.

    Never produces more than ``entry.size + 1`` bytes, whatever the stream holds.
    """
    view = memoryview(data)[entry.data_start : entry.data_start + entry.compressed_size]
    if entry.method == STORED:
        out = bytes(view)
    else:
        decomp = zlib.decompressobj(-15)
        try:
            out = decomp.decompress(view, entry.size + 1)
        except zlib.error as exc:
            return None, Problem("bad_crc", f"the deflate stream is damaged ({exc})", member=entry.name)
        if len(out) > entry.size:
            return None, Problem(
                "zip_bomb", f"inflates beyond its declared {entry.size} bytes (lying header)", member=entry.name
            )
        if not decomp.eof:
            return None, Problem("bad_crc", "the deflate stream ends early", member=entry.name)
    if len(out) != entry.size:
        return None, Problem(
            "bad_crc", f"holds {len(out)} bytes, the directory declares {entry.size}", member=entry.name
        )
    if zlib.crc32(out) != entry.crc:
        return None, Problem("bad_crc", "CRC-32 mismatch", member=entry.name)
    return out, None


# ---------------------------------------------------------------- the end records


def _find_end_record(data: bytes) -> int | Problem:
    """Offset of the end-of-central-directory record that ends ``data`` exactly."""
    size = len(data)
    low = max(0, size - _EOCD.size - 0xFFFF)
    seen = False
    pos = data.rfind(_EOCD_SIG, low, max(size - _EOCD.size + 4, 0))
    while pos >= 0:
        seen = True
        (comment_len,) = struct.unpack_from("<H", data, pos + 20)
        if pos + _EOCD.size + comment_len == size:
            return pos
        pos = data.rfind(_EOCD_SIG, low, pos + 3)
    if seen or data.startswith(_LOCAL_SIG) or data.startswith(_EOCD_SIG):
        return Problem(
            "truncated", "the ZIP end record is missing or does not end the file (truncated or trailing bytes)"
        )
    return Problem("not_zip", "not a ZIP archive")


def _zip64_end_record(data: bytes, eocd: int) -> tuple[int, int, int, int, int, int, int] | str:
    at = eocd - _Z64_LOCATOR.size
    if at < 0 or data[at : at + 4] != _Z64_LOC_SIG:
        return "the ZIP64 end record locator is missing"
    _, _, z64_offset, _ = _Z64_LOCATOR.unpack_from(data, at)
    if z64_offset + _Z64_EOCD.size > at or data[z64_offset : z64_offset + 4] != _Z64_EOCD_SIG:
        return "the ZIP64 end record is missing"
    _, _, _, _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset = _Z64_EOCD.unpack_from(data, z64_offset)
    return z64_offset, disk, cd_disk, n_disk, n_total, cd_size, cd_offset


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int] | None:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if tag != 1:
            continue
        values = [usize, csize, offset]
        at = 0
        for i, value in enumerate(values):
            if value == 0xFFFFFFFF:
                if at + 8 > len(body):
                    return None
                (values[i],) = struct.unpack_from("<Q", body, at)
                at += 8
        return values[0], values[1], values[2]
    return None


# ---------------------------------------------------------------- judging entries


def _judge_sizes(entries: list[Entry], limits: Limits, problems: list[Problem]) -> bool:
    refused = False
    total = 0
    for e in entries:
        total += e.size
        if e.size > limits.max_member_bytes:
            problems.append(
                Problem("zip_bomb", f"declares {e.size} bytes, the limit is {limits.max_member_bytes}", member=e.name)
            )
            refused = True
        elif e.size > limits.ratio_floor_bytes and e.size > limits.max_ratio * max(e.compressed_size, 1):
            ratio = e.size / max(e.compressed_size, 1)
            problems.append(
                Problem(
                    "zip_bomb",
                    f"declares a compression ratio of {ratio:.0f}, the limit is {limits.max_ratio:g}",
                    member=e.name,
                )
            )
            refused = True
    if total > limits.max_total_bytes:
        problems.append(
            Problem("zip_bomb", f"members declare {total} bytes in all, the limit is {limits.max_total_bytes}")
        )
        refused = True
    return refused


def _resolve_local_headers(data: bytes, entries: list[Entry], cd_offset: int, problems: list[Problem]) -> None:
    """Find each member's data; a local header that disagrees with the directory is ``malformed``."""
    for e in entries:
        at = e.local_offset
        if at + _LOCAL.size > cd_offset:
            problems.append(Problem("malformed", "local header lies outside the archive data", member=e.name))
            e.inflatable = False
            continue
        sig, _, flags, method, _, _, _, _, _, nlen, xlen = _LOCAL.unpack_from(data, at)
        start = at + _LOCAL.size + nlen + xlen
        if sig != _LOCAL_SIG:
            reason = "local header has a bad signature"
        elif data[at + _LOCAL.size : at + _LOCAL.size + nlen] != e.raw_name:
            reason = "local header names another file than the central directory"
        elif method != e.method:
            reason = "local header and central directory disagree on the compression method"
        elif start + e.compressed_size > cd_offset:
            reason = "member data runs into the central directory (truncated)"
        else:
            e.data_start = start
            e.flags |= flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION)
            continue
        problems.append(Problem("malformed", reason, member=e.name))
        e.inflatable = False


def _judge_overlaps(entries: list[Entry], problems: list[Problem]) -> bool:
    """Members sharing bytes are the overlapping-file zip bomb."""
    spans = sorted((e.local_offset, e.data_start + e.compressed_size, e.name) for e in entries if e.data_start >= 0)
    for (_, end, _), (start, _, name) in itertools.pairwise(spans):
        if start < end:
            problems.append(Problem("zip_bomb", "member overlaps the previous member's data", member=name))
            return True
    return False


def _judge_entry(e: Entry, problems: list[Problem]) -> None:
    if e.flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION) or e.method == AES:
        problems.append(Problem("encrypted", "member is encrypted", member=e.name))
        e.inflatable = False
    elif e.method not in (STORED, DEFLATED):
        problems.append(
            Problem(
                "unsupported_compression",
                f"compression method {e.method} (only stored and deflate are supported)",
                member=e.name,
            )
        )
        e.inflatable = False
    elif e.method == STORED and e.compressed_size != e.size:
        problems.append(Problem("malformed", "stored member with differing sizes", member=e.name))
        e.inflatable = False
    reason = unsafe_reason(e.name)
    if reason is None and e.made_by >> 8 == _UNIX:
        kind = (e.external_attr >> 16) & _S_IFMT
        if kind == _S_IFLNK:
            reason = "is a symbolic link"
        elif kind not in (0, _S_IFREG, _S_IFDIR):
            reason = "is a special file"
    if reason:
        problems.append(Problem("unsafe_path", f"unsafe member name: {reason}", member=e.name))


def unsafe_reason(name: str) -> str | None:
    """Why extracting ``name`` could escape or confuse the target directory (None: safe)."""
    if not name:
        return "empty name"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "control character (NUL included)"
    if "\\" in name:
        return "backslash"
    if name.startswith("/"):
        return "absolute path"
    if _DRIVE.match(name):
        return "drive letter"
    if ".." in name.split("/"):
        return "'..' component"
    return None


def _judge_duplicates(entries: list[Entry], problems: list[Problem]) -> None:
    exact: set[str] = set()
    folded: set[str] = set()
    for e in entries:
        key = e.name.rstrip("/")
        if key in exact:
            problems.append(Problem("duplicate_member", "the name occurs more than once", member=e.name))
        elif key.casefold() in folded:
            problems.append(
                Problem(
                    "duplicate_member",
                    "the name differs from another only in case (FAT is case-insensitive)",
                    member=e.name,
                )
            )
        exact.add(key)
        folded.add(key.casefold())
