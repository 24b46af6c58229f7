"""Fixtures for the stick tests (helpers live in :mod:`tests.fat_kit`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fat_kit import make_image


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A fresh 64 MiB FAT32 image."""
    return make_image(tmp_path / "stick.img", 32)
