"""The task record: what to run (an opaque payload), where, when and how often."""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class TaskStatus(str, enum.Enum):
    """Where a task is in its life. The last four are final.

    A ``str`` enum: ``TaskStatus.QUEUED == "queued"``, and ``str()`` gives the value.

    Attributes:
        PENDING: Waiting for its ``eta`` / ``delay`` or for the tasks it depends on.
        QUEUED: Ready to be claimed by a worker.
        RUNNING: Leased by a worker, which renews the lease while it runs.
        SUCCEEDED: Finished with a value.
        FAILED: Raised (after its retries), timed out, or its worker kept dying.
        CANCELLED: Cancelled before or while it ran, or a task it depended on did not succeed.
        EXPIRED: Not started before its ``ttl`` ran out.

    Examples:
        >>> from omniq import OmniQ, TaskStatus
        >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
        ...     h = oq.submit(pow, 2, 10)
        ...     h.result(timeout=30)
        ...     h.status(), h.status() == "succeeded", h.status().is_final
        1024
        (<TaskStatus.SUCCEEDED: 'succeeded'>, True, True)
    """

    PENDING = "pending"  # waiting for its eta or its dependencies
    QUEUED = "queued"  # ready to be claimed
    RUNNING = "running"  # leased by a worker
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        """Whether the status is one a task never leaves (succeeded, failed, cancelled, expired).

        Examples:
            >>> from omniq import TaskStatus
            >>> TaskStatus.RUNNING.is_final, TaskStatus.EXPIRED.is_final
            (False, True)
        """
        return self in FINAL_STATUSES

    def __str__(self) -> str:
        return self.value


FINAL_STATUSES = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)


class Task(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A unit of work. ``payload`` is the serialized ``(fn, args, kwargs)``; storage never opens it.

    Times are epoch seconds (``time.time()``). ``attempts`` counts runs that raised (retries);
    ``deliveries`` counts claims, so a task whose worker died can be told apart from one that failed.
    Built by ``enqueue`` / ``submit`` / ``map`` (which check every option); users read tasks
    through handles, ``status()`` and ``events()`` rather than this record.

    Attributes:
        id: Time-ordered unique id (``omniq.ids``).
        payload: The serialized call; only a worker opens it.
        name: The function's qualified name, for people and dashboards.
        queue: The queue it waits in.
        priority: Higher is claimed first within a queue.
        status: Its :class:`TaskStatus`.
        created_at: When it was built.
        eta: Not started before this time (``delay`` / ``eta``).
        expires_at: From ``ttl``: not started by then, it expires.
        depends_on: Ids of tasks that must succeed first.
        retries: Runs allowed to raise before it fails.
        retry_delay: Seconds before the first retry (doubled each time, with jitter).
        timeout: Seconds one run may take.
        attempts: Runs that raised so far.
        deliveries: Times a worker claimed it.
        max_deliveries: Claims allowed before a task whose worker keeps dying fails.
        on_success: A serialized callback submitted when it succeeds.
        on_failure: A serialized callback submitted when it fails.
        key: Idempotency key (also a sweep point's key).
        result_ttl: Seconds its result is kept.
        memory_limit: Bytes its process may use (None: the worker's default).
        metadata: The caller's plain data.
        blobs: Digests of the large values its payload refers to.
        seal: With a secret key, a MAC binding the payload to this id and fields.
        worker: The worker holding its lease.
        lease_until: When that lease lapses unless renewed.
        cancel_requested: ``cancel()`` asked a running task to stop.

    Examples:
        >>> from omniq import OmniQ
        >>> from omniq.models import Task
        >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
        ...     task = oq.core.intake.make_task(pow, (2, 10), None, queue="gpu", retries=2)
        >>> isinstance(task, Task), task.name, task.queue, task.retries, task.status
        (True, 'pow', 'gpu', 2, <TaskStatus.QUEUED: 'queued'>)
    """

    id: str
    payload: bytes
    name: str = ""  # the function's qualified name, for people and dashboards
    queue: str = "default"
    priority: int = 0
    status: TaskStatus = TaskStatus.QUEUED
    created_at: float = 0.0
    eta: float | None = None  # not before this time
    expires_at: float | None = None  # from ttl: not started by then -> EXPIRED
    depends_on: tuple[str, ...] = ()
    retries: int = 0
    retry_delay: float = 1.0
    timeout: float | None = None
    attempts: int = 0
    deliveries: int = 0
    max_deliveries: int = 3
    on_success: bytes | None = None  # serialized callback, run as a task of its own
    on_failure: bytes | None = None
    key: str | None = None  # caller's idempotency / sweep-point key
    result_ttl: float | None = None
    memory_limit: int | None = None  # bytes its process may use (None: the worker's default)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    blobs: tuple[str, ...] = ()  # digests of the large values its payload refers to (BlobStore)
    seal: bytes | None = None  # with a secret key: MAC binding the payload to this id and fields
    # lease state, maintained by the task queue
    worker: str | None = None
    lease_until: float | None = None
    cancel_requested: bool = False
