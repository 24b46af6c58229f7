"""The follow-up after the stick: bulk look-ups, back-off, the horizon, one thread for the daemon's life.

Real embedded authority over HTTP, real botocore (its event hooks count the calls that went out),
real SQLite.  Only the monotonic clock the back-off reads is a test's own (a seam of FollowUp).
"""

from __future__ import annotations

import threading
from collections import Counter
from types import SimpleNamespace

import pytest

from agent.authority.claim import build_claim, post_claim
from agent.aws.backend import open_backend
from agent.clock import SystemClock
from agent.config import load
from agent.daemon.followup import FollowUp, FollowUpThread
from agent.state import StateDB
from tests.authority.test_archive import find_certificates, members, split
from tests.helpers import wait_until

BASE, CAP = 10.0, 80.0


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path):
    settings = load(
        env={
            "HOME": str(tmp_path),
            "PANOSTAGE_SYSTEM_CONFIG": str(tmp_path / "none"),
            "PANOSTAGE_PATHS_STATE_DIR": str(tmp_path / "state"),
            "PANOSTAGE_AUTHORITY_JOB_STEP_SECONDS": "0",
            "PANOSTAGE_DAEMON_POLL_SECONDS": str(BASE),
            "PANOSTAGE_DAEMON_POLL_MAX_SECONDS": str(CAP),
        }
    ).settings
    backend = open_backend(settings)
    state = StateDB(tmp_path / "state")
    calls: Counter[str] = Counter()
    client = backend.panorama()
    client.meta.events.register("before-call.panorama.*", lambda model, **_: calls.update([model.name]))
    ticks = Ticks()
    ctx = SimpleNamespace(settings=settings, state=state, backend=backend, clock=SystemClock())
    yield SimpleNamespace(
        ctx=ctx,
        state=state,
        client=client,
        calls=calls,
        ticks=ticks,
        backend=backend,
        followup=FollowUp(ctx, monotonic=ticks),
    )
    state.close()
    backend.close()


def staged(world, count: int, prefix: str = "fu") -> list[dict]:
    """``count`` plan entries staged on real devices; returns [{id, name, device_id, certificates}]."""
    names = [f"{prefix}-{n:03d}" for n in range(count)]
    ids = world.state.add_entries([(name, {"Name": name}, {}) for name in names])
    out = []
    for entry_id, name in zip(ids, names):
        answer = world.client.provision_device(Name=name)
        world.state.set_entry(entry_id, status="staged", device_id=answer["DeviceId"])
        out.append({"id": entry_id, "name": name, "device_id": answer["DeviceId"], "archive": answer["Certificates"]})
    world.calls.clear()
    return out


def come_online(world, device: dict) -> None:
    """The appliance registers with the archive's certificate and key (the real claim)."""
    from cryptography.hazmat.primitives import serialization

    files = members(device["archive"])
    cert, _ = split(find_certificates(files))
    key = next(d for d in files.values() if b"PRIVATE KEY" in d)
    post_claim(
        world.backend.endpoint_url,
        build_claim(device["device_id"], cert.public_bytes(serialization.Encoding.PEM), key, SystemClock().now()),
    )


def test_a_pass_over_many_waiting_devices_lists_them_in_bulk(world):
    staged(world, 60)
    assert world.followup.run_once() is False
    # 60 waiting devices: three pages of AWAITING_PROVISIONING, one (empty) of PENDING - no DescribeDevice
    assert world.calls == Counter({"ListDevices": 4})
    assert {e["status"] for e in world.state.plan()} == {"staged"}


def test_only_a_device_that_left_the_waiting_list_is_described(world):
    devices = staged(world, 30)
    come_online(world, devices[7])
    world.client.delete_device(DeviceId=devices[11]["device_id"])
    world.calls.clear()
    assert world.followup.run_once() is True
    assert world.calls["DescribeDevice"] == 2, world.calls
    by_name = {e["name"]: e for e in world.state.plan()}
    assert by_name[devices[7]["name"]]["status"] == "done"  # online, and no actions asked for
    assert by_name[devices[11]["name"]]["status"] == "pending"
    assert "no longer exists" in by_name[devices[11]["name"]]["last_error"]
    assert sum(e["status"] == "staged" for e in by_name.values()) == 28


def test_the_wait_doubles_while_nothing_changes_and_a_kick_shortens_it(world):
    staged(world, 3)
    followup, ticks = world.followup, world.ticks
    assert followup.next_due == ticks.now + BASE  # the first pass finds out what there is
    waits = []
    for _ in range(6):
        ticks.now = followup.next_due
        world.calls.clear()
        followup.run_due()
        assert world.calls["ListDevices"] == 2  # each pass is due, and runs
        waits.append(followup.next_due - ticks.now)
    assert waits == [2 * BASE, 4 * BASE, CAP, CAP, CAP, CAP]  # the start counts as a change: then doubling
    ticks.now += 1
    world.calls.clear()
    followup.run_due()  # not due: asks nothing
    assert world.calls == Counter()
    followup.kick()  # a new hand-off
    assert followup.next_due == ticks.now + BASE
    ticks.now = followup.next_due
    followup.run_due()
    assert followup.next_due - ticks.now == 2 * BASE  # nothing changed since the kick: doubling again


def test_nothing_to_follow_means_no_pass_is_due(world):
    assert world.followup.run_once() is False
    assert world.followup.next_due is None
    assert world.calls == Counter()


def test_an_entry_past_the_horizon_needs_attention_and_is_no_longer_followed(world, monkeypatch):
    [device] = staged(world, 1)
    monkeypatch.setattr(world.ctx, "clock", SystemClock(offset_seconds=73 * 3600))
    assert world.followup.run_once() is True
    entry = world.state.entry(device["id"])
    assert entry["status"] == "attention"
    assert "has not come online 72 h after its last change" in entry["last_error"]
    assert "plan retry" in entry["last_error"]
    assert world.followup.next_due is None


def test_post_provision_jobs_run_to_done_each_on_its_own_wait(world):
    [device] = staged(world, 1)
    world.state.set_entry(device["id"], actions='{"reboot": true}')
    come_online(world, device)
    followup, ticks = world.followup, world.ticks
    for _ in range(20):
        ticks.now = followup.next_due if followup.next_due is not None else ticks.now
        followup.run_due()
        if world.state.entry(device["id"])["status"] == "done":
            break
    assert world.state.entry(device["id"])["status"] == "done"
    assert world.calls["CreateJobForDevices"] == 1
    assert followup.next_due is None and followup.jobs == {} and followup.job_status == {}


def _follow_until_settled(world, entry_id: int) -> str:
    followup, ticks = world.followup, world.ticks
    for _ in range(20):
        ticks.now = followup.next_due if followup.next_due is not None else ticks.now
        followup.run_due()
        status = world.state.entry(entry_id)["status"]
        if status in ("done", "attention"):
            return status
    return world.state.entry(entry_id)["status"]


def test_a_major_ota_the_entry_does_not_allow_is_never_made_and_needs_attention(world):
    """The service would accept it and fail it without a reason: asked first, as `job ota` does."""
    [device] = staged(world, 1)
    world.state.set_entry(device["id"], actions='{"ota": {"image_version": "99.0.0"}, "reboot": true}')
    come_online(world, device)
    assert _follow_until_settled(world, device["id"]) == "attention"
    entry = world.state.entry(device["id"])
    assert "major version update" in entry["last_error"] and "--allow-major" in entry["last_error"]
    assert world.calls["CreateJobForDevices"] == 0  # neither the OTA nor the reboot after it

    [allowed] = staged(world, 1, prefix="fu-allowed")
    world.state.set_entry(allowed["id"], actions='{"ota": {"image_version": "99.0.0", "allow_major": true}}')
    come_online(world, allowed)
    assert _follow_until_settled(world, allowed["id"]) == "done"  # the control: allowed, it runs
    assert world.calls["CreateJobForDevices"] == 1


class Gate(threading.Event):
    """The daemon's ``quiet`` event, telling the test when a pass has come to wait on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.set()
        return super().wait(timeout)


def database_handles() -> int:
    import os

    return sum(
        os.readlink(f"/proc/self/fd/{fd}").endswith(("panostage.sqlite3", "panostage.sqlite3-wal"))
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


def test_the_thread_runs_passes_on_request_and_closes_its_connection(world, tmp_path):
    staged(world, 2)
    world.state.close()  # this thread's connection: only the follow-up thread's remains to be seen
    assert database_handles() == 0
    world.followup.quiet = gate = Gate()  # a stick is being handled: the pass waits for it
    ended = threading.Event()
    runner = FollowUpThread(world.followup, on_pass_end=ended.set).start()
    world.ticks.now = world.followup.next_due
    runner.run_pass()
    wait_until(gate.waited.is_set, timeout=30, what="the pass to reach the stick gate")
    assert not ended.is_set() and world.calls["ListDevices"] == 0  # the stick goes first
    world.followup.quiet.set()
    wait_until(ended.is_set, timeout=30, what="the pass to end")
    assert not runner.running and world.calls["ListDevices"] == 2
    assert database_handles() == 2  # its own connection: the database and its WAL
    runner.stop(10)
    assert not runner._thread.is_alive()
    assert database_handles() == 0


def test_an_entry_the_service_refuses_every_pass_still_reaches_the_horizon(world, monkeypatch):
    [device] = staged(world, 1)
    world.state.set_entry(device["id"], actions='{"reboot": true}', status="provisioned")
    come_online(world, device)
    world.client.delete_device(DeviceId=device["device_id"])  # every CreateJobForDevices: ResourceNotFound
    world.followup.run_once()
    assert world.state.entry(device["id"])["status"] == "provisioned"  # within the horizon: asked again
    monkeypatch.setattr(world.ctx, "clock", SystemClock(offset_seconds=73 * 3600))
    world.followup.run_once()
    entry = world.state.entry(device["id"])
    assert entry["status"] == "attention" and "failed at every try" in entry["last_error"]
    assert world.followup.next_due is None


def test_one_unreadable_entry_does_not_stop_the_pass(world):
    devices = staged(world, 3)
    come_online(world, devices[2])
    with world.state.transaction() as db:  # a row edited by hand: unreadable
        db.execute("UPDATE plan SET updated_at = 'not a time' WHERE id = ?", (devices[0]["id"],))
    world.followup.run_once()
    assert world.state.entry(devices[2]["id"])["status"] == "done"
    assert world.state.entry(devices[0]["id"])["status"] == "staged"


def test_a_cap_below_the_first_wait_never_shrinks_the_wait():
    from agent.daemon.followup import Backoff

    backoff = Backoff(600.0, 10.0)
    backoff.soon(0.0)
    waits = []
    for _ in range(3):
        now = backoff.due
        backoff.after(False, now)
        waits.append(backoff.due - now)
    assert waits == [600.0, 600.0, 600.0]
    backoff.due = 50.0  # overdue at 100: a kick keeps it due now, not later
    backoff.soon(100.0)
    assert backoff.due == 50.0
