"""``verify_archive``: structure, members, certificates, keys, time and names, in that order
(certificates, keys and time: :mod:`agent.archive.certcheck`)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, NoReturn

from agent.archive.certcheck import check_pki
from agent.archive.model import ArchiveReport, Limits, MemberInfo, Outcome, Problem, decide
from agent.archive.zipscan import Entry, inflate, read_directory
from agent.clock import utc
from agent.errors import InputValidationError, Violation

FILE_PREFIX = "certificates-omni_"
FILE_SUFFIX = ".zip"
NETWORK_MEMBER = "network.json"  # the only documented member name
MANIFEST_MEMBER = "manifest.json"  # written by the local authority; other authorities may omit it
_DEVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_FILE_NAME = re.compile(re.escape(FILE_PREFIX) + r"([A-Za-z0-9_-]{1,255})" + re.escape(FILE_SUFFIX))


#: The longest device name whose archive name still fits FAT's 255 characters.
MAX_STAGED_NAME = 255 - len(FILE_PREFIX) - len(FILE_SUFFIX)


def staged_name_violations(device_name: object, field: str = "Name") -> list[Violation]:
    """Why ``device_name`` cannot be staged onto a stick (ProvisionDevice allows names FAT cannot hold)."""
    if not isinstance(device_name, str) or not _DEVICE_NAME.fullmatch(device_name):
        return [Violation(field, device_name, "1-255 characters of [a-zA-Z0-9-_]")]
    if len(device_name) > MAX_STAGED_NAME:
        return [
            Violation(
                field,
                device_name,
                f"{len(device_name)} characters: the archive name {FILE_PREFIX}<name>"
                f"{FILE_SUFFIX} would be {len(device_name) + 22}, FAT allows 255; a staged device name has at "
                f"most {MAX_STAGED_NAME}",
            )
        ]
    return []


def archive_file_name(device_name: str) -> str:
    """``certificates-omni_<device_name>.zip``; the name must follow ProvisionDevice's rules and fit FAT."""
    violations = staged_name_violations(device_name, "device_name")
    if violations:
        raise InputValidationError(violations, subject="device name")
    return f"{FILE_PREFIX}{device_name}{FILE_SUFFIX}"


def device_name_from_file_name(file_name: str) -> str | None:
    """The device name in ``certificates-omni_<name>.zip`` (directories ignored); None when it is not one."""
    base = re.split(r"[/\\]", file_name)[-1]
    match = _FILE_NAME.fullmatch(base)
    return match.group(1) if match else None


def verify_archive(
    data: bytes,
    *,
    now: datetime,
    skew_seconds: float = 30,
    margin_seconds: float = 60,
    limits: Limits = Limits(),
    file_name: str | None = None,
    device_name: str | None = None,
) -> ArchiveReport:
    """Check a configuration archive; never raises on any input bytes, never inflates a bomb.

    ``now`` is the workstation's time (see :mod:`agent.clock`); ``skew_seconds`` is how far that
    clock may be from the appliance's; ``margin_seconds`` is the least time that must be left.
    """
    if len(data) > limits.max_file_bytes:
        return too_large(len(data), now=now, limits=limits, file_name=file_name, device_name=device_name)
    data = bytes(data)
    now = utc(now)
    report = ArchiveReport(
        outcome=Outcome.OK, sha256=hashlib.sha256(data).hexdigest(), size=len(data), checked_at=now, file_name=file_name
    )
    problems = report.problems
    _check_file_name(report, file_name, device_name)

    directory = read_directory(data, limits)
    problems.extend(directory.problems)
    report.members = [MemberInfo(e.name, e.size, e.compressed_size) for e in directory.entries]
    if directory.refused:
        report.outcome = decide(problems)
        return report

    contents: dict[int, bytes] = {}
    for entry, info in zip(directory.entries, report.members):
        if not entry.inflatable:
            continue
        out, problem = inflate(data, entry)
        info.crc_ok = problem is None
        if problem is not None:
            problems.append(problem)
        elif out is not None:  # always, without a problem
            contents[entry.index] = out

    first: dict[str, Entry] = {}
    for entry in directory.entries:
        first.setdefault(entry.name, entry)
    _check_network(report, first, contents)
    _check_manifest(report, directory.entries, first, contents)
    check_pki(report, directory.entries, contents, now, skew_seconds, margin_seconds, limits)
    report.outcome = decide(problems)
    return report


def too_large(
    size: int, *, now: datetime, limits: Limits = Limits(), file_name: str | None = None, device_name: str | None = None
) -> ArchiveReport:
    """The report for a file judged by its size alone: larger than any archive can be (CORRUPT, unread)."""
    report = ArchiveReport(outcome=Outcome.CORRUPT, sha256=None, size=size, checked_at=utc(now), file_name=file_name)
    _check_file_name(report, file_name, device_name)
    report.problems.append(
        Problem(
            "too_large",
            f"{size} bytes, larger than any configuration archive (at most "
            f"{limits.max_file_bytes} bytes within the verify limits); not read",
            hint="it is no configuration archive: remove it",
        )
    )
    report.outcome = decide(report.problems)
    return report


# ---------------------------------------------------------------- names


def _check_file_name(report: ArchiveReport, file_name: str | None, device_name: str | None) -> None:
    from_file = None
    if file_name is not None:
        from_file = device_name_from_file_name(file_name)
        if from_file is None:
            report.problems.append(
                Problem(
                    "bad_file_name",
                    f"file name {file_name!r} is not {FILE_PREFIX}<device-name>{FILE_SUFFIX}",
                    hint="the appliance looks for exactly this name in the drive's root",
                )
            )
        elif device_name is not None and from_file != device_name:
            report.problems.append(
                Problem("name_mismatch", f"file name names device {from_file!r}, expected {device_name!r}")
            )
    report.device_name = device_name if device_name is not None else from_file


# ---------------------------------------------------------------- network.json and manifest.json


def _load_json(content: bytes) -> Any:
    """Strict JSON (UTF-8, no BOM, no NaN); raises ValueError for anything else."""

    def no_constants(name: str) -> NoReturn:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(content.decode("utf-8"), parse_constant=no_constants)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def _check_network(report: ArchiveReport, first: dict[str, Entry], contents: dict[int, bytes]) -> None:
    entry = first.get(NETWORK_MEMBER)
    if entry is None:
        elsewhere = [n for n in first if n.rsplit("/", 1)[-1].casefold() == NETWORK_MEMBER]
        where = f" (found {elsewhere[0]!r}, not at the root)" if elsewhere else ""
        report.problems.append(Problem("network_json_missing", f"no {NETWORK_MEMBER} in the archive{where}"))
        return
    if entry.index not in contents:
        return  # its damage is already reported
    try:
        network = _load_json(contents[entry.index])
    except ValueError as exc:
        report.problems.append(Problem("network_json_invalid", f"not valid JSON: {exc}", member=entry.name))
        return
    if not isinstance(network, dict):
        report.problems.append(
            Problem("network_json_invalid", f"a JSON {type(network).__name__}, not an object", member=entry.name)
        )
        return
    report.network = network


def _manifest_members(listed: object) -> list[tuple[str, str, int | None]] | None:
    """``members`` as (name, sha256, size or None): a {name: sha256} map or a [{name, sha256, size?}] list."""
    out: list[tuple[str, str, int | None]] = []
    items: list[object]
    if isinstance(listed, dict):
        items = [{"name": k, **(v if isinstance(v, dict) else {"sha256": v})} for k, v in listed.items()]
    elif isinstance(listed, list):
        items = listed
    else:
        return None
    for item in items:
        if not isinstance(item, dict):
            return None
        name, digest, size = item.get("name"), item.get("sha256"), item.get("size")
        if not isinstance(name, str) or not isinstance(digest, str):
            return None
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
            return None
        out.append((name, digest.lower(), size))
    return out


def _check_manifest(
    report: ArchiveReport, entries: list[Entry], first: dict[str, Entry], contents: dict[int, bytes]
) -> None:
    entry = first.get(MANIFEST_MEMBER)
    if entry is None or entry.index not in contents:
        return
    problems = report.problems
    try:
        manifest = _load_json(contents[entry.index])
    except ValueError as exc:
        problems.append(Problem("manifest_invalid", f"not valid JSON: {exc}", member=entry.name))
        return
    if not isinstance(manifest, dict):
        problems.append(Problem("manifest_invalid", "not a JSON object", member=entry.name))
        return
    report.manifest = manifest

    named = manifest.get("device_name")
    if isinstance(named, str):
        if report.device_name is None:
            report.device_name = named
        elif named != report.device_name:
            problems.append(
                Problem(
                    "name_mismatch",
                    f"the manifest names device {named!r}, expected {report.device_name!r}",
                    member=entry.name,
                )
            )
    if "members" not in manifest:
        return  # another authority's manifest: nothing we know how to check
    listed = _manifest_members(manifest["members"])
    if listed is None:
        problems.append(
            Problem("manifest_invalid", "'members' is neither {name: sha256} nor [{name, sha256}]", member=entry.name)
        )
        return
    names = set()
    for name, digest, size in listed:
        names.add(name)
        target = first.get(name)
        if name == MANIFEST_MEMBER:
            continue  # a manifest cannot carry its own hash
        if target is None:
            problems.append(Problem("manifest_mismatch", f"listed member {name!r} is missing", member=name))
        elif target.index not in contents:
            continue  # damaged or refused: already reported
        elif hashlib.sha256(contents[target.index]).hexdigest() != digest:
            problems.append(Problem("manifest_mismatch", "SHA-256 differs from the manifest", member=name))
        elif size is not None and size != len(contents[target.index]):
            problems.append(Problem("manifest_mismatch", "size differs from the manifest", member=name))
    for e in entries:
        if not e.is_dir and e.name != MANIFEST_MEMBER and e.name not in names:
            problems.append(Problem("manifest_mismatch", "member is not listed in the manifest", member=e.name))
