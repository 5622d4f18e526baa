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
import enum
import os
import stat
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import anyio
import msgspec

from ..errors import ConfigError, SerializationError
from ..lifecycle import UNSUCCESSFUL
from ..logs import ContextLogger, get_logger
from ..models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from ..redact import masked
from ._codec import decoder
from .blobs import Blob, check_blobs, check_digests, check_owners


class Reaped(msgspec.Struct):
    """Tasks whose lease lapsed: ``requeued`` go round again, ``dead`` are now FAILED.

    ``cancelled``: lapsed tasks someone had asked to cancel (cause: their own id) are CANCELLED
    instead of delivered again, and dependents of ``dead``/``cancelled`` tasks are cancelled
    transitively (cause: the dependency); the orchestrator writes a CANCELLED result for each.
    """

    requeued: list[Task]
    dead: list[Task]
    cancelled: list[tuple[Task, str]] = msgspec.field(default_factory=list)  # (task, cause id)


class Finished(msgspec.Struct):
    """What ``finish`` changed besides the finished tasks themselves.

    ``released``: dependents whose last dependency succeeded (now QUEUED, or PENDING on eta).
    ``cancelled``: dependents cancelled because a dependency failed, was cancelled or expired
    (transitively); the orchestrator writes a CANCELLED result for each.
    """

    released: list[Task] = msgspec.field(default_factory=list)
    cancelled: list[tuple[Task, str]] = msgspec.field(default_factory=list)  # (task, cause id)


class Overrun(msgspec.Struct, kw_only=True):
    """A RUNNING task whose lease ended and that nobody has reaped yet: its worker died or hangs."""

    task_id: str
    queue: str
    worker: str | None
    lease_until: float


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
    lease: float = 0.0  # its own lease: silent longer than this, it is dead (0: the reader's)
    missing: int = 0  # slots it should have and lacks (children it could not replace)
    job: str | None = None  # the batch job it runs in (SLURM_JOB_ID), to match it with squeue


_decode_worker = decoder(WorkerInfo).decode


def readable_workers(records: Iterable[tuple[str, bytes]], log: ContextLogger) -> list[WorkerInfo]:
    """Worker records read from files, ``(name, data)``, sorted by id; one that does not decode
    is left out with a warning on ``log``."""
    out = []
    for name, data in records:
        try:
            out.append(_decode_worker(data))
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring unreadable worker record %s", name)
    out.sort(key=lambda w: w.id)
    return out


class Backend(abc.ABC):
    """Lifecycle shared by all three interfaces. ``connect``/``close`` are reference counted,
    so one backend object may serve as task queue, result store and event store at once."""

    url: str = ""
    _refs: int = 0

    async def connect(self) -> None:
        self._refs += 1
        if self._refs == 1:
            try:
                await self._open()
            except BaseException:
                self._refs = 0  # not open: a later connect() tries again
                raise

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


class BlobStore:
    """Large values by content: stored once per storage under the SHA-256 digest of their bytes.

    A task (or a result) carrying a large value (a notebook global, an argument, a big return
    value) refers to it by digest; the value itself is written once however many tasks use it.
    Every backend that holds a task queue or results implements this part too, on the same
    connection. Blobs are immutable, so a reader may cache one forever.

    Lifetime: ``put_blobs`` records an *owner* for each digest: ``"t:" + task id`` for a task's
    values, ``"r:" + task id`` for a result's. ``sweep_blobs`` drops owners that are neither an
    unfinished task (pending, queued, running) nor a stored result in this backend, then blobs no
    owner refers to. Both only past a grace time (``older_than``), since values are uploaded
    before the task that refers to them is stored.
    """

    async def put_blobs(self, blobs: Mapping[str, Blob], owner: str, *, now: float) -> int:
        """Store each blob not stored yet, and record ``owner`` as referring to every digest
        given (already stored or not). Idempotent; safe against another process storing the same
        digest at once. A blob is readable only once whole: a crash mid-write never leaves one
        that reads as valid. Returns the bytes written (0 when every blob was there)."""
        given = check_blobs(blobs, owner)
        return await self._put_blobs(given, owner, now) if given else 0

    async def add_blob_owners(self, owners: Mapping[str, Sequence[str]], *, now: float) -> None:
        """Record each owner (key) as referring to its digests (already stored): a batch of tasks
        sharing blobs another call stored, in one round trip."""
        checked = {o: ds for o, ds in check_owners(owners).items() if ds}
        if checked:
            await self._add_blob_owners(checked, now)

    async def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        """The blobs stored under these digests (missing ones left out)."""
        ds = check_digests(digests)
        return await self._get_blobs(ds) if ds else {}

    async def missing_blobs(self, digests: Sequence[str]) -> set[str]:
        """Which of these digests are not stored (cheap: no blob is read)."""
        ds = check_digests(digests)
        return await self._missing_blobs(ds) if ds else set()

    # what a backend that stores blobs implements, its arguments checked and not empty
    async def _put_blobs(self, given: dict[str, Blob], owner: str, now: float) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not store blobs")

    async def _add_blob_owners(self, owners: dict[str, list[str]], now: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not store blobs")

    async def _get_blobs(self, ds: list[str]) -> dict[str, bytes]:
        raise NotImplementedError(f"{type(self).__name__} does not store blobs")

    async def _missing_blobs(self, ds: list[str]) -> set[str]:
        raise NotImplementedError(f"{type(self).__name__} does not store blobs")

    async def sweep_blobs(self, *, older_than: float) -> int:
        """Remove owners that no longer exist and blobs left with none, both only when recorded
        before ``older_than``. Returns the number of blobs removed."""
        raise NotImplementedError(f"{type(self).__name__} does not store blobs")

    def blob_path(self, digest: str) -> str | None:
        """A local file holding exactly this blob's bytes, when the backend keeps blobs as local
        files (readers then map it instead of copying); None otherwise."""
        return None


class TaskQueue(Backend, BlobStore):
    """Durable tasks with priorities, named queues, leases, dependencies and schedules."""

    #: True when ``notify``/``wait_for_tasks`` can wake a worker in another process promptly
    #: (e.g. PostgreSQL LISTEN); otherwise ``wait_for_tasks`` polls with back-off.
    cross_process_wakeups: bool = False
    #: True when this backend is also the result store of whoever enqueues (set by the
    #: orchestrator): a SUCCEEDED task then holds its key only while its result is stored.
    #: False: its status is enough (results live elsewhere).
    results_here: bool = False

    def __init__(self) -> None:
        self._wakeup = anyio.Event()
        #: When the earliest delayed task this process knows of falls due (None: none known);
        #: backends that time ``wait_for_tasks`` by it keep it with ``_due_at``.
        self._next_due: float | None = None

    # --- tasks -------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        """Store tasks durably (one transaction). Status as given: QUEUED, or PENDING when the
        task has a future ``eta`` or dependencies not yet succeeded. Dependencies that already
        failed/cancelled/expired make the task CANCELLED at once (returned by nothing: the
        orchestrator checks dependencies first). Raises ``ConfigError`` for an unknown
        dependency id, ``StorageError`` when the write fails.

        Idempotency keys (``Task.key``): a task whose key is *held* is not stored; the reply
        maps its id to the holder's (``{new id: existing id}``, empty when every task was
        stored). The holder of a key is the latest task stored with it, while that task is
        PENDING, QUEUED, RUNNING or SUCCEEDED (with ``results_here``, or once its record is
        purged: while a SUCCEEDED result of it is stored in this backend). A failed, cancelled or expired holder holds
        nothing: the new task is stored and holds the key from then on. Within one batch the
        first task with a key stores it and later ones are its duplicates; a task of the batch
        depending on a duplicate depends on the holder instead (``plan_keys``). Deciding and
        storing are atomic across processes: of several callers racing with one key, exactly
        one stores a task and every other gets its id. A retried call (after a lost reply)
        whose first attempt stored a task takes it as its own, never as a duplicate."""

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
        names = check_claim(queues, limit, lease)
        if limit == 0 or names == []:
            return []
        return await self._claim(worker, names, limit, lease, now)

    @abc.abstractmethod
    async def _claim(
        self, worker: str, names: list[str] | None, limit: int, lease: float, now: float
    ) -> list[Task]:
        """``claim``, its arguments checked: ``limit`` > 0, ``names`` the queues (None: all)."""

    async def finish(
        self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], *, now: float
    ) -> Finished:
        """Set final statuses of tasks leased by ``worker`` (others' leases are left alone),
        then resolve their dependents (see ``Finished``)."""
        check_outcomes(outcomes)
        if not outcomes:
            return Finished()
        return await self._finish(worker, outcomes, now)

    @abc.abstractmethod
    async def _finish(self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], now: float) -> Finished:
        """``finish``, its outcomes checked and not empty."""

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
    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        """RUNNING tasks with ``lease_until < now`` (earliest lapse first), for ``health()``."""

    @abc.abstractmethod
    async def expire(self, *, now: float) -> list[Task]:
        """Tasks QUEUED/PENDING with ``expires_at <= now`` become EXPIRED; returns them, followed
        by their dependents, now CANCELLED transitively (``status`` tells the two apart)."""

    @abc.abstractmethod
    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        """QUEUED/PENDING -> CANCELLED; RUNNING -> ``cancel_requested`` set (the worker stops it).
        Returns each known id's status *before* the call (unknown ids are left out), plus the
        dependents this cancelled transitively (all were PENDING)."""

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

    async def purge(self, *, before: float) -> int:
        """Delete final tasks finished before ``before``; returns how many."""
        return len(await self.purge_tasks(before=before))

    @abc.abstractmethod
    async def purge_tasks(
        self, *, before: float, statuses: Collection[TaskStatus] | None = None
    ) -> list[str]:
        """Delete final tasks finished before ``before`` (only those in ``statuses``, final
        ones, when given) with their dependency rows; returns their ids. Keys they held are
        freed as ``enqueue`` describes (a SUCCEEDED result still stored keeps holding)."""

    # --- operators (oq.tasks / task / retry) ----------------------------------------------------
    async def list_tasks(
        self,
        *,
        statuses: Collection[TaskStatus] | None = None,
        queue: str | None = None,
        name: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Task]:
        """A page of tasks, newest first (in the order stored where the backend keeps one, as
        SQLite's and PostgreSQL's ``seq``; else by id: ids are time-ordered), filtered by status
        (any of ``statuses``), queue and function ``name`` (exact); ``before``: only tasks
        older than that one (the last of the previous page). Arguments come checked
        (``check_page``). The cost is that of the page, not of the tasks stored (an index, a
        sorted set, a listing by id), except that ``name`` may be matched by reading tasks in
        order until the page is full."""
        if limit == 0:
            return []
        return await self._list_tasks(statuses, queue, name, limit, before)

    @abc.abstractmethod
    async def _list_tasks(
        self, statuses: Collection[TaskStatus] | None, queue: str | None, name: str | None, limit: int,
        before: str | None,
    ) -> list[Task]:
        """``list_tasks``, its arguments checked and ``limit`` > 0."""

    @abc.abstractmethod
    async def requeue(self, task_id: str, *, now: float, attempts: int) -> TaskStatus | None:
        """Run a final unsuccessful task (FAILED, CANCELLED, EXPIRED) again under its id: it
        becomes QUEUED, its worker, lease, finish time, cancel request and expiry are cleared,
        its deliveries start again from 0 and its ``attempts`` are set to ``attempts`` (the
        caller's count so far: a failure's result holds it, the record may not). Atomic: of two callers one
        requeues it. Returns its status before the call (None: unknown id); any other status
        is left as it is. The task's record (and seal) is otherwise unchanged; a task that
        waited for dependencies no longer waits (they ended)."""

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

    async def fire_schedule(
        self, schedule_id: str, *, expected_next_run: float, next_run: float | None,
        now: float, task: Task,
    ) -> bool:
        """Compare-and-set: if the schedule is unpaused and its ``next_run`` still equals
        ``expected_next_run``, set ``next_run``/``last_run``/``last_task_id`` and enqueue ``task``
        in the same transaction; True when this caller won the slot."""
        check_new_tasks([task])
        return await self._fire_schedule(schedule_id, expected_next_run, next_run, now, task)

    @abc.abstractmethod
    async def _fire_schedule(
        self, schedule_id: str, expected_next_run: float, next_run: float | None, now: float, task: Task
    ) -> bool:
        """``fire_schedule``, its task checked."""

    # --- workers (health) -------------------------------------------------------------------
    @abc.abstractmethod
    async def heartbeat(self, info: WorkerInfo) -> None:
        """Upsert a worker record."""

    @abc.abstractmethod
    async def remove_worker(self, worker_id: str) -> None: ...

    @abc.abstractmethod
    async def workers(self) -> list[WorkerInfo]: ...

    #: True when ``enqueue_blocking`` works: the sync facade's ``enqueue()`` then stores on the
    #: caller's thread, with no hop to the event loop and back.
    blocking_enqueue = False

    def enqueue_blocking(self, tasks: Sequence[Task]) -> bool | None:
        """``enqueue`` from a thread that is not the event loop's; True when a task is ready
        now, None when nothing was stored and ``enqueue`` should be used instead (the backend
        is closing, or a task has a key). The caller then runs ``after_blocking_enqueue`` on the
        loop."""
        raise NotImplementedError

    def after_blocking_enqueue(self, tasks: Sequence[Task], ready: bool) -> None:
        """On the loop, after ``enqueue_blocking``: wake local waiters."""
        if ready:
            self.notify()

    # --- wake-ups -----------------------------------------------------------------------------
    def notify(self) -> None:
        """Wake local waiters: new work was enqueued in this process."""
        self._wakeup.set()

    def _note_due(self, eta: float) -> bool:
        """Remember ``eta`` if it is the earliest delayed task known here; True if it was."""
        if self._next_due is None or eta < self._next_due:
            self._next_due = eta
            return True
        return False

    def _due_at(self, eta: float) -> None:
        """A delayed task falls due at ``eta``: if that is the earliest known, waiters here
        re-time their sleep."""
        if self._note_due(eta):
            self.notify()

    async def wait_for_tasks(self, timeout: float) -> None:
        """Return when work may be ready, or after ``timeout``. The default wakes on in-process
        ``notify`` (which a backend's cross-process signals call too) and when the earliest
        delayed task falls due (``_next_due``, wall clock); backends that poll override it."""
        if self._next_due is not None:
            timeout = min(timeout, max(self._next_due - time.time(), 0.0))
        if not self._wakeup.is_set():
            with anyio.move_on_after(timeout):
                await self._wakeup.wait()
        self._wakeup = anyio.Event()

    def _wait_left(self, deadline: float) -> float:
        """Seconds a waiter has left: until ``deadline`` (``anyio.current_time()``) or until the
        earliest delayed task falls due, whichever is first (at or below 0: stop waiting)."""
        left = deadline - anyio.current_time()
        if self._next_due is not None:
            left = min(left, self._next_due - time.time())
        return left


class ResultStore(Backend, BlobStore):
    """Final results, one per task id, overwritten by a redelivery (at-least-once)."""

    async def put_results(self, results: Sequence[TaskResult]) -> None:
        """Store (or replace) results durably, as one batch where the backend allows."""
        check_items(results, TaskResult, "results")
        if results:
            await self._put_results(results)

    @abc.abstractmethod
    async def _put_results(self, results: Sequence[TaskResult]) -> None:
        """``put_results``, its results checked and not empty."""

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


class Signal:
    """A wake-up that callbacks set and one waiter consumes: ``wait`` returns once it is set
    (or at ``timeout``) and re-arms it. For cross-process signals (NOTIFY, pub/sub)."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._event.wait()
        self._event = anyio.Event()


class EventStore(Backend):
    """Append-only lifecycle events."""

    async def append_events(self, events: Sequence[TaskEvent]) -> None:
        """Store events durably, as one batch where the backend allows."""
        check_items(events, TaskEvent, "events")
        if events:
            await self._append_events(events)

    @abc.abstractmethod
    async def _append_events(self, events: Sequence[TaskEvent]) -> None:
        """``append_events``, its events checked and not empty."""

    async def query_events(
        self,
        *,
        task_id: str | None = None,
        since: float | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[TaskEvent]:
        """Events in time order (ties in append order), filtered; ``since`` is inclusive
        (``timestamp >= since``); ``types`` one type or several."""
        wanted = None if types is None else sorted({str(t) for t in ([types] if isinstance(types, str) else types)})
        return await self._query_events(
            task_id, None if since is None else float(since), wanted, None if limit is None else int(limit)
        )

    @abc.abstractmethod
    async def _query_events(
        self, task_id: str | None, since: float | None, types: list[str] | None, limit: int | None
    ) -> list[TaskEvent]:
        """``query_events``, ``types`` a list of distinct names."""

    @abc.abstractmethod
    async def purge_events(self, *, before: float, task_ids: Collection[str] | None = None) -> int:
        """Delete events stamped before ``before`` (only those of ``task_ids`` when given);
        returns how many."""

    async def wait_for_events(self, timeout: float) -> None:
        """Return when another process may have appended events, at the latest after
        ``timeout``: live subscriptions read the store then. Polling is the default (SQLite,
        files); a backend with cross-process signals (NOTIFY, pub/sub) returns early."""
        await anyio.sleep(timeout)


# --- checks and rules shared by every TaskQueue backend (pure: no I/O) -----------------------

# ``UNSUCCESSFUL`` (final statuses that cancel a task's dependents) is the lifecycle's, re-exported.


def check_new_tasks(tasks: Sequence[Task]) -> None:
    """Refuse a batch ``enqueue`` cannot store, before anything is written (``ConfigError``)."""
    if isinstance(tasks, Task) or not isinstance(tasks, Sequence):
        raise ConfigError(f"tasks must be a list of Task, got {type(tasks).__name__}")
    ok = (TaskStatus.QUEUED, TaskStatus.PENDING)
    if all(  # the usual batch, checked in one pass (a third of the loop below); else find why
        type(t) is Task and type(t.id) is str and t.id and t.status in ok and type(t.payload) is bytes
        and type(t.queue) is str and t.queue and type(t.priority) is int and not t.depends_on
        and (t.key is None or (type(t.key) is str and t.key))
        for t in tasks
    ) and len({t.id for t in tasks}) == len(tasks):
        return
    seen: set[str] = set()
    for i, t in enumerate(tasks):
        if not isinstance(t, Task):
            raise ConfigError(f"tasks[{i}] must be a Task, got {type(t).__name__}")
        if not isinstance(t.id, str) or not t.id:
            raise ConfigError(f"tasks[{i}].id must be a non-empty str, got {t.id!r}")
        if t.id in seen:
            raise ConfigError(f"tasks[{i}].id {t.id!r} appears twice in one batch")
        seen.add(t.id)
        if t.status not in (TaskStatus.QUEUED, TaskStatus.PENDING):
            raise ConfigError(
                f"tasks[{i}].status must be QUEUED or PENDING to enqueue, got {t.status!r}"
            )
        if not isinstance(t.payload, bytes):
            raise ConfigError(f"tasks[{i}].payload must be bytes, got {type(t.payload).__name__}")
        if not isinstance(t.queue, str) or not t.queue:
            raise ConfigError(f"tasks[{i}].queue must be a non-empty str, got {t.queue!r}")
        if not isinstance(t.priority, int) or isinstance(t.priority, bool):
            raise ConfigError(f"tasks[{i}].priority must be an int, got {t.priority!r}")
        if t.id in t.depends_on:
            raise ConfigError(f"tasks[{i}] ({t.id}) depends on itself")
        if t.key is not None and (not isinstance(t.key, str) or not t.key):
            raise ConfigError(f"tasks[{i}].key must be a non-empty str or None, got {t.key!r}")


def plan_enqueue(
    tasks: Sequence[Task], known: Mapping[str, TaskStatus]
) -> list[tuple[TaskStatus, list[str]]]:
    """Status each new task is stored with, and the dependencies it still waits for.

    ``known`` maps the already stored dependencies to their status. A dependency may also be an
    earlier or later task of the same batch. A task with an unsuccessful dependency is CANCELLED
    at once; one waiting for dependencies is PENDING; a PENDING task with neither ``eta`` nor
    dependencies to wait for is QUEUED. Unknown dependencies and cycles raise ``ConfigError``.
    """
    if not any(t.depends_on for t in tasks):  # the usual batch: nothing to order or look up
        queued, pending = TaskStatus.QUEUED, TaskStatus.PENDING
        return [(queued if t.status is pending and t.eta is None else t.status, []) for t in tasks]
    index = {t.id: i for i, t in enumerate(tasks)}
    children: dict[int, list[int]] = {}
    blocking = [0] * len(tasks)
    for i, t in enumerate(tasks):
        for d in dict.fromkeys(t.depends_on):
            if d in index:
                children.setdefault(index[d], []).append(i)
                blocking[i] += 1
            elif d not in known:
                raise ConfigError(f"tasks[{i}] ({t.id}) depends on unknown task {d!r}")
    ready = [i for i, n in enumerate(blocking) if n == 0]
    plans: list[tuple[TaskStatus, list[str]] | None] = [None] * len(tasks)
    while ready:
        i = ready.pop()
        t = tasks[i]
        waiting: list[str] = []
        status = t.status
        for d in dict.fromkeys(t.depends_on):
            dep_status = plans[index[d]][0] if d in index else known[d]  # type: ignore[index]
            if dep_status in UNSUCCESSFUL:
                status, waiting = TaskStatus.CANCELLED, []
                break
            if dep_status is not TaskStatus.SUCCEEDED:
                waiting.append(d)
        else:
            if waiting:
                status = TaskStatus.PENDING
            elif status is TaskStatus.PENDING and t.eta is None:
                status = TaskStatus.QUEUED
        plans[i] = (status, waiting)
        for c in children.get(i, ()):
            blocking[c] -= 1
            if blocking[c] == 0:
                ready.append(c)
    if any(p is None for p in plans):
        cycle = [tasks[i].id for i, p in enumerate(plans) if p is None]
        raise ConfigError(f"tasks have circular dependencies: {', '.join(cycle)}")
    return plans  # type: ignore[return-value]


#: Statuses in which a task holds its idempotency key (see ``TaskQueue.enqueue``).
KEY_HOLDING = frozenset(
    {TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED}
)
class KeyMark(msgspec.Struct, array_like=True):
    """An idempotency key's marker, for backends that write it *before* the task record
    (file://, NATS): the key's latest task ("" once that task was purged unsuccessful), when the
    marker was written, and whether that task's record was purged after it succeeded (it then
    holds the key while its result is stored). Stored as msgpack ``[task, at, purged]``."""

    task: str
    at: float
    purged: bool = False


#: Seconds a key marker whose task record is not there yet counts as a write in progress
#: (backends that write the marker before the record: NATS, file://). Past it, the writer is
#: taken to have died between the two and the key is free again.
KEY_WRITE_GRACE = 30.0


def holds_key(
    status: TaskStatus | None, succeeded_result: bool = False, results_here: bool = False
) -> bool:
    """Whether a key's latest task holds it: its status (None: no record any more), whether a
    SUCCEEDED result of it is stored in the same backend, and whether this backend is the
    result store (``TaskQueue.results_here``: a success then holds only while its result is
    stored, since a caller handed its id would wait for a result that is gone)."""
    if status is None or (status is TaskStatus.SUCCEEDED and results_here):
        return succeeded_result
    return status in KEY_HOLDING


class KeyVerdict(str, enum.Enum):
    """What a keyed enqueue does with the key's current marker (``key_marker_verdict``)."""

    OURS = "ours"  # the marker names the task being stored (an earlier attempt of this call)
    HELD = "held"  # another task holds the key: the new one is its duplicate
    HELD_GONE = "held-gone"  # held by a purged task whose success is still stored
    WAIT = "wait"  # a write may be in progress (marker written, record not yet): look again
    TAKE = "take"  # the key is free: write a marker naming the new task (compare-and-set)


def key_marker_verdict(
    mark: KeyMark | None, written_at: float, *, mine: str, status: TaskStatus | None,
    succeeded_result: bool, results_here: bool, now: float,
) -> KeyVerdict:
    """The rule for backends that write a key's marker before the task record (file://, NATS).

    ``mark``: the key's newest marker (None: unreadable, being written or left empty by a
    crash; ``written_at`` is then the file's time). ``status``: that marker's task's status
    (None: no record). ``succeeded_result``: whether a SUCCEEDED result of it is stored here
    (looked up only when ``key_marker_needs_result`` says so). A marker whose task has no record
    is a write in progress for ``KEY_WRITE_GRACE`` seconds, then its writer is taken to have
    died in between; ``purge`` marks the keys of the tasks it removes (``purged``), so a purged
    task is never taken for one being written."""
    if mark is None:
        return KeyVerdict.WAIT if now - written_at < KEY_WRITE_GRACE else KeyVerdict.TAKE
    if mark.task == mine:
        return KeyVerdict.OURS
    if not mark.task:  # its task was purged after failing: the key is free
        return KeyVerdict.TAKE
    if status is not None:
        ok = status is TaskStatus.SUCCEEDED and results_here and succeeded_result
        return KeyVerdict.HELD if holds_key(status, ok, results_here) else KeyVerdict.TAKE
    if mark.purged:
        return KeyVerdict.HELD_GONE if succeeded_result else KeyVerdict.TAKE
    return KeyVerdict.WAIT if now - mark.at < KEY_WRITE_GRACE else KeyVerdict.TAKE


def note_key_verdict(
    verdict: KeyVerdict, key: str, task_id: str, mark: KeyMark | None,
    waiting: dict[str, str], holders: dict[str, str], gone: list[str],
) -> bool:
    """Record what a keyed enqueue's pass makes of a verdict other than ``TAKE``: ``WAIT`` looks
    at ``key`` again next pass, ``HELD`` / ``HELD_GONE`` name its holder. False for ``TAKE``:
    the caller writes the key's marker (file://, bucket queues)."""
    if verdict is KeyVerdict.TAKE:
        return False
    if verdict is KeyVerdict.WAIT:
        waiting[key] = task_id  # its task may be being stored: look again shortly
    elif verdict is not KeyVerdict.OURS:
        assert mark is not None
        holders[key] = mark.task
        if verdict is KeyVerdict.HELD_GONE:
            gone.append(mark.task)
    return True


def key_marker_needs_result(mark: KeyMark | None, status: TaskStatus | None, results_here: bool) -> bool:
    """Whether ``key_marker_verdict`` needs ``succeeded_result`` for this marker (a lookup the
    caller makes only then)."""
    if mark is None or not mark.task:
        return False
    if status is not None:
        return status is TaskStatus.SUCCEEDED and results_here
    return mark.purged


def first_of_keys(tasks: Sequence[Task]) -> dict[str, str]:
    """Each key of a batch -> the id of the batch's first task with it (the one that may store
    it; later ones are its duplicates)."""
    first: dict[str, str] = {}
    for t in tasks:
        if t.key is not None:
            first.setdefault(t.key, t.id)
    return first


def keyed(tasks: Sequence[Task]) -> list[str]:
    """The keys of a batch, once each, in order (empty for the usual unkeyed batch)."""
    return list(dict.fromkeys(t.key for t in tasks if t.key is not None))


def plan_keys(
    tasks: Sequence[Task], holders: Mapping[str, str], gone: Collection[str] = ()
) -> tuple[list[Task], dict[str, str]]:
    """Split a batch into the tasks to store and the duplicates of held keys.

    ``holders`` maps each key held now to its holder's id (keys not held are left out). A task
    whose key is held by *another* task is a duplicate (``{its id: holder id}``); the first task
    of the batch with a free key stores it, and later tasks of the batch with that key are its
    duplicates. A task held by its own id (a retry whose first attempt stored it) is kept, for
    the backend's usual take-over of a lost reply. Tasks depending on a duplicate get the holder
    in its place (a copy of the task: the caller's objects are never changed), or lose that
    dependency when the holder is in ``gone`` (its record purged, its success stored: nothing
    to wait for). Pure: the backend reads ``holders`` and writes the result under one lock or
    transaction."""
    if not holders and all(t.key is None for t in tasks):
        return list(tasks), {}
    held = dict(holders)
    dups: dict[str, str] = {}
    store: list[Task] = []
    for t in tasks:
        k = t.key
        if k is not None:
            h = held.get(k)
            if h is not None and h != t.id:
                dups[t.id] = h
                continue
            held[k] = t.id
        store.append(t)
    if dups and any(d in dups for t in store for d in t.depends_on):
        replace = msgspec.structs.replace
        store = [
            replace(t, depends_on=tuple(dict.fromkeys(
                h for d in t.depends_on if (h := dups.get(d, d)) not in gone or h == d)))
            if any(d in dups for d in t.depends_on) else t
            for t in store
        ]
    return store, dups


def watched_after(watched: set[str] | None, names: list[str] | None) -> set[str] | None:
    """The queues a backend's wake-ups watch once a claim named ``names`` (``check_claim``'s;
    None: every queue, from then on)."""
    if names is None:
        return None
    if watched is not None:
        watched.update(names)
    return watched


def check_claim(queues: Sequence[str] | None, limit: int, lease: float) -> list[str] | None:
    """Validated ``claim`` arguments: the queue names (deduplicated) or None for all."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(f"limit must be an int >= 0, got {limit!r}")
    if not isinstance(lease, (int, float)) or lease <= 0:
        raise ConfigError(f"lease must be a positive number of seconds, got {lease!r}")
    if queues is None:
        return None
    if isinstance(queues, str):
        raise ConfigError(
            f"queues must be a list of queue names or None, got the str {queues!r} "
            f"(did you mean [{queues!r}]?)"
        )
    names = list(dict.fromkeys(queues))
    for q in names:
        if not isinstance(q, str) or not q:
            raise ConfigError(f"queues must hold non-empty str names, got {q!r}")
    return names


#: what ``list_tasks`` returns at most per call
MAX_PAGE = 10_000
_STATUS_BY_NAME = {s.value: s for s in TaskStatus}


def check_statuses(statuses: Any, arg: str = "status") -> frozenset[TaskStatus] | None:
    """``statuses`` as a set of ``TaskStatus``: None, one status or its name (``"failed"``), or
    an iterable of them; ``ConfigError`` naming ``arg`` and the valid names otherwise."""
    if statuses is None:
        return None
    items = [statuses] if isinstance(statuses, (str, TaskStatus)) else statuses
    try:
        items = list(items)
    except TypeError:
        items = [statuses]
    out: set[TaskStatus] = set()
    for s in items:
        if isinstance(s, TaskStatus):
            out.add(s)
            continue
        got = _STATUS_BY_NAME.get(s.strip().lower()) if isinstance(s, str) else None
        if got is None:
            valid = ", ".join(_STATUS_BY_NAME)
            raise ConfigError(f"{arg}={s!r} is not a task status; valid: {valid}")
        out.add(got)
    if not out:
        raise ConfigError(f"{arg} is empty: give None for every status, or some of them")
    return frozenset(out)


def check_page(limit: Any, before: Any, queue: Any = None, name: Any = None) -> None:
    """``list_tasks`` arguments a backend can use as they are (``ConfigError`` otherwise)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_PAGE:
        raise ConfigError(f"limit must be an int from 0 to {MAX_PAGE:,}, got {limit!r}")
    if before is not None and (not isinstance(before, str) or not before):
        raise ConfigError(f"before must be a task id (str) or None, got {before!r}")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ConfigError(f"queue must be a queue name (non-empty str) or None, got {queue!r}")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(f"name must be a function name (non-empty str) or None, got {name!r}")


def in_page(
    t: Task, statuses: Collection[TaskStatus] | None, queue: str | None, name: str | None,
    before: str | None,
) -> bool:
    """Whether ``t`` belongs to a ``list_tasks`` page with these filters (backends that filter
    in Python)."""
    return (
        (statuses is None or t.status in statuses)
        and (queue is None or t.queue == queue)
        and (name is None or t.name == name)
        and (before is None or t.id < before)
    )


#: final statuses ``requeue`` runs again
REQUEUABLE = UNSUCCESSFUL


def events_in_order(
    events: Iterable[TaskEvent], since: float | None, types: list[str] | None, limit: int | None
) -> list[TaskEvent]:
    """What ``query_events`` returns from events read in append order: those at or after
    ``since`` of ``types``, sorted by time (stable: ties keep append order), ``limit`` first."""
    wanted = None if types is None else set(types)
    out = sorted(
        (e for e in events if (since is None or e.timestamp >= since) and (wanted is None or e.type in wanted)),
        key=_timestamp,
    )
    return out if limit is None else out[:limit]


def _timestamp(e: TaskEvent) -> float:
    return e.timestamp


def check_items(items: Iterable[Any], kind: type, arg: str) -> None:
    """``ConfigError`` naming ``arg`` unless every item is a ``kind``."""
    for x in items:
        if not isinstance(x, kind):
            raise ConfigError(f"{arg} must hold {kind.__name__}, got {type(x).__name__}")


def check_outcomes(outcomes: Sequence[tuple[str, TaskStatus]]) -> None:
    """``finish`` takes final statuses only."""
    for i, (task_id, status) in enumerate(outcomes):
        if not isinstance(status, TaskStatus) or not status.is_final:
            raise ConfigError(
                f"outcomes[{i}] for task {task_id!r}: status must be a final TaskStatus "
                f"(SUCCEEDED, FAILED, CANCELLED, EXPIRED), got {status!r}"
            )


_decode_task = decoder(Task).decode
_STATUS = {s.value: s for s in TaskStatus}


def task_from_row(row: Sequence[Any]) -> Task:
    """A Task from an SQL row ``(seq, blob, status, worker, lease_until, deliveries, attempts,
    eta, cancel_requested, ...)``: the immutable blob overlaid with the mutable columns (the
    layout the SQLite and PostgreSQL backends share), and a payload kept apart (column 14)."""
    t = _decode_task(row[1])
    t.status = _STATUS[row[2]]
    t.worker = row[3]
    t.lease_until = row[4]
    t.deliveries = row[5]
    t.attempts = row[6]
    t.eta = row[7]
    t.cancel_requested = bool(row[8])
    if len(row) > 14 and row[14] is not None:  # SQLite keeps a large payload apart
        t.payload = row[14]
    return t


def read_task_row(row: Sequence[Any]) -> Task:
    """``task_from_row``, except that a ``task`` blob that does not decode (damaged on disk, or
    written over) becomes a stand-in that fails when run, saying so: that task fails alone, and
    the claim or reap that read it goes on for the rest (SQLite and PostgreSQL)."""
    try:
        return task_from_row(row)
    except Exception as exc:  # any: deeply nested metadata raises RecursionError, not DecodeError
        return stand_in_task(
            str(row[9]), exc,
            queue=row[10], priority=row[11], max_deliveries=row[12], created_at=row[13],
            status=_STATUS[row[2]], worker=row[3], lease_until=row[4], deliveries=row[5],
            attempts=row[6], eta=row[7], cancel_requested=bool(row[8]),
        )  # fmt: skip


def events_sql(
    select: str, task_id: str | None, since: float | None, types: list[str] | None, limit: int | None,
    *, mark: Callable[[int], str], type_in: str, type_list: Callable[[list[str]], Any],
) -> tuple[str, list[Any]]:
    """``query_events`` in SQL (SQLite, PostgreSQL): ``select`` filtered, in time then append
    (``seq``) order. ``mark(n)`` is the n-th parameter's placeholder; ``type_in`` the types
    condition with ``{}`` for its one parameter, ``type_list(types)``."""
    where: list[str] = []
    params: list[Any] = []
    conds: list[tuple[str, Any]] = [("task_id = {}", task_id), ("timestamp >= {}", since)]
    conds.append((type_in, None if types is None else type_list(types)))
    for cond, value in conds:
        if value is not None:
            params.append(value)
            where.append(cond.format(mark(len(params))))
    sql = select + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY timestamp, seq"
    if limit is not None:
        params.append(limit)
        sql += f" LIMIT {mark(len(params))}"
    return sql, params


def event_from_row(r: Sequence[Any]) -> TaskEvent:
    """A TaskEvent from an SQL row ``(task_id, type, timestamp, worker, queue, detail)``."""
    return TaskEvent(task_id=r[0], type=r[1], timestamp=r[2], worker=r[3], queue=r[4], detail=r[5])


def unreadable_task(message: str) -> None:
    """What the stand-in of an unreadable task record runs: a clear failure."""
    raise SerializationError(message)


def stand_in_task(task_id: str, exc: BaseException, **fields: Any) -> Task:
    """The stand-in of a stored task record that does not decode (damaged, written over, or
    nested too deep: any exception): it fails when run, saying why, so that task ends with a
    TaskResult and the claim or reap that read it goes on for the rest of its batch."""
    from ..serialization import dumps_call

    why = str(exc)
    why = why if len(why) <= 300 else why[:300] + "..."
    message = (
        f"task {task_id}: its stored record is corrupted and cannot be read "
        f"({type(exc).__name__}: {why}); it was not run"
    )
    from ..serialization._seals import seal_tasks

    task = Task(
        id=task_id,
        payload=dumps_call(unreadable_task, (message,), {}),
        name="<unreadable task record>",
        **fields,
    )
    seal_tasks([task])  # made here, by a key holder: it runs (and fails saying why)
    return task


def make_private_dir(path: str) -> None:
    """``os.makedirs(path)``: a folder it creates is 0700 whatever the umask (one it finds is
    left as it is, see :func:`check_owner`)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            return
    os.chmod(path, 0o700)


def check_owner(path: str, url: str) -> None:
    """One WARNING when storage ``path`` is owned by another user, or others may write to it:
    whoever can write there can plant task or result payloads (a ``SignatureError`` when
    ``OMNIQ_SECRET_KEY`` is set, code running as this user when it is not)."""
    if not hasattr(os, "getuid"):
        return
    try:
        st = os.stat(path)
    except OSError:
        return
    problem = ""
    if st.st_uid != os.getuid() and os.getuid() != 0:
        problem = f"is owned by another user (uid {st.st_uid})"
    elif stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        problem = "is writable by every user"
    if problem:
        get_logger("omniq.storage").warning(
            "storage %s: %s %s: whoever can write there can plant tasks and results (run code "
            "as this user unless OMNIQ_SECRET_KEY is set); use a folder only you own",
            masked(url), path, problem,
        )


__all__ = [
    "KEY_HOLDING",
    "KEY_WRITE_GRACE",
    "MAX_PAGE",
    "REQUEUABLE",
    "UNSUCCESSFUL",
    "Backend",
    "EventStore",
    "Finished",
    "KeyMark",
    "KeyVerdict",
    "Overrun",
    "Reaped",
    "ResultStore",
    "Signal",
    "TaskQueue",
    "WorkerInfo",
    "check_claim",
    "check_new_tasks",
    "check_outcomes",
    "check_owner",
    "check_page",
    "check_statuses",
    "first_of_keys",
    "holds_key",
    "in_page",
    "key_marker_needs_result",
    "key_marker_verdict",
    "keyed",
    "make_private_dir",
    "masked",
    "note_key_verdict",
    "plan_enqueue",
    "plan_keys",
    "read_task_row",
    "stand_in_task",
    "task_from_row",
    "unreadable_task",
    "watched_after",
]

