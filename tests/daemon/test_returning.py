"""What the daemon does with what a stick already holds (plain code)."""

import pytest

from agent.daemon.returning import StickFacts, Verdict, judge

DEFAULTS = {"returned_logs": "collect-wipe", "expired_return": "restage"}


def archive(outcome: str, status: str | None, count: int = 1) -> StickFacts:
    return StickFacts(
        has_logs=False,
        archive="certificates-omni_cam-1.zip",
        archive_count=count,
        archive_outcome=outcome,
        device_status=status,
        device_known=status is not None,
    )


@pytest.mark.parametrize(
    ("facts", "settings", "verdict"),
    [
        (StickFacts(has_logs=False), {}, Verdict.STAGE),
        (StickFacts(has_logs=True), {}, Verdict.RETURN_TRIP),
        (StickFacts(has_logs=True), {"returned_logs": "collect"}, Verdict.RETURN_TRIP),
        (StickFacts(has_logs=True), {"returned_logs": "leave"}, Verdict.LEAVE),
        (archive("ok", "AWAITING_PROVISIONING"), {}, Verdict.LEAVE),
        (archive("expiring", "AWAITING_PROVISIONING"), {}, Verdict.LEAVE),
        (archive("expired", "AWAITING_PROVISIONING"), {}, Verdict.RESTAGE),
        (archive("expired", "AWAITING_PROVISIONING"), {"expired_return": "leave"}, Verdict.LEAVE),
        (archive("expired", "SUCCEEDED"), {}, Verdict.STAGE),
        (archive("corrupt", "AWAITING_PROVISIONING"), {}, Verdict.STAGE),
        (archive("ok", None), {}, Verdict.WIPE_THEN_STAGE),  # its device was deleted: garbage
        (archive("ok", "DELETING"), {}, Verdict.WIPE_THEN_STAGE),
        (archive("ok", "AWAITING_PROVISIONING", count=2), {}, Verdict.LEAVE),
    ],
)
def test_verdicts(facts, settings, verdict):
    got, why = judge(facts, **{**DEFAULTS, **settings})
    assert got is verdict
    assert why
