"""OmniQ: a task queue for people who work in Jupyter."""

from .errors import (
    ConfigError,
    OmniQError,
    SerializationError,
    SignatureError,
    StorageError,
    TaskCancelled,
    TaskError,
    TaskExpired,
    WorkerDied,
)
from .models import ErrorInfo, OmniQConfig, Schedule, TaskEvent, TaskResult, TaskStatus

__all__ = [
    "ConfigError",
    "ErrorInfo",
    "OmniQConfig",
    "OmniQError",
    "Schedule",
    "SerializationError",
    "SignatureError",
    "StorageError",
    "TaskCancelled",
    "TaskError",
    "TaskEvent",
    "TaskExpired",
    "TaskResult",
    "TaskStatus",
    "WorkerDied",
]
