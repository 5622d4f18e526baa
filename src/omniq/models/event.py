"""Lifecycle events: one per status change, appended in batches by the event logger."""

from __future__ import annotations

import enum

import msgspec


class EventType(str, enum.Enum):
    """What happened to a task: the ``type`` of a :class:`TaskEvent`.

    A ``str`` enum; ``TaskEvent.type`` holds the plain string, so compare either way.

    Attributes:
        ENQUEUED: Stored, ready or waiting.
        PENDING: Waiting for its eta or its dependencies.
        STARTED: A worker began a run.
        SUCCEEDED: Finished with a value.
        FAILED: Finished without one.
        RETRY: A run raised; it runs again after a delay.
        REQUEUED: Its worker died or its lease lapsed; it is delivered again.
        CANCELLED: Cancelled.
        EXPIRED: Not started before its ttl ran out.
        TIMEOUT: A run took longer than its ``timeout``.

    Examples:
        >>> from omniq.models import EventType
        >>> EventType.STARTED == "started", str(EventType.RETRY)
        (True, 'retry')
    """

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
    """Something that happened to a task. ``timestamp`` is epoch seconds.

    ``oq.events(task_id)`` lists them; ``oq.on_event(callback)`` and
    ``AsyncOmniQ.subscribe()`` deliver them live, from any process sharing the storage.

    Attributes:
        task_id: The task's id.
        type: An :class:`EventType` value (``"enqueued"``, ``"started"``, ...).
        timestamp: When it happened, epoch seconds.
        worker: The worker involved, if any.
        queue: The task's queue.
        detail: More, such as an error's ``"Type: message"`` or a retry's delay.

    Examples:
        >>> from omniq import OmniQ
        >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
        ...     h = oq.submit(pow, 2, 10)
        ...     h.result(timeout=30)
        ...     oq.flush()
        ...     [str(e.type) for e in oq.events(task_id=h.id)]
        1024
        ['enqueued', 'started', 'succeeded']
    """

    task_id: str
    type: str
    timestamp: float
    worker: str | None = None
    queue: str | None = None
    detail: str | None = None
