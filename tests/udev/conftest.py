"""Fixtures for the udev tests: a real systemd-udevd (tests/udev_kit.py) for the root tier."""

from tests.udev_kit import udevd  # noqa: F401 - session fixture
