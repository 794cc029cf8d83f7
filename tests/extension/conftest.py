"""Fixtures for the extension's own tests: the stand-in for Inngest, and nothing of the service.

These tests also run on their own, against the installed wheel at the lowest supported
versions (`make test`, tests/extension/lowest.ini), where the standalone service and its
dependencies (Flask-SQLAlchemy, gunicorn, apispec) are not installed; so nothing here, nor in
the tests beside it, may import `service` or `tests.conftest`.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import inngest_gateway
from tests import clock, standin

# The stand-in's fixtures, shared with the other conftest.
inngest_server = standin.inngest_server
inngest = standin.inngest
stopped_clock = clock.stopped_clock


def pytest_report_header() -> str:
    """Which inngest_gateway and Flask this run tests."""
    return f"inngest_gateway: {inngest_gateway.__file__}; Flask {version('flask')}"


def pytest_configure(config: pytest.Config) -> None:
    """Under TEST_AGAINST_WHEEL (the lowest-version run), the checkout's package is refused."""
    installed = Path(inngest_gateway.__file__).is_relative_to(sys.prefix)
    if os.environ.get("TEST_AGAINST_WHEEL") and not installed:
        raise pytest.UsageError(f"not the installed wheel: {inngest_gateway.__file__}")
