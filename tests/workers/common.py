"""Helpers shared by the worker tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from omniq import TaskStatus
from omniq.errors import TaskCancelled


def wait_until(pred: Callable[[], object], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def runner(oq: Any) -> Any:
    """The runner behind an open ``OmniQ``'s worker slots."""
    return oq.core._worker.runner


def cancel_running(handle: Any, within: float) -> None:
    """Cancel a running task; it must end CANCELLED within ``within`` seconds."""
    t0 = time.monotonic()
    assert handle.cancel() is True
    with pytest.raises(TaskCancelled):
        handle.result(timeout=30)
    assert time.monotonic() - t0 < within
    assert handle.status() is TaskStatus.CANCELLED
