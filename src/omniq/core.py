"""Where ``AsyncOmniQ``, ``OmniQ`` and the task handles have always been imported from.

They live in ``omniq.client`` now, one responsibility per module (see ARCHITECTURE.md):
``orchestrator`` (``AsyncOmniQ``, which wires the components), ``facade`` (``OmniQ``, the sync
facade), ``handles``, ``intake`` (build, validate, buffer, flush), ``waiters`` (futures and
result pickup), ``session`` (what ``open()`` connects), ``checks`` (argument checking); the
janitor, schedules and health run as ``omniq.services``. This module re-exports them.
"""

from __future__ import annotations

from .client.checks import callable_name as _callable_name  # noqa: F401 (executor.py, joblib.py)
from .client.facade import OmniQ
from .client.handles import AsyncTaskHandle, TaskHandle
from .client.intake import run_callback as _run_callback  # noqa: F401 (callback tasks stored before name it)
from .client.orchestrator import AsyncOmniQ
from .client.session import CLOSE_STEP
from .services.health import OVERRUN_WINDOW

__all__ = ["CLOSE_STEP", "OVERRUN_WINDOW", "AsyncOmniQ", "AsyncTaskHandle", "OmniQ", "TaskHandle"]
