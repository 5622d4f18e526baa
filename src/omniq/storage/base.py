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
import time
from collections.abc import Collection, Iterable, Mapping, Sequence

import anyio
import msgspec

from ..lifecycle import UNSUCCESSFUL
from ..logs import ContextLogger
from ..models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from ..redact import masked
from ._codec import decoder
from .blobs import Blob, check_blobs, check_digests, check_owners
from .checks import check_claim, check_items, check_new_tasks, check_outcomes
from .rows import unreadable_task as unreadable_task  # (stand-ins pickled before it moved)


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


__all__ = [
    "UNSUCCESSFUL",
    "Backend",
    "BlobStore",
    "EventStore",
    "Finished",
    "Overrun",
    "Reaped",
    "ResultStore",
    "Signal",
    "TaskQueue",
    "WorkerInfo",
    "masked",
    "readable_workers",
]
