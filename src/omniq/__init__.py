"""OmniQ: a task queue for people who work in Jupyter.

``OmniQ`` and friends are imported on first use (PEP 562), so a process worker's child, which
imports ``omniq.workers.child``, starts without loading the orchestrator and its storage drivers.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import AsyncOmniQ, AsyncTaskHandle, OmniQ, TaskHandle
    from .executor import Executor

from .errors import (
    ConfigError,
    OmniQError,
    SerializationError,
    SignatureError,
    StorageError,
    TaskCancelled,
    TaskError,
    TaskExpired,
    TaskNotFound,
    WorkerDied,
)
from .models import (
    ErrorInfo,
    OmniQConfig,
    Schedule,
    TaskDetail,
    TaskEvent,
    TaskResult,
    TaskStatus,
    TaskSummary,
)

__all__ = [
    "AsyncOmniQ",
    "AsyncTaskHandle",
    "ConfigError",
    "ErrorInfo",
    "Executor",
    "OmniQ",
    "OmniQConfig",
    "OmniQError",
    "Schedule",
    "SerializationError",
    "SignatureError",
    "StorageError",
    "TaskCancelled",
    "TaskDetail",
    "TaskError",
    "TaskEvent",
    "TaskExpired",
    "TaskHandle",
    "TaskNotFound",
    "TaskResult",
    "TaskStatus",
    "TaskSummary",
    "WorkerDied",
]


_LAZY = {"OmniQ", "AsyncOmniQ", "TaskHandle", "AsyncTaskHandle"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import core

        return getattr(core, name)
    if name == "Executor":
        from .executor import Executor

        return Executor
    raise AttributeError(f"module 'omniq' has no attribute {name!r}")


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext omniq``: register ``%omniq`` / ``%%omniq``. Imported here, on demand, so a
    plain ``import omniq`` (or a worker) never loads IPython."""
    from .notebook.magics import load_ipython_extension as load

    load(ip)
    try:  # joblib.Parallel / scikit-learn's n_jobs on OmniQ: backend "omniq"
        from .joblib import register
    except ImportError:  # joblib is not installed
        return
    register()


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext omniq``: unhook the magics and close the kernel's OmniQ."""
    from .notebook.magics import unload_ipython_extension as unload

    unload(ip)
