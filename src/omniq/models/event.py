"""Lifecycle events: one per status change, appended in batches by the event logger."""

from __future__ import annotations

import enum

import msgspec


class EventType(str, enum.Enum):
    ENQUEUED = "enqueued"
    PENDING = "pending"  # waiting for eta or dependencies
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY = "retry"  # failed an attempt, scheduled again
    REQUEUED = "requeued"  # its worker died / lease lapsed; delivered again
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    TIMEOUT = "timeout"

    def __str__(self) -> str:
        return self.value


class TaskEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Something that happened to a task. ``timestamp`` is epoch seconds."""

    task_id: str
    type: str
    timestamp: float
    worker: str | None = None
    queue: str | None = None
    detail: str | None = None
