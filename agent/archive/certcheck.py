"""The certificate checks of :func:`agent.archive.verify.verify_archive`: which certificate is the device's,
whether its CA signed it, whether the private keys match, and whether both are valid now."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from agent.archive.model import ArchiveReport, CertificateInfo, Limits, Problem
from agent.archive.pki import Found, FoundCert, describe, issued_by, scan_member
from agent.archive.zipscan import Entry
from agent.clock import iso


def seconds_ago(delta: timedelta) -> str:
    """``12 s`` for a time already past: whole seconds, rounded up (just past is ``1 s``, never ``0 s``)."""
    return f"{max(1, math.ceil(delta.total_seconds()))} s"


def check_pki(
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

    Decisions: a certificate that starts more than ``skew_seconds`` after ``now`` is ``not_yet_valid``
    and CORRUPT, not EXPIRED: nothing will expire it into usefulness, provisioning again would fail
    the same way, and the usual cause is this workstation's clock, which the hint names.

    A certificate is ``expired`` (EXPIRED, exit 21) once ``now`` is past its notAfter on this clock: the
    skew tolerance never makes an expired certificate "expiring".  The tolerance keeps a fresh certificate
    from being judged not yet valid (an issuer's clock slightly ahead); at the other end an appliance whose
    clock is behind might still take it for a few seconds, but nobody can count on that, and "hand it over
    at once" is wrong advice for a certificate that is already dead on the clock in front of the technician.
    EXPIRING (exit 20) is left only for a certificate still valid, with less than ``margin_seconds`` left.
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
        elif now > info.not_after:
            report.problems.append(
                Problem(
                    "expired",
                    f"{what} expired at {iso(info.not_after)}, {seconds_ago(now - info.not_after)} ago",
                    member=fc.member,
                    hint="archives cannot be reused: delete the device and provision it again",
                )
            )
        elif left < margin_seconds:
            report.problems.append(
                Problem(
                    "expiring",
                    f"{what} expires in {int(left)} s, less than the {margin_seconds:g} s margin",
                    member=fc.member,
                    hint="hand the stick over at once, or provision again",
                )
            )
    report.not_after = min(info.not_after for _, info in chain)
    report.seconds_left = (report.not_after - now).total_seconds()
