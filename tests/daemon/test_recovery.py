"""Recovery from a crash at each persisted state: real authority (embedded), real SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.aws.backend import open_backend
from agent.aws.provisioning import tagged
from agent.clock import SystemClock
from agent.config import load
from agent.daemon.recovery import recover
from agent.handoff_log import HandoffLog
from agent.state import StateDB


@pytest.fixture
def world(tmp_path):
    settings = load(
        env={
            "HOME": str(tmp_path),
            "PANOSTAGE_SYSTEM_CONFIG": str(tmp_path / "none"),
            "PANOSTAGE_PATHS_STATE_DIR": str(tmp_path / "state"),
            "PANOSTAGE_AUTHORITY_JOB_STEP_SECONDS": "0",
        }
    ).settings
    backend = open_backend(settings)
    state = StateDB(tmp_path / "state")
    log = HandoffLog(tmp_path / "state")
    yield backend, state, log
    backend.close()


def live(backend, name):
    from agent.aws.provisioning import devices_named

    return [d for d in devices_named(backend.panorama(), name) if d["ProvisioningStatus"] != "DELETING"]


def crashed(state, backend, name, at_state, *, record_id=True):
    """A plan entry and a hand-off interrupted at ``at_state``; the device exists when it got that far."""
    [entry_id] = state.add_entries([(name, {"Name": name}, {})])
    handoff_id = state.new_id()
    assert state.claim_next(handoff_id)["id"] == entry_id
    state.new_handoff(
        handoff_id=handoff_id, plan_id=entry_id, device_name=name, stick_identity="fs:1234-ABCD", stick={}
    )
    device_id = None
    if at_state != "claimed":
        started = SystemClock().now()
        state.update_handoff(handoff_id, "provisioning", provision_started_at=started, device_name=name)
        # the call went out before the crash, tagged as the Stager tags it
        device_id = backend.panorama().provision_device(**tagged({"Name": name}, "t", handoff_id))["DeviceId"]
        if at_state != "provisioning":
            state.update_handoff(handoff_id, at_state, device_id=device_id if record_id else None)
    return entry_id, handoff_id, device_id


@pytest.mark.parametrize("at_state", ["claimed", "provisioning", "provisioned", "writing", "written", "verified"])
def test_each_interrupted_state_leaves_no_orphan_and_requeues(world, at_state):
    backend, state, log = world
    entry_id, handoff_id, device_id = crashed(state, backend, f"rec-{at_state}", at_state)
    done = recover(state, backend, log, SystemClock(), station="t", operator="t", max_attempts=3)
    assert live(backend, f"rec-{at_state}") == []
    assert state.entry(entry_id)["status"] == "pending"
    assert state.handoff(handoff_id)["state"] == "recovered"
    assert [a["devices_deleted"] for a in done] == [[device_id] if device_id else []]
    [record] = [r for r in log.records() if r["kind"] == "recovery"]
    assert record["interrupted_state"] == at_state and record["device"]["name"] == f"rec-{at_state}"
    assert log.verify().ok
    assert recover(state, backend, log, SystemClock(), station="t", operator="t", max_attempts=3) == []  # idempotent


def test_device_found_by_name_and_time_when_the_id_was_never_recorded(world):
    backend, state, log = world
    older = backend.panorama().provision_device(Name="rec-old")["DeviceId"]  # someone else's, from before
    [entry_id] = state.add_entries([("rec-old", {"Name": "rec-old"}, {})])
    handoff_id = state.new_id()
    state.claim_next(handoff_id)
    state.new_handoff(handoff_id=handoff_id, plan_id=entry_id, device_name="rec-old", stick_identity=None, stick={})
    started = SystemClock().now() + timedelta(seconds=31)  # our attempt began well after `older` was created
    state.update_handoff(handoff_id, "provisioning", provision_started_at=started, device_name="rec-old")
    [action] = recover(state, backend, log, SystemClock(), station="t", operator="t", max_attempts=3)
    assert action["devices_deleted"] == []
    assert [d["DeviceId"] for d in live(backend, "rec-old")] == [older]


def test_another_stations_device_of_the_name_made_meanwhile_is_never_deleted(world):
    """Station B provisions the name while station A crashed in ProvisionDevice: A's recovery finds a device of
    that name made after its attempt began, and leaves it - the tag says whose it is."""
    backend, state, log = world
    _entry_id, _handoff_id, mine = crashed(state, backend, "rec-shared", "provisioning")
    backend.panorama().delete_device(DeviceId=mine)  # ours never got made, say; B's did, just now
    theirs = backend.panorama().provision_device(**tagged({"Name": "rec-shared"}, "van", "b-handoff"))["DeviceId"]
    [action] = recover(state, backend, log, SystemClock(), station="t", operator="t", max_attempts=3)
    assert action["devices_deleted"] == []
    assert [d["DeviceId"] for d in live(backend, "rec-shared")] == [theirs]


def test_a_request_with_no_room_for_our_tags_is_still_recovered(world):
    """49 tags of its own: the request went out untagged, so its device is known by having no hand-off tag."""
    backend, state, log = world
    request = {"Name": "rec-tags", "Tags": {f"k{i}": "v" for i in range(49)}}
    [entry_id] = state.add_entries([("rec-tags", request, {})])
    handoff_id = state.new_id()
    state.claim_next(handoff_id)
    state.new_handoff(handoff_id=handoff_id, plan_id=entry_id, device_name="rec-tags", stick_identity=None, stick={})
    state.update_handoff(handoff_id, "provisioning", provision_started_at=SystemClock().now(), device_name="rec-tags")
    made = backend.panorama().provision_device(**tagged(request, "t", handoff_id))["DeviceId"]  # untagged: no room
    [action] = recover(state, backend, log, SystemClock(), station="t", operator="t", max_attempts=3)
    assert action["devices_deleted"] == [made] and live(backend, "rec-tags") == []


def test_too_many_interruptions_need_attention(world):
    backend, state, log = world
    entry_id, _, _ = crashed(state, backend, "rec-many", "written")
    state.set_entry(entry_id, attempts=3)
    recover(state, backend, log, SystemClock(), station="t", operator="t", max_attempts=3)
    assert state.entry(entry_id)["status"] == "attention"
