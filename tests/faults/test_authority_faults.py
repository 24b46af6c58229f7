"""5. The authority misbehaves: errors (with and without the work committed), dropped connections,
answers slower than the read timeout, and every malformed archive it can be told to produce.

Faults are set on the shared served authority through its admin API, for one case at a time.
Whatever happens before the archive is verified in memory must leave the stick untouched (not
one byte written) and no device behind; a fault that passes is retried away and the hand-off
ends verified with exactly one device.
"""

from __future__ import annotations

import pytest

from agent.authority.bundle import DEFECTS
from agent.errors import ExitCode
from tests.faults.matrix import Case, Expect, Stick, unique

FAST = {"PANOSTAGE_BACKEND_MAX_ATTEMPTS": "2"}  # two attempts keep the failing cases short


def _run(kit, station, tmp_path, faults, expect: Expect, *, env=None, prefix="auth"):
    case = Case(kit, station, Stick.fat(tmp_path / "stick.img"), unique(prefix))
    case.stage(env={**FAST, **(env or {})}, faults=faults)
    return case, case.check(expect)


REFUSING = [
    # (id, fault rules, exit code, words the message must hold)
    ("500", {"ProvisionDevice": {"error": 500}}, ExitCode.SERVICE, ("InternalServerException",)),
    (
        "500-after-commit",
        {"ProvisionDevice": {"error": 500, "after_commit": True}},
        ExitCode.SERVICE,
        ("InternalServerException",),
    ),
    ("429", {"ProvisionDevice": {"error": 429}}, ExitCode.THROTTLED, ("Throttling",)),
    ("409", {"ProvisionDevice": {"error": 409}}, ExitCode.CONFLICT, ("Conflict",)),
    ("402", {"ProvisionDevice": {"error": 402}}, ExitCode.QUOTA, ("Quota",)),
    ("403", {"ProvisionDevice": {"error": 403}}, ExitCode.ACCESS_DENIED, ("AccessDenied",)),
    (
        "dropped",
        {"ProvisionDevice": {"drop_connection": True}},
        ExitCode.UNREACHABLE,
        ("cannot reach the service", "connection was closed"),
    ),
    (
        "dropped-after-commit",
        {"ProvisionDevice": {"drop_connection": True, "after_commit": True}},
        ExitCode.UNREACHABLE,
        ("cannot reach the service", "connection was closed"),
    ),
    ("list-500", {"ListDevices": {"error": 500}}, ExitCode.SERVICE, ("InternalServerException",)),
]


@pytest.mark.parametrize("faults, code, cause", [r[1:] for r in REFUSING], ids=[r[0] for r in REFUSING])
def test_service_errors_leave_nothing(kit, station, tmp_path, faults, code, cause):
    _run(kit, station, tmp_path, faults, Expect(code, cause=cause, untouched=True))


PASSING = [
    ("500-once", {"ProvisionDevice": {"error": 500, "count": 1}}),
    ("500-after-commit-once", {"ProvisionDevice": {"error": 500, "after_commit": True, "count": 1}}),
    ("429-once", {"ProvisionDevice": {"error": 429, "count": 1}}),
    ("dropped-after-commit-once", {"ProvisionDevice": {"drop_connection": True, "after_commit": True, "count": 1}}),
    ("list-500-once", {"ListDevices": {"error": 500, "count": 1}}),
]


@pytest.mark.parametrize("faults", [r[1] for r in PASSING], ids=[r[0] for r in PASSING])
def test_a_passing_fault_is_retried_away_with_one_device(kit, station, tmp_path, faults):
    _, learnt = _run(kit, station, tmp_path, faults, Expect())
    assert len(learnt["archives"]) == 1  # the only archive that ever left the authority is the one on the stick


#: answers 2.5 s late against a 2 s read timeout: the device shows up 0.5 s after the station
#: stopped waiting, well inside the time it keeps looking (read_timeout) even on a loaded machine
SLOW = {"PANOSTAGE_BACKEND_READ_TIMEOUT": "2"}
LATE = 2500


def test_one_answer_slower_than_the_read_timeout(kit, station, tmp_path):
    """The first answer comes after the read timeout (the device is made all the same): the station
    waits for that device to show up, deletes it, tries again; one device is left - the one on the stick."""
    _run(
        kit,
        station,
        tmp_path,
        {"ProvisionDevice": {"latency_ms": LATE, "count": 1}},
        Expect(),
        env={**SLOW, "PANOSTAGE_BACKEND_MAX_ATTEMPTS": "3"},
    )


def test_every_answer_slower_than_the_read_timeout(kit, station, tmp_path):
    """Every answer comes after the read timeout: the hand-off gives up, and the devices the
    service made after the station stopped waiting are deleted too (also the last attempt's)."""
    _run(
        kit,
        station,
        tmp_path,
        {"ProvisionDevice": {"latency_ms": LATE}},
        Expect(ExitCode.UNREACHABLE, cause=("timeout",), untouched=True),
        env=SLOW,
    )


#: what each malformed archive is refused as (the verification outcome is the exit code)
DEFECT_EXIT = {
    "not_zip": ExitCode.VERIFY_CORRUPT,
    "bad_crc": ExitCode.VERIFY_CORRUPT,
    "path_traversal": ExitCode.VERIFY_CORRUPT,
    "zip_bomb": ExitCode.VERIFY_CORRUPT,
    "no_certificate": ExitCode.VERIFY_UNVERIFIABLE,
    "duplicate_member": ExitCode.VERIFY_CORRUPT,
    "expired_cert": ExitCode.VERIFY_EXPIRED,
    "key_mismatch": ExitCode.VERIFY_CORRUPT,
    "wrong_ca": ExitCode.VERIFY_CORRUPT,
}


def test_every_defect_is_in_the_matrix():
    assert set(DEFECT_EXIT) == set(DEFECTS)


@pytest.mark.parametrize("defect", sorted(DEFECT_EXIT))
def test_malformed_archive_is_refused_before_the_stick(kit, station, tmp_path, defect):
    _, learnt = _run(
        kit,
        station,
        tmp_path,
        {"ProvisionDevice": {"archive": defect}},
        Expect(
            DEFECT_EXIT[defect],
            cause=("received from the service",),
            untouched=True,
            reason=f"archive-{DEFECT_EXIT[defect].name.removeprefix('VERIFY_').lower()}",
        ),
        prefix=f"bad-{defect.replace('_', '-')}",
    )
    assert learnt["archives"], "the relay saw no archive"
