"""The task record: what to run (an opaque payload), where, when and how often."""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class TaskStatus(str, enum.Enum):
    """Where a task is in its life. The last four are final."""

    PENDING = "pending"  # waiting for its eta or its dependencies
    QUEUED = "queued"  # ready to be claimed
    RUNNING = "running"  # leased by a worker
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
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
