"""Fixtures shared by every test tier."""

from tests.authority_kit import authority_server, fresh_authority  # noqa: F401 - fixtures for every tier
