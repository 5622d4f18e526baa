"""Shared fixtures for the whole suite, and the Hypothesis profiles.

Profiles (``HYPOTHESIS_PROFILE`` picks one; without it ``ci`` when ``CI`` is set, else ``dev``):

- ``ci``: derandomized, so a run tests the same examples every time and no test fails by
  chance; no example database, no deadline, no "too slow" health check (a loaded machine).
- ``dev``: random examples, remembering failures in ``.hypothesis/`` to replay them first.
- ``explore``: random and ten times the examples (``tests.helpers.examples``), for hunting
  bugs: ``HYPOTHESIS_PROFILE=explore uv run pytest -m "not slow"``. A failure it finds becomes
  an ``@example`` of its test.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow]
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=_QUIET)
settings.register_profile("dev", deadline=None, suppress_health_check=_QUIET)
settings.register_profile("explore", deadline=None, suppress_health_check=_QUIET, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def anyio_backend() -> str:
    # asyncio only: the SQLite backend (like aiosqlite) hands results back from its connection
    # thread through asyncio futures, and the sync facade runs an asyncio portal.
    return "asyncio"


def pytest_report_header() -> str:
    return f"hypothesis profile: {settings._current_profile}"
