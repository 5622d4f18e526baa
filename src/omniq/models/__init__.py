"""Data carried between the API, storage and workers, as msgspec Structs."""

from .config import OmniQConfig
from .event import EventType, TaskEvent
from .result import ErrorInfo, TaskResult
from .schedule import Schedule
from .task import FINAL_STATUSES, Task, TaskStatus

__all__ = [
    "FINAL_STATUSES",
    "ErrorInfo",
    "EventType",
    "OmniQConfig",
    "Schedule",
    "Task",
    "TaskEvent",
    "TaskResult",
    "TaskStatus",
]
