"""6. The workstation's clock is wrong: the CLI runs under ``faketime`` (libfaketime, preloaded into
the CLI process and its children) against the served authority in another process, whose clock
is right.  Beyond the tolerance (``stage.skew_seconds``, 30 s) the archive is refused before the
stick is touched, the device is deleted again, and the message names the clock as the cause;
within it the hand-off goes through.
"""

from __future__ import annotations

import shutil

import pytest

from agent.errors import ExitCode
from tests.faults.matrix import Case, Expect, Stick, unique

pytestmark = pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed")


@pytest.mark.parametrize(
    "offset, code, side",
    [
        ("-2m", ExitCode.VERIFY_CORRUPT, "behind"),  # the certificate is not valid yet on this clock
        ("+270", ExitCode.VERIFY_EXPIRING, "ahead of"),  # 30 s of its 5 minutes left on this clock: inside the margin
    ],
)
def test_skewed_clock_is_named_as_the_cause(kit, station, tmp_path, offset, code, side):
    case = Case(kit, station, Stick.fat(tmp_path / "stick.img"), unique("clock"))
    case.stage(prefix=["faketime", "-f", offset])
    learnt = case.check(
        Expect(
            code,
            cause=("this workstation's clock is", f"s {side} the service's"),
            hint=("set the clock right",),
            untouched=True,
        )
    )
    seconds = int(learnt["error"]["message"].split("this workstation's clock is ")[1].split("s ")[0])
    assert abs(seconds - (120 if offset == "-2m" else 270)) <= 3


@pytest.mark.parametrize("offset", ["-20", "+20"])
def test_skew_within_the_tolerance_goes_through(kit, station, tmp_path, offset):
    case = Case(kit, station, Stick.fat(tmp_path / "stick.img"), unique("clock-ok"))
    case.stage(prefix=["faketime", "-f", offset])
    case.check(Expect())
