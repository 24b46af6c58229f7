"""Fixtures of the fault matrix: one served authority (behind a recording relay) for the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.matrix import Kit, Station


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    started = Kit.start(tmp_path_factory.mktemp("faults-authority"))
    yield started
    started.stop()


@pytest.fixture
def station(tmp_path: Path, kit: Kit) -> Station:
    return Station(tmp_path / "station", kit)
