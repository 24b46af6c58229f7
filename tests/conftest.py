"""Fixtures shared by every test tier."""

from pathlib import Path

import pytest

from tests.authority_kit import authority_server, fresh_authority  # noqa: F401 - fixtures for every tier
from tests.station import Station


@pytest.fixture
def station(tmp_path: Path) -> Station:
    """One staging laptop driven through the real CLI (tests/faults has its own, with a fault kit)."""
    return Station(tmp_path)
