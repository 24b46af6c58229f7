"""The configuration archive: real certificates, and each malformed kind really malformed."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.authority.test_operations import NETWORK
from tests.authority_kit import unique


def members(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def find_certificates(files: dict[str, bytes]) -> list[x509.Certificate]:
    """Certificates found by content, whatever the member names."""
    found = []
    for data in files.values():
        if b"-----BEGIN CERTIFICATE-----" in data:
            found += x509.load_pem_x509_certificates(data)
    return found


def find_key(files: dict[str, bytes]) -> ec.EllipticCurvePrivateKey:
    (data,) = [d for d in files.values() if b"PRIVATE KEY-----" in d]
    key = serialization.load_pem_private_key(data, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert pkcs8.strip() in data  # PKCS8, unencrypted (not the traditional "EC" form)
    return key


def split(certs: list[x509.Certificate]) -> tuple[x509.Certificate, x509.Certificate]:
    """(device certificate, CA certificate)."""
    (ca,) = [c for c in certs if c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca]
    (device,) = [c for c in certs if c is not ca]
    return device, ca


def authority_ca(server) -> x509.Certificate:
    return x509.load_pem_x509_certificate((server.state_dir / "ca.pem").read_bytes())


@pytest.fixture
def faults(authority_server):
    yield authority_server.admin
    authority_server.admin.clear_faults()


def provision_with(server, admin, kind: str) -> dict:
    admin.set_fault("ProvisionDevice", archive=kind, count=1)
    return server.client().provision_device(Name=unique(kind.replace("_", "-")), NetworkingConfiguration=NETWORK)


def test_archive_holds_a_real_certificate_chain_key_and_network(authority_server):
    out = authority_server.client().provision_device(Name=unique(), NetworkingConfiguration=NETWORK)
    files = members(out["Certificates"])
    assert zipfile.ZipFile(io.BytesIO(out["Certificates"])).testzip() is None
    assert all(
        i.compress_type == zipfile.ZIP_DEFLATED for i in zipfile.ZipFile(io.BytesIO(out["Certificates"])).infolist()
    )
    device, ca = split(find_certificates(files))
    assert ca.fingerprint(ca.signature_hash_algorithm) == authority_ca(authority_server).fingerprint(
        ca.signature_hash_algorithm
    )
    device.verify_directly_issued_by(authority_ca(authority_server))
    assert device.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == out["IotThingName"]
    assert isinstance(device.public_key(), ec.EllipticCurvePublicKey)
    assert device.public_key().public_numbers() == find_key(files).public_key().public_numbers()
    assert device.not_valid_after_utc - device.not_valid_before_utc == timedelta(seconds=300)
    assert abs(device.not_valid_before_utc - datetime.now(UTC)) < timedelta(seconds=30)
    assert json.loads(files["network.json"]) == NETWORK
    manifest = json.loads(files["manifest.json"])
    assert manifest["device_id"] == out["DeviceId"] and manifest["iot_thing_name"] == out["IotThingName"]
    for entry in manifest["members"]:
        assert hashlib.sha256(files[entry["name"]]).hexdigest() == entry["sha256"]
    assert {e["name"] for e in manifest["members"]} == set(files) - {"manifest.json"}


def test_network_json_is_empty_object_without_configuration_and_keys_are_fresh(authority_server):
    pan = authority_server.client()
    a = members(pan.provision_device(Name=unique())["Certificates"])
    b = members(pan.provision_device(Name=unique())["Certificates"])
    assert json.loads(a["network.json"]) == {}
    assert find_key(a).private_numbers() != find_key(b).private_numbers()
    assert split(find_certificates(a))[0].serial_number != split(find_certificates(b))[0].serial_number


def test_validity_follows_configuration(fresh_authority):
    server = fresh_authority(args=["--cert-validity-seconds", "120"])
    device, _ = split(find_certificates(members(server.client().provision_device(Name="v")["Certificates"])))
    assert device.not_valid_after_utc - device.not_valid_before_utc == timedelta(seconds=120)


def test_not_zip(authority_server, faults):
    out = provision_with(authority_server, faults, "not_zip")
    assert not zipfile.is_zipfile(io.BytesIO(out["Certificates"]))
    # the device exists all the same (only the archive is broken)
    assert (
        authority_server.client().describe_device(DeviceId=out["DeviceId"])["ProvisioningStatus"]
        == "AWAITING_PROVISIONING"
    )


def test_bad_crc(authority_server, faults):
    archive = provision_with(authority_server, faults, "bad_crc")["Certificates"]
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        bad = zf.testzip()
        assert bad is not None
        with pytest.raises(zipfile.BadZipFile, match="CRC"):
            zf.read(bad)


def test_expired_cert(authority_server, faults):
    files = members(provision_with(authority_server, faults, "expired_cert")["Certificates"])
    device, _ = split(find_certificates(files))
    assert device.not_valid_after_utc < datetime.now(UTC)
    assert device.not_valid_after_utc - device.not_valid_before_utc == timedelta(seconds=300)
    device.verify_directly_issued_by(authority_ca(authority_server))
    assert device.public_key().public_numbers() == find_key(files).public_key().public_numbers()


def test_key_mismatch(authority_server, faults):
    files = members(provision_with(authority_server, faults, "key_mismatch")["Certificates"])
    device, _ = split(find_certificates(files))
    assert device.public_key().public_numbers() != find_key(files).public_key().public_numbers()
    device.verify_directly_issued_by(authority_ca(authority_server))


def test_path_traversal(authority_server, faults):
    names = list(members(provision_with(authority_server, faults, "path_traversal")["Certificates"]))
    assert any(".." in name.split("/") for name in names)


def test_zip_bomb(authority_server, faults):
    archive = provision_with(authority_server, faults, "zip_bomb")["Certificates"]
    assert len(archive) < 1024 * 1024
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        (bomb,) = [i for i in zf.infolist() if i.file_size > 100 * 1024 * 1024]
        assert bomb.file_size / bomb.compress_size > 500
        # it really inflates that far (counted while streaming, never held in memory)
        total = 0
        with zf.open(bomb) as stream:
            while chunk := stream.read(4 * 1024 * 1024):
                total += len(chunk)
        assert total == bomb.file_size > 100 * 1024 * 1024


def test_no_certificate(authority_server, faults):
    files = members(provision_with(authority_server, faults, "no_certificate")["Certificates"])
    assert find_certificates(files) == []
    for data in files.values():  # nor a DER certificate under another guise
        with pytest.raises(ValueError):
            x509.load_der_x509_certificate(data)


def test_duplicate_member(authority_server, faults):
    archive = provision_with(authority_server, faults, "duplicate_member")["Certificates"]
    names = zipfile.ZipFile(io.BytesIO(archive)).namelist()
    assert len(names) != len(set(names))


def test_wrong_ca(authority_server, faults):
    files = members(provision_with(authority_server, faults, "wrong_ca")["Certificates"])
    device, ca = split(find_certificates(files))
    assert ca.public_key().public_numbers() == authority_ca(authority_server).public_key().public_numbers()
    with pytest.raises((ValueError, InvalidSignature)):
        device.verify_directly_issued_by(authority_ca(authority_server))
    assert device.public_key().public_numbers() == find_key(files).public_key().public_numbers()


def test_private_keys_never_reach_the_state_dir(fresh_authority):
    server = fresh_authority()
    pan = server.client()
    secrets = []
    for i in range(5):
        out = pan.provision_device(Name=f"secret-{i}", NetworkingConfiguration=NETWORK)
        files = members(out["Certificates"])
        key = find_key(files)
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        pem = next(d for d in files.values() if b"PRIVATE KEY" in d)
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        raw_zip = out["Certificates"]
        secrets += [pem, pem.splitlines()[1], der, scalar, raw_zip[:64], raw_zip[-200:-100], zlib.compress(pem)[2:40]]
    pan.list_devices()
    assert server.stop() == 0
    stored = [p for p in server.state_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".sqlite3") for p in stored)
    if server.stderr_path:
        stored.append(server.stderr_path)
    for path in stored:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{path.name} holds key or archive material"
