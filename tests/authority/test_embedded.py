"""The in-process authority (the default backend), its injectable clock, and the store's schema."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from agent.authority.embedded import start_embedded
from agent.authority.store import DB_FILE, StateError, Store
from agent.aws.model import new_botocore_session
from agent.clock import ManualClock
from agent.config import AuthoritySettings
from tests.authority_kit import _wire_problems


def client(authority, *, key: str | None = None, secret: str | None = None, region: str = "us-west-2"):
    session = boto3.Session(
        botocore_session=new_botocore_session(),
        region_name=region,
        aws_access_key_id=key or authority.access_key_id,
        aws_secret_access_key=secret or authority.secret_access_key,
    )
    return session.client(
        "panorama",
        endpoint_url=authority.endpoint_url,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


def test_embedded_authority_with_an_injected_clock(tmp_path):
    clock = ManualClock(datetime.now(UTC))
    authority = start_embedded(
        AuthoritySettings(job_step_seconds=60), tmp_path / "auth", region="us-west-2", clock=clock
    )
    try:
        assert authority.endpoint_url.startswith("http://127.0.0.1:")
        assert authority.access_key_id.startswith("AKPS") and len(authority.secret_access_key) == 40
        pan = client(authority)
        device = pan.provision_device(Name="embedded")
        assert device["Arn"].startswith("arn:aws:panorama:us-west-2:")
        pan.delete_device(DeviceId=device["DeviceId"])
        assert pan.describe_device(DeviceId=device["DeviceId"])["ProvisioningStatus"] == "DELETING"
        clock.advance(60)  # the injected clock drives the lifecycle
        with pytest.raises(ClientError):
            pan.describe_device(DeviceId=device["DeviceId"])
    finally:
        authority.stop()
    authority.stop()  # idempotent
    with pytest.raises(EndpointConnectionError):
        pan.list_devices()
    # the credentials lived in memory only
    for path in (tmp_path / "auth").rglob("*"):
        if path.is_file():
            assert authority.secret_access_key.encode() not in path.read_bytes()


def test_each_embedded_start_has_fresh_credentials_but_one_state(tmp_path):
    first = start_embedded(AuthoritySettings(), tmp_path, region="us-west-2")
    try:
        device = client(first).provision_device(Name="kept")["DeviceId"]
    finally:
        first.stop()
    second = start_embedded(AuthoritySettings(), tmp_path, region="us-west-2")
    try:
        assert second.access_key_id != first.access_key_id
        assert client(second).describe_device(DeviceId=device)["Name"] == "kept"
        with pytest.raises(ClientError) as exc:  # the first start's credentials died with it
            client(second, key=first.access_key_id, secret=first.secret_access_key).list_devices()
        assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"
    finally:
        second.stop()


def test_embedded_authority_takes_its_commands_region_and_the_configured_ones(tmp_path):
    authority = start_embedded(AuthoritySettings(regions=("eu-west-1",)), tmp_path, region="us-west-2")
    try:
        for region in ("us-west-2", "eu-west-1"):
            assert client(authority, region=region).list_devices()["Devices"] == []
        with pytest.raises(ClientError) as exc:
            client(authority, region="ap-south-1").list_devices()
        assert exc.value.response["Error"] == {
            "Code": "InvalidSignatureException",
            "Message": "Credential should be scoped to a valid region. ",
        }
    finally:
        authority.stop()


def test_store_refuses_a_newer_schema(tmp_path):
    Store(tmp_path, now=0.0).close()
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StateError, match="schema version 99"):
        Store(tmp_path, now=0.0)


def test_store_seeds_three_managed_devices_once(tmp_path):
    ids = [r["device_id"] for r in Store(tmp_path, now=0.0).managed_devices()]
    assert len(ids) == 3 and all(i.startswith("smd-") and len(i) == 28 and i[4:].isalnum() for i in ids)
    assert [r["device_id"] for r in Store(tmp_path, now=5.0).managed_devices()] == ids


def test_wire_check_catches_off_model_answers():
    shape = new_botocore_session().get_service_model("panorama").operation_model("DescribeDevice").output_shape
    assert list(_wire_problems(shape, {"Name": "x", "CreatedTime": 1.5}, "D")) == []
    assert list(_wire_problems(shape, {"Nmae": "x"}, "D"))
    assert list(_wire_problems(shape, {"CreatedTime": "2026-01-01"}, "D"))
    assert list(_wire_problems(shape, {"ProvisioningStatus": "SOMETHING"}, "D"))
