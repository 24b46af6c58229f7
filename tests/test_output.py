"""An error's details in --json: every value as JSON (times as ISO text, paths as text), never NaN."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from agent.cli.output import dumps
from agent.errors import PanostageError


def test_error_details_are_json_with_their_values_not_their_reprs() -> None:
    error = PanostageError(
        "job failed",
        details={"CreatedTime": datetime(2026, 12, 1, 4, 9, 4, 158000, tzinfo=UTC), "at": Path("/x"), "ratio": 0.5},
    )
    error.details["bad"] = [float("nan"), float("inf")]

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    details = json.loads(dumps(error.to_dict()), parse_constant=refuse)["details"]
    assert details == {"CreatedTime": "2026-12-01T04:09:04.158Z", "at": "/x", "ratio": 0.5, "bad": ["nan", "inf"]}
