"""Data carried between the API, storage and workers, as msgspec Structs."""

from .config import OmniQConfig
from .event import EventType, TaskEvent
from .result import ErrorInfo, TaskResult
from .schedule import Schedule
from .task import FINAL_STATUSES, Task, TaskStatus
from .views import TaskDetail, TaskSummary

__all__ = [
    "FINAL_STATUSES",
    "ErrorInfo",
    "EventType",
    "OmniQConfig",
    "Schedule",
    "Task",
    "TaskDetail",
    "TaskEvent",
    "TaskResult",
    "TaskStatus",
    "TaskSummary",
]
