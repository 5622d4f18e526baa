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


def wait_for(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition", step: float = 0.02) -> Any:
    """``pred()``'s first truthy value; ``AssertionError`` naming ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def runner(oq: Any) -> Any:
    """The runner behind an open ``OmniQ``'s worker slots."""
    return oq.core.worker.runner


def cancel_running(handle: Any, within: float) -> None:
    """Cancel a running task; it must end CANCELLED within ``within`` seconds."""
    t0 = time.monotonic()
    assert handle.cancel() is True
    with pytest.raises(TaskCancelled):
        handle.result(timeout=30)
    assert time.monotonic() - t0 < within
    assert handle.status() is TaskStatus.CANCELLED
