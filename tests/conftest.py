"""Shared fixtures for the whole suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # asyncio only: the SQLite backend (like aiosqlite) hands results back from its connection
    # thread through asyncio futures, and the sync facade runs an asyncio portal.
    return "asyncio"
