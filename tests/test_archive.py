"""The configuration-archive verifier: structure, bombs, certificates by content, time, names."""

from __future__ import annotations

import base64
import io
import json
import tracemalloc
import types
import zipfile
import zlib
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.archive import (
    CODES,
    Limits,
    Outcome,
    archive_file_name,
    device_name_from_file_name,
    verify_archive,
    zipscan,
)
from agent.errors import ExitCode, InputValidationError
from tests.archive_factory import (
    DEVICE,
    LIFETIME,
    NOW,
    Member,
    Pki,
    build,
    cert_der,
    cert_pem,
    deflate,
    key_der,
    key_pem,
    member_data_offset,
    network_bytes,
    new_key,
    standard_members,
    with_manifest,
    write_zip,
    zeros_stream,
)

EXIT = {
    Outcome.OK: ExitCode.OK,
    Outcome.EXPIRING: ExitCode.VERIFY_EXPIRING,
    Outcome.EXPIRED: ExitCode.VERIFY_EXPIRED,
    Outcome.CORRUPT: ExitCode.VERIFY_CORRUPT,
    Outcome.UNVERIFIABLE: ExitCode.VERIFY_UNVERIFIABLE,
}


def check(data: bytes, outcome: Outcome, code: str | None = None, **kwargs):
    """Verify at NOW; assert the outcome, its exit code and (when given) that ``code`` was reported."""
    kwargs.setdefault("now", NOW)
    report = verify_archive(data, **kwargs)
    assert report.outcome is outcome, report.to_dict()["problems"]
    assert report.exit_code == EXIT[outcome] == outcome.exit_code
    if code is not None:
        assert code in report.codes(), report.codes()
        assert CODES[code] is outcome or CODES[code] is Outcome.OK
    json.dumps(report.to_dict())
    return report


def replace_member(members: list[Member], name: str, **changes) -> list[Member]:
    out = []
    for m in members:
        if m.name == name:
            m = Member(**{**m.__dict__, **changes})
        out.append(m)
    return out


def without(members: list[Member], *names: str) -> list[Member]:
    return [m for m in members if m.name not in names and m.name != "manifest.json"]


# ---------------------------------------------------------------- the good case


def test_valid_archive_is_ok_and_described():
    pki = Pki.make()
    report = check(build(pki), Outcome.OK, file_name=archive_file_name(DEVICE), device_name=DEVICE)
    assert report.problems == []
    dev, ca = report.device_certificate, report.ca_certificate
    assert dev.member == "certificate.pem.crt" and dev.encoding == "PEM"
    assert dev.key_member == "private.pem.key" and dev.chained_to_ca is True
    assert not dev.is_ca and not dev.self_signed
    assert dev.not_after == NOW + LIFETIME and dev.seconds_left == 300.0
    assert dev.serial == format(pki.device_cert.serial_number, "x")
    assert dev.sha256 == pki.device_cert.fingerprint(hashes.SHA256()).hex()
    assert ca.is_ca and ca.self_signed and ca.member == "root-ca.pem" and ca.chained_to_ca is None
    assert report.seconds_left == 300.0 and report.not_after == NOW + LIFETIME
    assert report.network["Ethernet0"]["ConnectionType"] == "DHCP"
    assert report.manifest["device_name"] == DEVICE
    assert [m.name for m in report.members] == [
        "certificate.pem.crt",
        "private.pem.key",
        "root-ca.pem",
        "network.json",
        "manifest.json",
    ]
    assert all(m.crc_ok for m in report.members)
    assert report.key_members == ["private.pem.key"]
    assert report.device_name == DEVICE


def test_the_test_writer_makes_archives_the_standard_library_reads():
    data = build()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert zf.read("network.json") == network_bytes()


def test_archive_written_by_zipfile_is_ok():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, m in enumerate(standard_members()):
            zf.writestr(m.name, m.data, compress_type=zipfile.ZIP_STORED if i % 2 else zipfile.ZIP_DEFLATED)
    check(buf.getvalue(), Outcome.OK)


def test_zip64_fields_are_understood():
    data = write_zip(standard_members(), zip64=True)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # the writer is right...
        assert zf.testzip() is None
    check(data, Outcome.OK)  # ...and so is the reader


def test_manifest_in_list_form_and_no_manifest_are_ok():
    check(build(form="list"), Outcome.OK)
    report = check(build(manifest=False), Outcome.OK)
    assert report.manifest is None


def test_archive_with_comment_is_ok():
    check(write_zip(standard_members(), comment=b"made by another authority"), Outcome.OK)


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", "not_zip"),
        (b"hello, world\n" * 20, "not_zip"),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "not_zip"),
    ],
)
def test_not_a_zip(data, code):
    report = check(data, Outcome.CORRUPT, code)
    assert report.members == [] and report.device_certificate is None


def test_truncated_and_trailing_garbage():
    data = build()
    check(data[:-10], Outcome.CORRUPT, "truncated")
    check(data[: len(data) // 2], Outcome.CORRUPT, "truncated")
    check(data + b"garbage", Outcome.CORRUPT, "truncated")


def test_flipped_byte_in_compressed_data_is_bad_crc():
    data = bytearray(build())
    at = member_data_offset(bytes(data), "root-ca.pem") + 40
    data[at] ^= 0x55
    report = check(bytes(data), Outcome.CORRUPT, "bad_crc")
    assert [m.crc_ok for m in report.members if m.name == "root-ca.pem"] == [False]


def test_wrong_declared_crc_is_bad_crc():
    members = replace_member(standard_members(), "network.json", crc=0xDEADBEEF)
    check(write_zip(members), Outcome.CORRUPT, "bad_crc")


def test_stored_member_with_flipped_byte_is_bad_crc():
    members = replace_member(standard_members(), "network.json", method=0)
    data = bytearray(write_zip(members))
    data[member_data_offset(bytes(data), "network.json") + 3] ^= 1
    check(bytes(data), Outcome.CORRUPT, "bad_crc")


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a\\b", "C:/x", "c:x", "a/../../b", "x\x00y", "tab\there"])
def test_unsafe_paths(name):
    members = standard_members(manifest=False) + [Member(name, b"payload")]
    report = check(write_zip(members), Outcome.CORRUPT, "unsafe_path")
    assert [p.member for p in report.problems if p.code == "unsafe_path"] == [name]


def test_symlink_member_is_unsafe():
    members = standard_members(manifest=False) + [Member("link", b"/etc/passwd", mode=0o120777)]
    check(write_zip(members), Outcome.CORRUPT, "unsafe_path")


def test_name_that_is_not_utf8_is_unsafe():
    members = standard_members(manifest=False) + [Member(b"bad-\xff\xfe", b"x", flags=0x800)]
    check(write_zip(members), Outcome.CORRUPT, "unsafe_path")


@pytest.mark.parametrize("dup", ["network.json", "NETWORK.JSON", "Network.Json"])
def test_duplicate_members_exact_and_case_insensitive(dup):
    members = standard_members(manifest=False) + [Member(dup, b'{"Ethernet0": {"ConnectionType": "DHCP"}}')]
    report = check(write_zip(members), Outcome.CORRUPT, "duplicate_member")
    assert [p.member for p in report.problems if p.code == "duplicate_member"] == [dup]


def test_too_many_members_is_refused_before_inflating(monkeypatch):
    members = standard_members(manifest=False) + [Member(f"pad{i}", b"x") for i in range(61)]
    spy = _spy_zlib(monkeypatch)
    report = check(write_zip(members), Outcome.CORRUPT, "too_many_members")
    assert spy.produced == [] and report.members == []
    check(write_zip(members[:64]), Outcome.OK)  # exactly the limit is fine
    check(write_zip(members[:10]), Outcome.CORRUPT, "too_many_members", limits=Limits(max_members=9))


def test_encrypted_flag_is_refused():
    members = replace_member(standard_members(), "private.pem.key", flags=0x1)
    report = check(write_zip(members), Outcome.CORRUPT, "encrypted")
    assert [m.crc_ok for m in report.members if m.name == "private.pem.key"] == [None]


def test_unsupported_compression_is_refused():
    members = replace_member(standard_members(), "network.json", method=12)
    check(write_zip(members), Outcome.CORRUPT, "unsupported_compression")


def test_local_header_disagreeing_with_directory_is_malformed():
    data = bytearray(build())
    at = member_data_offset(bytes(data), "network.json") - len("network.json")
    data[at] = ord("N")  # the local header now names "Network.json"
    check(bytes(data), Outcome.CORRUPT, "malformed")


# ---------------------------------------------------------------- zip bombs


class _Spy:
    def __init__(self) -> None:
        self.produced: list[int] = []


def _spy_zlib(monkeypatch) -> _Spy:
    """Replace the reader's zlib with one that records how many bytes each inflate produced."""
    spy = _Spy()

    class Decompressor:
        def __init__(self, wbits: int) -> None:
            self._d = zlib.decompressobj(wbits)

        def decompress(self, data, max_length=0):
            out = self._d.decompress(data, max_length)
            spy.produced.append(len(out))
            return out

        @property
        def eof(self) -> bool:
            return self._d.eof

    fake = types.SimpleNamespace(decompressobj=Decompressor, crc32=zlib.crc32, error=zlib.error)
    monkeypatch.setattr(zipscan, "zlib", fake)
    return spy


def test_declared_ratio_over_limit_is_refused_before_inflating(monkeypatch):
    raw, crc = zeros_stream(1 << 20)  # 1 MiB (= the size limit) of zeros: ratio ~1000
    members = standard_members(manifest=False) + [Member("padding.bin", raw=raw, crc=crc, size=1 << 20)]
    spy = _spy_zlib(monkeypatch)
    report = check(write_zip(members), Outcome.CORRUPT, "zip_bomb")
    assert spy.produced == []
    assert "ratio" in next(p.message for p in report.problems if p.code == "zip_bomb")


def test_member_and_total_size_limits(monkeypatch):
    raw, crc = zeros_stream(1 << 20)
    spy = _spy_zlib(monkeypatch)
    big = standard_members(manifest=False) + [Member("big.bin", raw=raw, crc=crc, size=(1 << 20) + 1)]
    check(write_zip(big), Outcome.CORRUPT, "zip_bomb", limits=Limits(max_ratio=1e9))
    many = standard_members(manifest=False) + [Member(f"p{i}", raw=raw, crc=crc, size=1 << 20) for i in range(9)]
    report = check(write_zip(many), Outcome.CORRUPT, "zip_bomb", limits=Limits(max_ratio=1e9))
    assert any("in all" in p.message for p in report.problems)
    assert spy.produced == []


def test_small_compressible_member_is_not_a_bomb():
    members = with_manifest(standard_members(manifest=False) + [Member("zeros", bytes(4000))])
    check(write_zip(members), Outcome.OK)


def test_lying_header_is_stopped_at_declared_size_plus_one(monkeypatch):
    raw, crc = zeros_stream(100 << 20)  # really inflates to 100 MiB; declares 1000 bytes
    members = standard_members(manifest=False) + [Member("padding.bin", raw=raw, crc=crc, size=1000)]
    spy = _spy_zlib(monkeypatch)
    report = check(write_zip(members), Outcome.CORRUPT, "zip_bomb")
    assert max(spy.produced) == 1001
    problem = next(p for p in report.problems if p.code == "zip_bomb")
    assert problem.member == "padding.bin" and "lying" in problem.message


def test_overlapping_members_are_a_bomb(monkeypatch):
    members = standard_members(manifest=False)
    raw_len = len(deflate(members[0].data))
    members[0] = Member(**{**members[0].__dict__, "csize": raw_len + 60})  # reaches into the next member
    spy = _spy_zlib(monkeypatch)
    check(write_zip(members), Outcome.CORRUPT, "zip_bomb")
    assert spy.produced == []


@pytest.mark.parametrize("lying", [False, True])
def test_100_mib_bomb_keeps_memory_small(lying):
    raw, crc = zeros_stream(100 << 20)
    declared = 1000 if lying else 100 << 20
    data = write_zip(standard_members(manifest=False) + [Member("padding.bin", raw=raw, crc=crc, size=declared)])
    tracemalloc.start()
    try:
        report = verify_archive(data, now=NOW)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.outcome is Outcome.CORRUPT and "zip_bomb" in report.codes()
    assert peak < 20 << 20, f"peak {peak / 2**20:.1f} MiB"


# ---------------------------------------------------------------- certificates and keys by content


def test_expired_beyond_skew():
    report = check(build(), Outcome.EXPIRED, "expired", now=NOW + LIFETIME + timedelta(seconds=31))
    assert report.seconds_left == -31.0
    assert "expired" in report.summary()


def test_expired_within_skew_is_expired_too():
    """The skew tolerance guards "not yet valid" only: past notAfter on this clock is EXPIRED (issue 12)."""
    report = check(build(), Outcome.EXPIRED, "expired", now=NOW + LIFETIME + timedelta(seconds=29))
    assert "29 s ago" in report.summary() and "expiring" not in report.codes()


def test_expiring_within_margin():
    report = check(build(), Outcome.EXPIRING, "expiring", now=NOW + LIFETIME - timedelta(seconds=59))
    assert report.seconds_left == 59.0
    check(build(), Outcome.OK, now=NOW + LIFETIME - timedelta(seconds=60))  # exactly the margin is enough
    check(build(), Outcome.EXPIRING, "expiring", now=NOW, margin_seconds=301)


def test_not_yet_valid_is_corrupt_with_a_clock_hint():
    report = check(build(Pki.make(issued=NOW + timedelta(minutes=2))), Outcome.CORRUPT, "not_yet_valid")
    problem = next(p for p in report.problems if p.code == "not_yet_valid")
    assert "clock" in problem.hint
    check(build(Pki.make(issued=NOW + timedelta(seconds=30))), Outcome.OK)  # within the skew


def test_naive_now_is_taken_as_utc():
    check(build(), Outcome.OK, now=NOW.replace(tzinfo=None))


def test_key_not_matching_the_certificate():
    members = replace_member(standard_members(), "private.pem.key", data=key_pem(new_key()))
    report = check(write_zip(members[:-1]), Outcome.CORRUPT, "key_mismatch")
    assert report.device_certificate.key_member is None


def test_no_private_key():
    check(write_zip(without(standard_members(), "private.pem.key")), Outcome.CORRUPT, "no_private_key")


def test_encrypted_private_key_is_unreadable():
    members = replace_member(
        standard_members(manifest=False), "private.pem.key", data=key_pem(Pki.make().device_key, password=b"secret")
    )
    report = check(write_zip(members), Outcome.CORRUPT, "key_unreadable")
    assert "no_private_key" not in report.codes()


def test_ca_private_key_in_the_archive():
    pki = Pki.make()
    members = standard_members(pki, manifest=False) + [Member("ca.key", key_pem(pki.ca_key))]
    check(write_zip(members), Outcome.CORRUPT, "ca_private_key")


def test_wrong_ca():
    pki = Pki.make()
    other = Pki.make(ca_label="other-ca")
    members = replace_member(standard_members(pki, manifest=False), "root-ca.pem", data=cert_pem(other.ca_cert))
    report = check(write_zip(members), Outcome.CORRUPT, "chain_broken")
    assert report.device_certificate.chained_to_ca is False
    assert report.ca_certificate.subject == other.ca_cert.subject.rfc4514_string()


def test_ca_with_the_right_name_but_another_key():
    from tests.archive_factory import make_ca

    pki = Pki.make()
    impostor = make_ca(new_key(), "test CA ca")  # same subject as the real CA
    members = replace_member(standard_members(pki, manifest=False), "root-ca.pem", data=cert_pem(impostor))
    report = check(write_zip(members), Outcome.CORRUPT, "chain_broken")
    assert "signature" in next(p.message for p in report.problems if p.code == "chain_broken")


def test_without_ca_the_chain_is_not_judged():
    report = check(write_zip(without(standard_members(), "root-ca.pem")), Outcome.OK)
    assert report.device_certificate.chained_to_ca is None and report.ca_certificate is None


def test_no_certificate_is_unverifiable():
    members = without(standard_members(), "certificate.pem.crt", "root-ca.pem")
    report = check(write_zip(members), Outcome.UNVERIFIABLE, "no_certificate")
    assert report.codes() == ["no_certificate"]  # the orphan key is not judged without certificates


def test_only_a_ca_certificate_is_unverifiable():
    members = without(standard_members(), "certificate.pem.crt", "private.pem.key")
    check(write_zip(members), Outcome.UNVERIFIABLE, "no_device_certificate")


def test_damaged_certificate_pem_is_corrupt():
    members = standard_members(manifest=False)
    pem = members[0].data
    members[0] = Member(members[0].name, pem[:100] + b"!!" + pem[102:])
    check(write_zip(members), Outcome.CORRUPT, "bad_certificate")


def test_der_certificates_and_keys_under_odd_names():
    pki = Pki.make()
    members = with_manifest(
        [
            Member("0001", cert_der(pki.ca_cert)),
            Member("blob", key_der(pki.device_key)),
            Member("x", cert_der(pki.device_cert)),
            Member("network.json", network_bytes()),
        ]
    )
    report = check(write_zip(members), Outcome.OK)
    assert report.device_certificate.member == "x" and report.device_certificate.encoding == "DER"
    assert report.device_certificate.key_member == "blob"
    assert report.ca_certificate.member == "0001" and report.device_certificate.chained_to_ca


def test_several_certificates_in_one_pem_member_and_a_traditional_key():
    pki = Pki.make()
    chain = b"subject=whatever\n" + cert_pem(pki.ca_cert) + b"\n" + cert_pem(pki.device_cert)
    members = with_manifest(
        [
            Member("bundle", chain),
            Member("k", key_pem(pki.device_key, fmt="traditional")),
            Member("network.json", network_bytes()),
        ]
    )
    report = check(write_zip(members), Outcome.OK)
    assert report.device_certificate.member == report.ca_certificate.member == "bundle"
    assert len(report.certificates) == 2


def test_key_and_certificate_in_one_member():
    pki = Pki.make()
    members = with_manifest(
        [
            Member("everything.pem", key_pem(pki.device_key) + cert_pem(pki.device_cert) + cert_pem(pki.ca_cert)),
            Member("network.json", network_bytes()),
        ]
    )
    report = check(write_zip(members), Outcome.OK)
    assert report.device_certificate.key_member == "everything.pem"


def test_device_certificate_preferred_by_its_key():
    pki = Pki.make()
    stranger = Pki.make(device_label="stranger", issued=NOW - timedelta(seconds=10), lifetime=timedelta(days=1))
    members = standard_members(pki, manifest=False) + [Member("zz.pem", cert_pem(stranger.device_cert))]
    report = check(write_zip(members), Outcome.OK)
    assert report.device_certificate.member == "certificate.pem.crt"


def test_too_many_certificates():
    pki = Pki.make()
    members = standard_members(pki, manifest=False) + [Member("many", cert_pem(pki.ca_cert) * 40)]
    check(write_zip(members), Outcome.CORRUPT, "too_many_objects")


def test_unterminated_pem_blocks_do_not_take_quadratic_time():
    junk = b"-----BEGIN CERTIFICATE-----\n" * 35000 + b"-----END X-----"  # ~1 MiB, stored
    members = standard_members(manifest=False) + [Member("junk", junk, method=0)]
    report = check(write_zip(members), Outcome.CORRUPT, "bad_certificate")
    assert report.codes() == ["bad_certificate"]  # once per member, not 35000 times


# ---------------------------------------------------------------- manifest and network.json


def test_manifest_hash_mismatch():
    members = standard_members()
    members[3] = Member("network.json", network_bytes({"Ethernet0": {"ConnectionType": "STATIC_IP"}}))
    report = check(write_zip(members), Outcome.CORRUPT, "manifest_mismatch")
    assert [p.member for p in report.problems] == ["network.json"]


def test_manifest_lists_a_missing_member_and_misses_an_extra_one():
    members = standard_members()
    check(write_zip([m for m in members if m.name != "root-ca.pem"]), Outcome.CORRUPT, "manifest_mismatch")
    report = check(write_zip(members + [Member("extra.txt", b"hi")]), Outcome.CORRUPT, "manifest_mismatch")
    assert [p.member for p in report.problems] == ["extra.txt"]


def test_manifest_that_is_not_json():
    members = standard_members()
    members[-1] = Member("manifest.json", b"{not json")
    check(write_zip(members), Outcome.CORRUPT, "manifest_invalid")


@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b'"text"', b"\xef\xbb\xbf{}", b'{"a": NaN}', b"[" * 100000]
)
def test_bad_network_json(content):
    members = replace_member(standard_members(manifest=False), "network.json", data=content, method=0)
    check(write_zip(members), Outcome.CORRUPT, "network_json_invalid")


def test_missing_network_json_is_only_a_warning():
    report = check(write_zip(without(standard_members(), "network.json")), Outcome.OK, "network_json_missing")
    assert report.problems[0].severity == "warning" and report.network is None


# ---------------------------------------------------------------- names


def test_file_name_helpers():
    assert archive_file_name("cam-01") == "certificates-omni_cam-01.zip"
    assert device_name_from_file_name("certificates-omni_cam_01.zip") == "cam_01"
    assert device_name_from_file_name("/media/stick/certificates-omni_x.zip") == "x"
    for bad in (
        "certificates-omni_.zip",
        "certificates-omni_a.b.zip",
        "CERTIFICATES-OMNI_a.zip",
        "certificates-omni_a.zip.tmp",
        "certificates-omni_a.ZIP",
        "a.zip",
    ):
        assert device_name_from_file_name(bad) is None, bad
    with pytest.raises(InputValidationError):
        archive_file_name("bad name")
    with pytest.raises(InputValidationError):
        archive_file_name("x" * 256)


def test_bad_file_name():
    check(build(), Outcome.CORRUPT, "bad_file_name", file_name="certificates.zip")


def test_file_name_and_device_name_disagree():
    check(build(), Outcome.CORRUPT, "name_mismatch", file_name=archive_file_name("cam-02"), device_name="cam-01")


def test_manifest_names_another_device():
    check(build(), Outcome.CORRUPT, "name_mismatch", file_name=archive_file_name("cam-02"))
    check(build(), Outcome.CORRUPT, "name_mismatch", device_name="cam-02")
    report = check(build(), Outcome.OK)
    assert report.device_name == DEVICE  # learnt from the manifest


# ---------------------------------------------------------------- the report never carries key material


def _key_fingerprints(key) -> list[str]:
    der = key_der(key)
    pem_body = b"".join(key_pem(key).splitlines()[1:-1]).decode()
    return [
        "PRIVATE KEY",
        base64.b64encode(der).decode(),
        der.hex(),
        der.hex().upper(),
        pem_body[:40],
        pem_body[-40:],
        format(key.private_numbers().private_value, "x"),
    ]


@pytest.mark.parametrize("variant", ["pem", "der", "mismatch", "in_network_json", "in_name"])
def test_report_has_no_key_material(variant):
    pki = Pki.make()
    members = standard_members(pki, manifest=False)
    key = pki.device_key
    if variant == "der":
        members[1] = Member("blob", key_der(key))
    elif variant == "mismatch":
        key = new_key()
        members[1] = Member("private.pem.key", key_pem(key))
    elif variant == "in_network_json":
        members[3] = Member("network.json", json.dumps({"Ethernet0": {"key": key_pem(key).decode()}}).encode())
    elif variant == "in_name":
        members.append(Member(key_pem(key).decode().splitlines()[0] + ".txt", b"x"))
    report = verify_archive(write_zip(members), now=NOW)
    text = json.dumps(report.to_dict())
    for needle in _key_fingerprints(key):
        assert needle not in text, needle


# ---------------------------------------------------------------- never raises, never hangs

_VALID = None


def _valid() -> bytes:
    global _VALID
    if _VALID is None:
        _VALID = build()
    return _VALID


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 64)),
)


def _mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, where, arg in ops:
        at = where % (len(buf) + 1)
        if op == "flip" and buf:
            buf[at % len(buf)] ^= arg
        elif op == "truncate":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = arg
        elif op == "delete":
            del buf[at : at + arg]
    return bytes(buf)


@settings(max_examples=400, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_archives_never_raise(ops):
    data = _mutate(_valid(), ops)
    report = verify_archive(data, now=NOW)
    assert report.outcome in set(Outcome)
    json.dumps(report.to_dict())
    if data == _valid():
        assert report.outcome is Outcome.OK


@settings(max_examples=200, deadline=timedelta(seconds=2))
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data):
    report = verify_archive(data, now=NOW)
    assert report.outcome is not Outcome.OK


@settings(max_examples=200, deadline=timedelta(seconds=2))
@given(st.integers(0, 400), st.binary(min_size=1, max_size=40))
def test_mutated_central_directory_never_raises(back, junk):
    data = _valid()
    at = max(0, len(data) - back)
    verify_archive(data[:at] + junk + data[at + len(junk) :], now=NOW)


def test_every_code_has_an_outcome():
    assert set(CODES.values()) <= set(Outcome)
    assert CODES["network_json_missing"] is Outcome.OK


# ---------------------------------------------------------------- the local authority's archives


@pytest.mark.parametrize(
    "defect, outcome, code",
    [
        (None, Outcome.OK, None),
        ("not_zip", Outcome.CORRUPT, "not_zip"),
        ("bad_crc", Outcome.CORRUPT, "bad_crc"),
        ("path_traversal", Outcome.CORRUPT, "unsafe_path"),
        ("zip_bomb", Outcome.CORRUPT, "zip_bomb"),
        ("no_certificate", Outcome.UNVERIFIABLE, "no_certificate"),
        ("duplicate_member", Outcome.CORRUPT, "duplicate_member"),
    ],
)
def test_the_authoritys_archives_and_defects(defect, outcome, code):
    bundle = pytest.importorskip("agent.authority.bundle")
    pki = Pki.make()
    content = bundle.ArchiveContent(
        device_id="device-0123",
        device_name=DEVICE,
        thing_name=f"thing-{DEVICE}",
        cert_pem=cert_pem(pki.device_cert),
        key_pem=key_pem(pki.device_key),
        ca_pem=cert_pem(pki.ca_cert),
        network={"Ethernet0": {"ConnectionType": "DHCP"}},
        created=NOW,
        not_after=pki.device_cert.not_valid_after_utc,
    )
    report = check(
        bundle.build_archive(content, defect), outcome, code, file_name=archive_file_name(DEVICE), device_name=DEVICE
    )
    if defect is None:
        assert report.problems == [] and report.manifest["device_name"] == DEVICE
