"""``verify_archive``: structure, members, certificates, keys, time and names, in that order."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta
from typing import Any

from agent.archive.model import ArchiveReport, CertificateInfo, Limits, MemberInfo, Outcome, Problem, decide
from agent.archive.pki import Found, FoundCert, describe, issued_by, scan_member
from agent.archive.zipscan import Entry, inflate, read_directory
from agent.clock import iso, utc
from agent.errors import InputValidationError, Violation

FILE_PREFIX = "certificates-omni_"
FILE_SUFFIX = ".zip"
NETWORK_MEMBER = "network.json"  # the only documented member name
MANIFEST_MEMBER = "manifest.json"  # written by the local authority; other authorities may omit it
_DEVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_FILE_NAME = re.compile(re.escape(FILE_PREFIX) + r"([A-Za-z0-9_-]{1,255})" + re.escape(FILE_SUFFIX))


#: The longest device name whose archive name still fits FAT's 255 characters.
MAX_STAGED_NAME = 255 - len(FILE_PREFIX) - len(FILE_SUFFIX)


def staged_name_violations(device_name: Any, field: str = "Name") -> list[Violation]:
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
        else:
            contents[entry.index] = out  # type: ignore[assignment]

    first: dict[str, Entry] = {}
    for entry in directory.entries:
        first.setdefault(entry.name, entry)
    _check_network(report, first, contents)
    _check_manifest(report, directory.entries, first, contents)
    _check_pki(report, directory.entries, contents, now, skew_seconds, margin_seconds, limits)
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

    def no_constants(name: str) -> Any:
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


def _manifest_members(listed: Any) -> list[tuple[str, str, int | None]] | None:
    """``members`` as (name, sha256, size or None): a {name: sha256} map or a [{name, sha256, size?}] list."""
    out: list[tuple[str, str, int | None]] = []
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


# ---------------------------------------------------------------- certificates, keys and time


def _check_pki(
    report: ArchiveReport,
    entries: list[Entry],
    contents: dict[int, bytes],
    now: datetime,
    skew_seconds: float,
    margin_seconds: float,
    limits: Limits,
) -> None:
    problems = report.problems
    found = Found()
    for e in entries:
        if e.index in contents:
            scan_member(e.name, contents[e.index], found, limits.max_objects)
    problems.extend(found.problems)
    report.key_members = list(dict.fromkeys(k.member for k in found.keys))

    certs: list[FoundCert] = []
    infos: dict[int, CertificateInfo] = {}
    for fc in found.certs:
        info = describe(fc, now)
        if info is None:
            problems.append(Problem("bad_certificate", "certificate fields do not parse", member=fc.member))
            continue
        certs.append(fc)
        infos[id(fc)] = info
    report.certificates = [infos[id(c)] for c in certs]
    if not certs:
        problems.append(Problem("no_certificate", "no certificate found in any member (PEM or DER)"))
        return
    cas = [c for c in certs if infos[id(c)].is_ca]
    leaves = [c for c in certs if not infos[id(c)].is_ca]
    if not leaves:
        report.ca_certificate = infos[id(cas[0])]
        problems.append(Problem("no_device_certificate", "only CA certificates found: no device certificate"))
        return

    key_of: dict[bytes, str] = {}
    for k in found.keys:
        key_of.setdefault(k.spki, k.member)
    parents = {id(c): next((ca for ca in cas if issued_by(c, ca)), None) for c in leaves}
    device = max(leaves, key=lambda c: (c.spki in key_of, parents[id(c)] is not None, infos[id(c)].not_after))
    for c in certs:
        infos[id(c)].key_member = key_of.get(c.spki)
    dinfo = infos[id(device)]
    report.device_certificate = dinfo

    chain = [(device, dinfo)]
    if cas:
        issuer = parents[id(device)]
        dinfo.chained_to_ca = issuer is not None
        if issuer is not None:
            report.ca_certificate = infos[id(issuer)]
            chain.append((issuer, infos[id(issuer)]))
        else:
            named = next((ca for ca in cas if ca.cert.subject == device.cert.issuer), cas[0])
            report.ca_certificate = infos[id(named)]
            same_name = report.ca_certificate.subject == dinfo.issuer
            problems.append(
                Problem(
                    "chain_broken",
                    "the device certificate's signature does not verify with the CA certificate's key"
                    if same_name
                    else f"the device certificate was issued by {dinfo.issuer!r}, the CA certificate is "
                    f"{report.ca_certificate.subject!r}",
                    member=device.member,
                )
            )

    _check_keys(report, found, certs, infos, device)
    _check_time(report, chain, now, skew_seconds, margin_seconds)


def _check_keys(
    report: ArchiveReport, found: Found, certs: list[FoundCert], infos: dict[int, CertificateInfo], device: FoundCert
) -> None:
    problems = report.problems
    mismatched = False
    for key in found.keys:
        owners = [c for c in certs if c.spki == key.spki]
        if not owners:
            mismatched = True
            problems.append(
                Problem("key_mismatch", "private key matches no certificate in the archive", member=key.member)
            )
        elif any(infos[id(c)].is_ca for c in owners):
            problems.append(
                Problem(
                    "ca_private_key",
                    "the archive carries a CA certificate's private key",
                    member=key.member,
                    hint="the CA key is compromised: rotate the CA",
                )
            )
    if not found.keys:
        if not any(p.code == "key_unreadable" for p in problems):
            problems.append(
                Problem(
                    "no_private_key",
                    "no private key found in any member (PEM or DER)",
                    hint="the appliance needs the device certificate's private key",
                )
            )
    elif infos[id(device)].key_member is None and not mismatched:
        problems.append(Problem("key_mismatch", "no private key matches the device certificate", member=device.member))


def _check_time(
    report: ArchiveReport,
    chain: list[tuple[FoundCert, CertificateInfo]],
    now: datetime,
    skew_seconds: float,
    margin_seconds: float,
) -> None:
    """Validity vs ``now`` for the device certificate and, when chained, its CA.

    Decision: a certificate that starts more than ``skew_seconds`` after ``now`` is ``not_yet_valid``
    and CORRUPT, not EXPIRED: nothing will expire it into usefulness, provisioning again would fail
    the same way, and the usual cause is this workstation's clock, which the hint names.
    """
    skew = timedelta(seconds=skew_seconds)
    for fc, info in chain:
        what = "the CA certificate" if info.is_ca else "the device certificate"
        left = info.seconds_left
        if now + skew < info.not_before:
            ahead = (info.not_before - now).total_seconds()
            report.problems.append(
                Problem(
                    "not_yet_valid",
                    f"{what} is valid only from {iso(info.not_before)}, {ahead:.0f} s from now",
                    member=fc.member,
                    hint=f"check this workstation's clock (timedatectl, NTP): it may be behind by more than the "
                    f"{skew_seconds:g} s tolerance",
                )
            )
        elif now - skew > info.not_after:
            report.problems.append(
                Problem(
                    "expired",
                    f"{what} expired at {iso(info.not_after)}, {-left:.0f} s ago",
                    member=fc.member,
                    hint="archives cannot be reused: delete the device and provision it again",
                )
            )
        elif left < margin_seconds:
            state = f"expires in {left:.0f} s" if left >= 0 else f"expired {-left:.0f} s ago (within the clock skew)"
            report.problems.append(
                Problem(
                    "expiring",
                    f"{what} {state}, less than the {margin_seconds:g} s margin",
                    member=fc.member,
                    hint="hand the stick over at once, or provision again",
                )
            )
    report.not_after = min(info.not_after for _, info in chain)
    report.seconds_left = (report.not_after - now).total_seconds()
