"""The worker loop, and the ``Runner`` interface each worker kind implements.

A ``Worker`` claims tasks from a ``TaskQueue`` (only through the storage interfaces), hands them
to a ``Runner`` (async / thread / process / gevent), and turns the runner's ``Outcome``s into
results, final statuses, retries and events, in batches. The runner never touches storage.
"""

from __future__ import annotations

import abc
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from ..blobcache import BlobCache
from ..errors import SignatureError
from ..events.logger import EventLogger
from ..events.metrics import Metrics
from ..lifecycle import on_lapse, retry_after
from ..logs import Outage, bind, get_logger
from ..models import ErrorInfo, EventType, Task, TaskEvent, TaskResult, TaskStatus
from ..redact import masked
from ..serialization import Fetch, path_fetch
from ..serialization._seals import check_task, seal_results, seal_tasks
from ..storage.base import ResultStore, TaskQueue, WorkerInfo
from ._wire import error_row

log = get_logger("omniq.worker")


class _ClaimFailed(Exception):
    """A claim (or the blob fetch after it) failed: the claim loop backs off."""


class Outcome:
    """How one run of a task ended. ``error`` set means the attempt failed.

    A runner reports these; the :class:`Worker` turns them into results, final statuses,
    retries and events.

    Args:
        task: The task that ran.
        payload: The serialized return value (when it succeeded).
        error: What went wrong (when it did not).
        started_at: When the run started (epoch seconds).
        finished_at: When it ended.
        retryable: Whether a failure may be retried (False for cancels, expiry, bad payloads).
        status: None: SUCCEEDED without an error, else FAILED (or a retry); or CANCELLED /
            EXPIRED for a run stopped on purpose.
        blobs: Digests of the payload's large values (files in the runner's blob cache).

    Examples:
        >>> from omniq.models import Task
        >>> from omniq.workers.base import Outcome
        >>> out = Outcome(Task(id="t1", payload=b""), payload=b"M*", started_at=1.0, finished_at=1.5)
        >>> out.error is None, out.finished_at - out.started_at
        (True, 0.5)
    """

    __slots__ = ("blobs", "error", "finished_at", "payload", "retryable", "started_at", "status", "task")

    def __init__(
        self,
        task: Task,
        *,
        payload: bytes | None = None,
        error: ErrorInfo | None = None,
        started_at: float,
        finished_at: float,
        retryable: bool = True,
        status: TaskStatus | None = None,
        blobs: tuple[str, ...] = (),
    ) -> None:
        self.task = task
        self.blobs = blobs  # digests of the payload's large values, files in the runner's blob cache
        self.payload = payload
        self.error = error
        self.started_at = started_at
        self.finished_at = finished_at
        self.retryable = retryable
        # None: SUCCEEDED if no error else FAILED (or a retry). CANCELLED: stopped by a user.
        self.status = status


def error_info(exc: BaseException) -> ErrorInfo:
    """An exception as text that any process can read (the user's frames first).

    Args:
        exc: The exception.

    Returns:
        Its type name, message and traceback text.

    Examples:
        >>> from omniq.workers.base import error_info
        >>> try:
        ...     1 / 0
        ... except ZeroDivisionError as exc:
        ...     info = error_info(exc)
        >>> info.type, info.message, "Traceback" in info.traceback
        ('ZeroDivisionError', 'division by zero', True)
    """
    etype, message, tb = error_row(exc)
    return ErrorInfo(type=etype, message=message, traceback=tb)


def timeout_error(task: Task) -> ErrorInfo:
    """The error of a task that ran past its ``timeout``.

    Args:
        task: The task.

    Returns:
        A ``TaskTimeout`` error naming the task and its timeout.

    Examples:
        >>> from omniq.models import Task
        >>> from omniq.workers.base import timeout_error
        >>> str(timeout_error(Task(id="t1", payload=b"", name="train", timeout=2.5)))
        'TaskTimeout: task train timed out after 2.5 s'
    """
    return ErrorInfo(
        type="TaskTimeout",
        message=f"task {task.name or task.id} timed out after {task.timeout:g} s",
    )


def stopped_outcome(task: Task, reason: str, started: float, finished: float) -> Outcome:
    """A task stopped on purpose: timed out (``reason`` "timeout": a failure, retried if
    retries allow) or cancelled (any other reason).

    Args:
        task: The task.
        reason: ``"timeout"``, or anything else for a cancel.
        started: When the run started.
        finished: When it was stopped.

    Returns:
        A failed outcome (timeout) or a CANCELLED one that is not retried.

    Examples:
        >>> from omniq.models import Task
        >>> from omniq.workers.base import stopped_outcome
        >>> out = stopped_outcome(Task(id="t1", payload=b""), "cancel", 1.0, 2.0)
        >>> out.status, out.retryable, str(out.error)
        (<TaskStatus.CANCELLED: 'cancelled'>, False, 'TaskCancelled: cancelled by user')
    """
    if reason == "timeout":
        return Outcome(task, error=timeout_error(task), started_at=started, finished_at=finished)
    return Outcome(task, status=TaskStatus.CANCELLED, error=ErrorInfo("TaskCancelled", "cancelled by user"),
                   started_at=started, finished_at=finished, retryable=False)


class Runner(abc.ABC):
    """Executes tasks. Calls ``on_done`` (on the event loop) with batches of outcomes.

    One subclass per worker kind (``registry.RUNNERS``): :class:`~omniq.workers.aio.AsyncRunner`,
    :class:`~omniq.workers.thread.ThreadRunner`, :class:`~omniq.workers.process.ProcessRunner`,
    :class:`~omniq.workers.gevent.GeventRunner`. A runner never touches storage: the
    :class:`Worker` claims tasks, calls :meth:`dispatch`, and stores what ``on_done`` reports.
    Every method is called on the worker's event loop.

    Args:
        slots: Tasks it runs at once.

    Attributes:
        kind: The worker kind (``"thread"``, ...).
        slots: As given.
        on_done: Called with each batch of :class:`Outcome` (set by the Worker).
        on_started: Called with ``(task, started_at)`` as a task starts.
        blobs: Where tasks' large values are and results' go (set by the Worker).

    Examples:
    >>> import asyncio
    >>> from omniq import OmniQ
    >>> from omniq.serialization import loads
    >>> from omniq.workers.registry import make_runner
    >>> with OmniQ(tasks="memory://", concurrency=0) as oq:     # only to build a task
    ...     task = oq.core.intake.make_task(pow, (2, 10), None)
    >>> async def run_one():
    ...     runner = make_runner("thread", 2)
    ...     done = []
    ...     runner.on_done = done.extend            # batches of Outcome, on the loop
    ...     await runner.start()
    ...     runner.dispatch([task])
    ...     while not done:
    ...         await asyncio.sleep(0.01)
    ...     await runner.stop(graceful=True)
    ...     return done[0].error, loads(done[0].payload)
    >>> asyncio.run(run_one())
    (None, 1024)
    """

    kind: str = ""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.on_done: Callable[[list[Outcome]], None] = lambda outs: None
        self.on_started: Callable[[Task, float], None] = lambda task, t: None
        self.worker_id: str | None = None  # the Worker driving it, for log records
        self.blobs: BlobCache | None = None  # where tasks' large values are, and results' go
        self.capacity_changed = anyio.Event()
        self._avg: float | None = None  # moving average of task run time, seconds (None: none seen)

    def _observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self._avg = seconds if self._avg is None else 0.8 * self._avg + 0.2 * seconds

    def _prefetch(self) -> int:
        """Tasks to hold per slot beyond the one it runs. One, so a slot goes from task to task
        without a round trip, unless tasks have been far quicker than a claim round trip: then
        batches (a claim per task would cap a pool at a few thousand a second). Durations not
        yet seen count as long. Whatever waits beyond that could run in another slot."""
        avg = self._avg
        if avg is None or avg >= 0.005:
            return 1
        return 63 if avg < 0.001 else 15

    def missing(self) -> int:
        """Slots this runner should have and lacks (children it could not replace).

        Returns:
            0 here; a child runner counts its missing children.
        """
        return 0

    def _paths(self, task: Task) -> dict[str, str] | None:
        """Where the blobs ``task`` refers to are (the Worker fetched them before dispatch)."""
        if not task.blobs or self.blobs is None:
            return None
        return self.blobs.locate(task.blobs)

    def _fetch(self, task: Task) -> Fetch | None:
        paths = self._paths(task)
        return path_fetch(paths) if paths else None

    def _blob_dir(self) -> str | None:
        return self.blobs.root if self.blobs is not None else None

    def _signal_capacity(self) -> None:
        self.capacity_changed.set()

    @abc.abstractmethod
    async def start(self) -> None:
        """Get ready to run (spawn children, threads); returns when the pool can take work."""

    @abc.abstractmethod
    def capacity(self) -> int:
        """How many more tasks ``dispatch`` accepts now (includes prefetch).

        Returns:
            The number of tasks (0 when full or stopping).
        """

    @abc.abstractmethod
    def dispatch(self, tasks: Sequence[Task]) -> None:
        """Take tasks to run; never blocks.

        Args:
            tasks: Claimed tasks, at most ``capacity()`` of them.
        """

    @abc.abstractmethod
    def held(self) -> list[str]:
        """Ids of tasks dispatched and not yet reported (their leases need extending).

        Returns:
            The ids.
        """

    @abc.abstractmethod
    async def cancel(self, task_id: str) -> bool:
        """Stop a task this runner holds; its outcome is reported as CANCELLED.

        Args:
            task_id: The task's id.

        Returns:
            False when the runner does not hold it.
        """

    @abc.abstractmethod
    async def stop(self, *, graceful: bool) -> list[Task]:
        """Stop.

        Args:
            graceful: Let running tasks finish first; otherwise stop them.

        Returns:
            Tasks it held and never started (the Worker gives them back to the queue).
        """

    def alive(self) -> bool:
        """Whether the runner can run tasks (a child runner: all its children live)."""
        return True


def expired_outcome(task: Task, now: float) -> Outcome | None:
    """An EXPIRED outcome if ``task``'s ttl ran out before it could start (it waited in a
    prefetch buffer after its claim); runners check this right before starting a task.

    Args:
        task: The task.
        now: The time now (epoch seconds).

    Returns:
        The EXPIRED outcome, or None when the task may start.

    Examples:
        >>> from omniq.models import Task
        >>> from omniq.workers.base import expired_outcome
        >>> task = Task(id="t1", payload=b"", expires_at=100.0)
        >>> expired_outcome(task, 99.0) is None, expired_outcome(task, 101.0).status
        (True, <TaskStatus.EXPIRED: 'expired'>)
    """
    if task.expires_at is None or task.expires_at > now:
        return None
    return Outcome(task, status=TaskStatus.EXPIRED, started_at=now, finished_at=now, retryable=False,
                   error=ErrorInfo("TaskExpired", "its ttl ran out before it started"))


class Worker:
    """Claims, dispatches and completes tasks for one runner. Speaks only to storage interfaces.

    An open ``OmniQ`` with ``concurrency`` > 0 runs one (``oq.core.worker``), and so does
    ``omniq worker``; its three loops (:meth:`claim_loop`, :meth:`complete_loop`,
    :meth:`maintain_loop`) run on the client's event loop.

    Args:
        queue: The task queue it claims from.
        results: Where results go.
        events: The event logger.
        runner: The runner that executes tasks.
        queues: The queues it takes from; None: all.
        lease: Seconds a claim lasts unless renewed (renewed every third of it).
        on_results: Called with each batch of stored results (wakes this process's waiters).
        make_follow_ups: Builds ``on_success`` / ``on_failure`` tasks for a result.
        worker_id: Its id; None: ``host:pid:kind:hex``.
        metrics: Counters and timings to update.
        blobs: The local blob cache; None: the runner's, or a new one.

    Examples:
        >>> from omniq import OmniQ
        >>> with OmniQ(tasks="memory://", worker="thread", concurrency=2) as oq:
        ...     info = oq.core.worker.info(0.0)
        ...     info.kind, info.slots
        ('thread', 2)
    """

    def __init__(
        self,
        *,
        queue: TaskQueue,
        results: ResultStore,
        events: EventLogger,
        runner: Runner,
        queues: Sequence[str] | None,
        lease: float,
        on_results: Callable[[list[TaskResult]], None],
        make_follow_ups: Callable[[TaskResult, Task], list[Task]] | None = None,
        worker_id: str | None = None,
        metrics: Metrics | None = None,
        blobs: BlobCache | None = None,
    ) -> None:
        self.queue = queue
        self.results = results
        self.events = events
        self.runner = runner
        self.queues = list(queues) if queues else None
        self.lease = lease
        self.on_results = on_results
        self.make_follow_ups = make_follow_ups
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{runner.kind}:{os.urandom(3).hex()}"
        self.started_at = time.time()
        self.metrics = metrics if metrics is not None else Metrics()
        self._outcomes: list[Outcome] = []
        self._outcome_ready = anyio.Event()
        self._claiming = True
        self._claim_busy: anyio.Event | None = None
        self._in_flight = 0  # outcomes being written
        runner.on_done = self._on_done
        runner.on_started = self._on_started
        runner.worker_id = self.id
        self.blobs = blobs or runner.blobs or BlobCache()
        runner.blobs = self.blobs

    # --- runner callbacks (on the loop) ------------------------------------------------------
    def _on_started(self, task: Task, at: float) -> None:
        self.metrics.queue_wait.observe(at - max(task.created_at, task.eta or 0.0))
        self.events.emit(task.id, EventType.STARTED.value, worker=self.id, queue=task.queue, timestamp=at)

    def _on_done(self, outs: list[Outcome]) -> None:
        self._outcomes.extend(outs)
        self._outcome_ready.set()

    # --- loops ---------------------------------------------------------------------------------
    async def claim_loop(self) -> None:
        """Keep the runner full: claim as many tasks as it has room for, wait when idle."""
        bind(worker=self.id)
        outage = Outage(log, "claiming tasks", masked(self.queue.url))
        backoff = 0.005
        while self._claiming:
            room = self.runner.capacity()
            if room <= 0:
                self.runner.capacity_changed = anyio.Event()
                if self.runner.capacity() <= 0:
                    with anyio.move_on_after(0.5):
                        await self.runner.capacity_changed.wait()
                continue
            busy = self._claim_busy = anyio.Event()  # stop() waits for what this claim brings
            try:
                got = await self._claim_and_dispatch(room, outage)
            except _ClaimFailed:
                await anyio.sleep(min(backoff, 2.0))
                backoff *= 2
                continue
            finally:
                busy.set()
                self._claim_busy = None
            backoff = 0.005
            if not got:
                await self.queue.wait_for_tasks(timeout=0.5)

    async def _claim_and_dispatch(self, room: int, outage: Outage) -> bool:
        """Claim up to ``room`` tasks and hand them to the runner; False when none was there.
        Tasks a stop() came for while the claim was on its way go back at once (not after
        their lease lapses, a delivery spent)."""
        try:
            tasks = await self.queue.claim(
                self.id, queues=self.queues, limit=room, lease=self.lease, now=time.time()
            )
        except Exception as exc:
            outage.failed(exc)
            raise _ClaimFailed from exc
        outage.ok()
        if not tasks:
            return False
        tasks = self._sealed(tasks)
        if tasks and not self._claiming:
            await self._give_back(tasks)
            return True
        if any(t.blobs for t in tasks):
            try:
                await self.blobs.ensure(self.queue, [d for t in tasks for d in t.blobs])
            except Exception as exc:  # storage unreachable: give the tasks back, try again
                outage.failed(exc)
                await self._give_back(tasks)
                raise _ClaimFailed from exc
        if tasks:
            self.runner.dispatch(tasks)
        return True

    async def _give_back(self, tasks: Sequence[Task]) -> None:
        try:
            await self.queue.release(self.id, [t.id for t in tasks])
            self.queue.notify()
        except Exception:  # their leases lapse instead: delivered again then
            log.debug("could not give back %d tasks", len(tasks), exc_info=True)

    def _sealed(self, tasks: list[Task]) -> list[Task]:
        """The claimed tasks whose seal holds; the others fail now, never retried and never
        opened (a payload moved from another task, or a field changed in storage)."""
        bad: list[Outcome] = []
        good = []
        for t in tasks:
            try:
                check_task(t)
            except SignatureError as exc:
                now = time.time()
                bad.append(Outcome(t, error=ErrorInfo("SignatureError", str(exc)), started_at=now,
                                   finished_at=now, retryable=False))
            else:
                good.append(t)
        if bad:
            self._on_done(bad)
        return good

    async def complete_loop(self) -> None:
        """Write outcomes in batches: results first, then final statuses (at-least-once)."""
        bind(worker=self.id)
        outage = Outage(log, "recording outcomes", masked(self.results.url))
        while True:
            await self._outcome_ready.wait()
            self._outcome_ready = anyio.Event()
            while self._outcomes:
                batch, self._outcomes = self._outcomes, []
                self._in_flight += len(batch)
                try:
                    await self._complete(batch)
                    outage.ok()
                except Exception as exc:
                    # Never drop an outcome: keep it and try again; leases keep the tasks safe.
                    outage.failed(exc)
                    self._outcomes[:0] = batch
                    await anyio.sleep(0.5)
                finally:
                    self._in_flight -= len(batch)

    async def _complete(self, batch: list[Outcome]) -> None:
        now = time.time()
        finals: list[TaskResult] = []
        statuses: list[tuple[str, TaskStatus]] = []
        tasks: dict[str, Task] = {}
        emit = self.events.emit_many
        evs: list[TaskEvent] = []
        run = self.metrics.run
        for out in batch:
            t = out.task
            if out.status is None:  # it ran (not cancelled, expired or orphaned)
                run.observe(out.finished_at - out.started_at)
            attempts = t.attempts + 1
            if out.status is TaskStatus.RUNNING:  # its worker died: as a lapsed lease, now
                if on_lapse(cancel_requested=False, deliveries=t.deliveries,
                            max_deliveries=t.max_deliveries) is TaskStatus.QUEUED:
                    await self.queue.retry(self.id, t.id, eta=now, attempts=t.attempts)
                    evs.append(_ev(t, EventType.REQUEUED.value, self.id, now, str(out.error)))
                    self.queue.notify()
                    continue
                status = TaskStatus.FAILED
                attempts = max(t.attempts, t.deliveries)  # each delivery ran it (and died)
            elif out.status is None and out.error is None:
                status = TaskStatus.SUCCEEDED
            elif out.status is TaskStatus.CANCELLED or out.status is TaskStatus.EXPIRED:
                status = out.status
                attempts = t.attempts
            else:
                status = TaskStatus.FAILED
                delay = retry_after(retryable=out.retryable, attempt=attempts, retries=t.retries,
                                    retry_delay=t.retry_delay, jitter=random.uniform(0.75, 1.25))
                if delay is not None:
                    await self.queue.retry(self.id, t.id, eta=now + delay, attempts=attempts)
                    evs.append(_ev(t, EventType.RETRY.value, self.id, out.finished_at,
                                   f"attempt {attempts} failed ({out.error}); retry in {delay:.2f} s"))
                    continue
            blobs = out.blobs if status is TaskStatus.SUCCEEDED else ()
            if blobs:
                self.blobs.adopt(blobs)
                await self.results.put_blobs(self.blobs.read(blobs), "r:" + t.id, now=now)
            finals.append(
                _final_result(
                    t,
                    status,
                    out.finished_at,
                    payload=out.payload if status is TaskStatus.SUCCEEDED else None,
                    blobs=blobs,
                    error=out.error,
                    attempts=attempts,
                    started_at=out.started_at,
                    worker=self.id,
                )
            )
            statuses.append((t.id, status))
            tasks[t.id] = t
            evs.append(_ev(t, status.value, self.id, out.finished_at,
                           str(out.error) if out.error else None))
        if finals:
            seal_results(finals)
            await self.results.put_results(finals)
            fin = await self.queue.finish(self.id, statuses, now=time.time())
            now = time.time()  # dependents cancelled / follow-ups enqueued just now, not at the start
            extra: list[TaskResult] = []
            if fin.cancelled:
                extra = cancelled_results(fin.cancelled)
                await self.results.put_results(extra)
                evs.extend(_ev(task, EventType.CANCELLED.value, self.id, now, f"dependency {cause} did not succeed")
                           for task, cause in fin.cancelled)
            if fin.released:
                self.queue.notify()
            if self.make_follow_ups is not None:
                follow: list[Task] = []
                for r in finals:
                    follow.extend(self.make_follow_ups(r, tasks[r.task_id]))
                if follow:
                    seal_tasks(follow)
                    await self.queue.enqueue(follow)
                    evs.extend(_ev(f, EventType.ENQUEUED.value, None, now, None) for f in follow)
                    self.queue.notify()
            emit(evs)
            for r in finals:
                if r.blobs:  # its large values are files here: this process reads them there
                    r.__dict__["_fetch"] = self.blobs.fetch(self.blobs.locate(r.blobs))
            self.on_results(finals + extra)
        elif evs:
            emit(evs)

    async def maintain_loop(self) -> None:
        """Heartbeat, extend held leases, and stop tasks someone asked to cancel."""
        bind(worker=self.id)
        outage = Outage(log, "heartbeat", masked(self.queue.url))
        hb_every = max(0.2, self.lease / 3)
        next_hb = 0.0
        while True:
            now = time.time()
            held = self.runner.held()
            try:
                if now >= next_hb:
                    await self.queue.heartbeat(self.info(now))
                    if held:
                        await self.queue.extend(self.id, held, lease_until=now + self.lease)
                    next_hb = now + hb_every
                if held:
                    for tid in await self.queue.cancel_requests(held):
                        await self.runner.cancel(tid)
                outage.ok()
            except Exception as exc:
                outage.failed(exc)
            await anyio.sleep(0.25)

    def info(self, now: float) -> WorkerInfo:
        """Its heartbeat record, as ``health()`` and ``omniq status`` show it.

        Args:
            now: The heartbeat's time (epoch seconds).

        Returns:
            Id, kind, host, pid, slots, queues, start time, lease, missing slots and the
            SLURM job it runs in, if any.
        """
        return WorkerInfo(
            id=self.id,
            kind=self.runner.kind,
            host=socket.gethostname(),
            pid=os.getpid(),
            slots=self.runner.slots,
            queues=self.queues,
            started_at=self.started_at,
            last_heartbeat=now,
            lease=self.lease,
            missing=self.runner.missing(),
            job=os.environ.get("SLURM_JOB_ID") or None,
        )

    async def stop(self, *, graceful: bool) -> None:
        """Stop claiming; with ``graceful`` let running tasks finish; give back the rest.

        Tasks it held and never started are released to the queue (not a failure, not a
        delivery), and its worker record is removed.

        Args:
            graceful: Let running tasks finish (``omniq worker``'s SIGTERM); otherwise stop them.
        """
        self._claiming = False
        busy = self._claim_busy
        if busy is not None:  # a claim on its way: its tasks reach the runner (or go back) first
            with anyio.move_on_after(10):
                await busy.wait()
        unstarted = await self.runner.stop(graceful=graceful)
        if unstarted:
            await self.queue.release(self.id, [t.id for t in unstarted])
            self.queue.notify()
        # let the completion loop record what the runner reported
        for _ in range(200):
            if not self._outcomes and self._in_flight == 0:
                break
            self._outcome_ready.set()
            await anyio.sleep(0.01)
        try:
            await self.queue.remove_worker(self.id)
        except Exception:
            log.debug("could not remove worker record %s", self.id, exc_info=True)


def _ev(t: Task, type: str, worker: str | None, at: float, detail: str | None) -> Any:
    return TaskEvent(task_id=t.id, type=type, timestamp=at, worker=worker, queue=t.queue, detail=detail)


def cancelled_results(pairs: Sequence[tuple[Task, str]], *, by: str | None = None) -> list[TaskResult]:
    """CANCELLED results for tasks cancelled by a user (``by``) or by a dependency (cause id).

    Args:
        pairs: ``(task, id of the dependency that did not succeed)`` per task.
        by: The message for a user's cancel; None: name the dependency.

    Returns:
        One result per task.

    Examples:
        >>> from omniq.models import Task
        >>> from omniq.workers.base import cancelled_results
        >>> [r] = cancelled_results([(Task(id="t2", payload=b""), "t1")])
        >>> r.status, r.error.message
        (<TaskStatus.CANCELLED: 'cancelled'>, 'cancelled because dependency t1 did not succeed')
    """
    now = time.time()
    out = []
    for task, cause in pairs:
        msg = by or f"cancelled because dependency {cause} did not succeed"
        out.append(
            _final_result(
                task,
                TaskStatus.CANCELLED,
                now,
                error=ErrorInfo(type="TaskCancelled", message=msg),
                attempts=task.attempts,
            )
        )
    return out


def _final_result(task: Task, status: TaskStatus, finished_at: float, **fields: Any) -> TaskResult:
    """``task``'s final result: it carries the task's queue, name, key and metadata, and the
    result store may drop it ``result_ttl`` after it finished; ``fields``: the rest."""
    ttl = task.result_ttl
    return TaskResult(
        task_id=task.id,
        status=status,
        finished_at=finished_at,
        queue=task.queue,
        name=task.name,
        key=task.key,
        metadata=task.metadata,
        expires_at=(finished_at + ttl) if ttl else None,
        **fields,
    )
