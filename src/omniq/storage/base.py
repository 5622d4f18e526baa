"""The three storage interfaces: task queue, result store, event store.

Every backend module (``memory.py``, ``sqlite.py``, ...) implements whichever of these it can,
usually in one class sharing one connection. Workers and the orchestrator speak only to these
interfaces; backend names never appear outside ``storage/``.

Leases: ``claim`` hands a task to one worker until ``lease_until``. The worker extends the lease
while it runs (``extend``) and ends it with ``finish`` or ``retry``. If the lease lapses (the
worker died), ``reap`` delivers the task again, or fails it with ``WorkerDied`` once it has been
delivered ``max_deliveries`` times. PostgreSQL (``FOR UPDATE SKIP LOCKED`` + lease column), Redis
(a lease sorted set) and NATS (ack-wait) implement the same contract.

All times are epoch seconds passed in by the caller (``now``), so backends stay testable.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence


import anyio
import msgspec

from ..models import Schedule, Task, TaskEvent, TaskResult, TaskStatus


class Reaped(msgspec.Struct):
    """Tasks whose lease lapsed: ``requeued`` go round again, ``dead`` are now FAILED."""

    requeued: list[Task]
    dead: list[Task]


class Finished(msgspec.Struct):
    """What ``finish`` changed besides the finished tasks themselves.

    ``released``: dependents whose last dependency succeeded (now QUEUED, or PENDING on eta).
    ``cancelled``: dependents cancelled because a dependency failed, was cancelled or expired
    (transitively); the orchestrator writes a CANCELLED result for each.
    """

    released: list[Task] = msgspec.field(default_factory=list)
    cancelled: list[tuple[Task, str]] = msgspec.field(default_factory=list)  # (task, cause id)


class WorkerInfo(msgspec.Struct, kw_only=True):
    """A worker's heartbeat record, for ``health()``."""

    id: str
    kind: str
    host: str
    pid: int
    slots: int
    queues: list[str] | None
    started_at: float
    last_heartbeat: float


class Backend(abc.ABC):
    """Lifecycle shared by all three interfaces. ``connect``/``close`` are reference counted,
    so one backend object may serve as task queue, result store and event store at once."""

    url: str = ""
    _refs: int = 0

    async def connect(self) -> None:
        self._refs += 1
        if self._refs == 1:
            await self._open()

    async def close(self) -> None:
        if self._refs == 0:
            return
        self._refs -= 1
        if self._refs == 0:
            await self._close()

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...


class TaskQueue(Backend):
    """Durable tasks with priorities, named queues, leases, dependencies and schedules."""

    #: True when ``notify``/``wait_for_tasks`` can wake a worker in another process promptly
    #: (e.g. PostgreSQL LISTEN); otherwise ``wait_for_tasks`` polls with back-off.
    cross_process_wakeups: bool = False

    def __init__(self) -> None:
        self._wakeup = anyio.Event()

    # --- tasks -------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, tasks: Sequence[Task]) -> None:
        """Store tasks durably (one transaction). Status as given: QUEUED, or PENDING when the
        task has a future ``eta`` or dependencies not yet succeeded. Dependencies that already
        failed/cancelled/expired make the task CANCELLED at once (returned by nothing: the
        orchestrator checks dependencies first). Raises ``ConfigError`` for an unknown
        dependency id, ``StorageError`` when the write fails."""

    @abc.abstractmethod
    async def claim(
        self,
        worker: str,
        *,
        queues: Sequence[str] | None,
        limit: int,
        lease: float,
        now: float,
    ) -> list[Task]:
        """Atomically lease up to ``limit`` ready tasks to ``worker``.

        Ready: QUEUED, or PENDING with ``eta <= now`` and every dependency succeeded; not
        expired (``expires_at`` is None or > now). Order: highest ``priority`` first, then
        enqueue order (FIFO). Claimed tasks become RUNNING with ``worker``,
        ``lease_until = now + lease`` and ``deliveries + 1``; the returned copies show that."""

    @abc.abstractmethod
    async def finish(
        self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], *, now: float
    ) -> Finished:
        """Set final statuses of tasks leased by ``worker`` (others' leases are left alone),
        then resolve their dependents (see ``Finished``)."""

    @abc.abstractmethod
    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        """Return a failed attempt to PENDING until ``eta`` (QUEUED if eta <= now), keeping
        ``deliveries``, recording ``attempts``; ends the lease."""

    @abc.abstractmethod
    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        """Give back leased tasks that were never started (worker shutting down): QUEUED again,
        ``deliveries - 1``."""

    @abc.abstractmethod
    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        """Heartbeat: push the lease of tasks still held by ``worker``."""

    @abc.abstractmethod
    async def reap(self, *, now: float) -> Reaped:
        """Tasks RUNNING with ``lease_until < now``: QUEUED again if ``deliveries <
        max_deliveries``, else FAILED (the orchestrator records ``WorkerDied``)."""

    @abc.abstractmethod
    async def expire(self, *, now: float) -> list[Task]:
        """Tasks QUEUED/PENDING with ``expires_at <= now`` become EXPIRED; returns them."""

    @abc.abstractmethod
    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        """QUEUED/PENDING -> CANCELLED; RUNNING -> ``cancel_requested`` set (the worker stops it).
        Returns each known id's status *before* the call (unknown ids are left out)."""

    @abc.abstractmethod
    async def get_task(self, task_id: str) -> Task | None: ...

    @abc.abstractmethod
    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]: ...

    @abc.abstractmethod
    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        """Which of these (running) tasks someone asked to cancel."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {status value: count}}`` for every queue that has tasks."""

    @abc.abstractmethod
    async def oldest_queued(self) -> dict[str, float]:
        """``{queue: created_at}`` of the oldest QUEUED task per queue."""

    @abc.abstractmethod
    async def purge(self, *, before: float) -> int:
        """Delete final tasks finished before ``before``; returns how many."""

    # --- schedules ------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_schedule(self, schedule: Schedule) -> None:
        """Insert or replace by ``id``."""

    @abc.abstractmethod
    async def get_schedules(self) -> list[Schedule]: ...

    @abc.abstractmethod
    async def set_schedule_paused(self, schedule_id: str, paused: bool, next_run: float | None) -> bool:
        """Pause or resume; on resume ``next_run`` is the next slot from now. False if unknown."""

    @abc.abstractmethod
    async def delete_schedule(self, schedule_id: str) -> bool: ...

    @abc.abstractmethod
    async def fire_schedule(
        self, schedule_id: str, *, expected_next_run: float, next_run: float | None,
        now: float, task: Task,
    ) -> bool:
        """Compare-and-set: if the schedule is unpaused and its ``next_run`` still equals
        ``expected_next_run``, set ``next_run``/``last_run``/``last_task_id`` and enqueue ``task``
        in the same transaction; True when this caller won the slot."""

    # --- workers (health) -------------------------------------------------------------------
    @abc.abstractmethod
    async def heartbeat(self, info: WorkerInfo) -> None:
        """Upsert a worker record."""

    @abc.abstractmethod
    async def remove_worker(self, worker_id: str) -> None: ...

    @abc.abstractmethod
    async def workers(self) -> list[WorkerInfo]: ...

    # --- wake-ups -----------------------------------------------------------------------------
    def notify(self) -> None:
        """Wake local waiters: new work was enqueued in this process."""
        self._wakeup.set()

    async def wait_for_tasks(self, timeout: float) -> None:
        """Return when work may be ready, or after ``timeout``. The default wakes on in-process
        ``notify``; a backend with cross-process signals (LISTEN/NOTIFY, streams) overrides."""
        if not self._wakeup.is_set():
            with anyio.move_on_after(timeout):
                await self._wakeup.wait()
        self._wakeup = anyio.Event()


class ResultStore(Backend):
    """Final results, one per task id, overwritten by a redelivery (at-least-once)."""

    @abc.abstractmethod
    async def put_results(self, results: Sequence[TaskResult]) -> None:
        """Store (or replace) results durably, as one batch where the backend allows."""

    @abc.abstractmethod
    async def get_result(self, task_id: str) -> TaskResult | None: ...

    @abc.abstractmethod
    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        """Results known for these ids (missing ones left out), in one round trip."""

    @abc.abstractmethod
    async def find_results(self, *, key_prefix: str) -> list[TaskResult]:
        """Results whose ``key`` starts with ``key_prefix`` (sweeps resume by key)."""

    @abc.abstractmethod
    async def delete_results(self, task_ids: Sequence[str]) -> int: ...

    @abc.abstractmethod
    async def purge_results(self, *, now: float) -> int:
        """Delete results whose ``expires_at <= now``; returns how many."""


class EventStore(Backend):
    """Append-only lifecycle events."""

    @abc.abstractmethod
    async def append_events(self, events: Sequence[TaskEvent]) -> None: ...

    @abc.abstractmethod
    async def query_events(
        self,
        *,
        task_id: str | None = None,
        since: float | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[TaskEvent]:
        """Events in time order (ties in append order), filtered."""

    @abc.abstractmethod
    async def purge_events(self, *, before: float) -> int: ...


def masked(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for error messages and logs)."""
    import re

    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


__all__ = [
    "Backend",
    "EventStore",
    "Finished",
    "Reaped",
    "ResultStore",
    "TaskQueue",
    "WorkerInfo",
    "masked",
]

