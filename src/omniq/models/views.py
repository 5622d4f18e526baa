"""What people and dashboards read about a task: a summary per row of a list, and the detail
of one task. Built by ``AsyncOmniQ.tasks()`` / ``task()`` from the stored records; nothing in
them was unpickled (``args`` / ``kwargs`` / ``value`` are safe reprs, see
``omniq.serialization.peek``)."""

from __future__ import annotations

from typing import Any

import msgspec

from .event import TaskEvent
from .result import TaskResult
from .task import TaskStatus


class TaskSummary(msgspec.Struct, kw_only=True):
    """One task in a list: ``name`` is the function's qualified name, times are epoch seconds
    (``started`` / ``finished`` None until known), ``sweep`` the sweep it belongs to."""

    id: str
    queue: str
    name: str
    status: TaskStatus
    attempts: int = 0
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    sweep: str | None = None

    @property
    def duration(self) -> float | None:
        """Seconds between start and end, when both are known."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


class TaskDetail(TaskSummary, kw_only=True):
    """Everything about one task. ``args`` / ``kwargs`` / ``value`` are short reprs made
    without unpickling (objects show as ``<object Foo>``); ``result`` is the stored result
    record (its ``value`` property *does* unpickle: read ``value`` here instead);
    ``error_*`` / ``traceback`` the remote exception; ``events`` its history, in time order."""

    args: str = "()"
    kwargs: str = "{}"
    value: str | None = None
    result: TaskResult | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    events: list[TaskEvent] = msgspec.field(default_factory=list)
    priority: int = 0
    key: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
