"""``AsyncOmniQ``: the thin orchestrator. It loads the configuration, opens the session
(storage, event logger, this process's worker) and wires the components, each with one
responsibility and a public interface:

- ``intake``: build, validate, buffer and store tasks (``client/intake.py``);
- ``waiters``: futures and result pickup (``client/waiters.py``);
- ``janitor``: lapsed leases, expiry, purges, blob sweeps (``services/janitor.py``);
- ``scheduler``: schedules firing as tasks (``services/schedules.py``);
- ``monitor``: ``health()`` (``services/health.py``).

Its own methods are the public API (DESIGN.md): each checks its arguments and hands over to a
component.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio

from .. import _chunks
from .._futures import ResultFuture, bulk
from ..blobcache import BlobCache
from ..config import load_config
from ..errors import ConfigError
from ..events.metrics import Metrics
from ..events.processor import DEFAULT_BUFFER, aiter_subscription
from ..logs import get_logger
from ..models import OmniQConfig, Task, TaskDetail, TaskEvent, TaskResult, TaskStatus, TaskSummary
from ..notebook.widgets import DISPLAY
from ..progress import DisplayHook
from ..redact import masked
from ..scheduling import default_schedule_name
from ..serialization import dumps_call
from ..services.health import HealthMonitor
from ..services.janitor import Janitor
from ..services.outcomes import Outcomes
from ..services.schedules import Schedules
from ..sweep import AsyncSweep
from ..workers.base import Worker
from ..workers.registry import make_runner
from . import session as sessions
from .admin import Admin
from .checks import callable_name, epoch, integer, queue_name, seconds
from .handles import AsyncTaskHandle
from .intake import MISSING, Intake
from .session import ClosedMeanwhile, Session, finish, within
from .waiters import Waiters

log = get_logger("omniq")


class AsyncOmniQ:
    """The queue, its storage, and this process's workers. Use as ``async with AsyncOmniQ() as oq``."""

    #: seconds a blob, or an owner of one, is kept however unreferenced: values are stored before
    #: the task that uses them, and a client skips re-sending a digest it stored lately
    BLOB_GRACE = 3600.0
    BLOB_SWEEP_EVERY = 300.0  # seconds between sweeps of unreferenced blobs (janitor)
    #: how sweeps show themselves: the notebook's progress widget in a kernel, their repr
    #: elsewhere (sweeps know no notebook; this is where the two are put together)
    display: DisplayHook = DISPLAY

    def __init__(
        self,
        tasks: str | None = None,
        results: str | None = None,
        events: str | None = None,
        worker: str | None = None,
        concurrency: int | None = None,
        queues: Sequence[str] | str | None = None,
        *,
        config: OmniQConfig | Mapping[str, Any] | str | None = None,
        lease: float | None = None,
        max_deliveries: int | None = None,
        result_ttl: float | None = None,
        task_ttl: float | None = None,
        storage_options: Mapping[str, Any] | None = None,
        memory_limit: int | str | None = None,
        require_signing: bool | None = None,
    ) -> None:
        if isinstance(queues, str):
            queues = [q for q in (s.strip() for s in queues.split(",")) if q]
        if queues is not None:
            queues = [queue_name(q, "queues") for q in queues]
        cfg = load_config(
            config,
            tasks=tasks,
            results=results,
            events=events,
            worker=worker,
            concurrency=concurrency,
            queues=list(queues) if queues is not None else None,
            lease=lease,
            max_deliveries=max_deliveries,
            result_ttl=result_ttl,
            task_ttl=task_ttl,
            storage_options=dict(storage_options) if storage_options else None,
            memory_limit=memory_limit,
            require_signing=require_signing,
        )
        self.session = Session(cfg)
        self.waiters = Waiters(self.session, self.flush)
        self.outcomes = Outcomes(self.session, self.waiters.on_results)
        self.intake = Intake(self.session, self.waiters, self.outcomes.cancelled, blob_grace=self.BLOB_GRACE)
        self.janitor = Janitor(self.session, self.outcomes, blob_grace=self.BLOB_GRACE,
                               blob_sweep_every=self.BLOB_SWEEP_EVERY)
        self.waiters.result_listeners.append(self.janitor.on_results)
        self.scheduler = Schedules(self.session)
        self.monitor = HealthMonitor(self.session, self.flush, self.scheduler.list)
        self.admin = Admin(self.session, self.waiters, self.flush, self.janitor.sweep_blobs)

    # --- what the session holds -----------------------------------------------------------------
    @property
    def config(self) -> OmniQConfig:
        return self.session.config

    @property
    def tasks_url(self) -> str:
        return self.session.tasks_url

    @property
    def results_url(self) -> str:
        return self.session.results_url

    @property
    def events_url(self) -> str:
        return self.session.events_url

    @property
    def metrics(self) -> Metrics:
        """This process's counters and timings (``health()``, Prometheus)."""
        return self.session.metrics

    @property
    def blobs(self) -> BlobCache:
        """The blob files this process reads."""
        return self.session.blobs

    @property
    def worker(self) -> Worker | None:
        """This instance's worker while open (None with ``concurrency=0``)."""
        return self.session.worker

    @property
    def is_open(self) -> bool:
        return self.session.opened

    # --- opening and closing --------------------------------------------------------------------
    @classmethod
    def from_config(cls, source: OmniQConfig | Mapping[str, Any] | str | Any, **overrides: Any) -> AsyncOmniQ:
        """Build from a YAML path, a dict or an ``OmniQConfig``; ``OMNIQ_*`` variables override it,
        keyword arguments override both."""
        return cls(config=source, **overrides)

    async def __aenter__(self) -> AsyncOmniQ:
        await self.open()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.close(drain=exc_type is None)

    async def open(self) -> None:
        """Connect storage and start this instance's worker slots (idempotent); reopens a
        closed instance."""
        s = self.session
        if s.opened:
            return
        s.closed = False
        cfg = s.config
        await s.connect()
        self.intake.start()
        s.spawn(self.janitor.run())
        self.waiters.start()
        self.scheduler.start()
        if cfg.concurrency > 0:
            runner = make_runner(cfg.default_worker, cfg.concurrency)
            runner.blobs = s.blobs
            if hasattr(runner, "memory_limit"):  # runners that can watch memory: the default limit
                runner.memory_limit = cfg.memory_limit
            await runner.start()
            w = s.worker = Worker(
                queue=s.queue,
                results=s.results,
                events=s.events,
                runner=runner,
                queues=cfg.queues,
                lease=cfg.lease,
                on_results=self.waiters.on_results,
                make_follow_ups=self.intake.follow_ups,
                metrics=s.metrics,
            )
            s.spawn(w.claim_loop())
            s.spawn(w.complete_loop())
            s.spawn(w.maintain_loop())
        s.opened = True
        log.info(
            "omniq open: tasks=%s results=%s events=%s worker=%s x%d",
            masked(s.tasks_url), masked(s.results_url), masked(s.events_url),
            cfg.default_worker, cfg.concurrency,
        )

    async def close(self, *, drain: bool = False, timeout: float | None = None) -> None:
        """Store what is buffered; with ``drain``, wait for this instance's ready tasks to finish
        first. Unstarted tasks go back to the queue; nothing accepted is lost. Later calls
        raise ``OmniQClosed`` until ``open()``."""
        s = self.session
        s.closed = True
        if not s.opened or s.closing:
            return
        s.closing = True
        events_stuck = False
        try:
            await self.flush()
            if drain and s.worker is not None:
                with anyio.move_on_after(timeout):
                    await self.waiters.drain()
            if s.worker is not None:
                await s.worker.stop(graceful=drain)
            events_stuck = not await within(sessions.CLOSE_STEP, "writing the last events", s.events_url,
                                            s.events.flush())
        finally:
            # close() cut short (its caller's timeout, a cancel) while tasks it accepted were
            # still on their way: store them before the storage closes under them
            if self.intake.busy():
                assert s.loop is not None
                rest = s.loop.create_task(self.flush())
                if not await finish(rest, sessions.CLOSE_STEP):
                    log.warning("close: storing %d accepted tasks (%s) did not finish within %g s; "
                                "going on", len(self.intake.buffer), masked(s.tasks_url), sessions.CLOSE_STEP)
            await s.disconnect(events_stuck=events_stuck)
            s.opened = False
            s.closing = False
            s.worker = None

    async def ensure_open(self) -> None:
        """Open on first use (not an instance its owner closed, nor one a facade drives)."""
        s = self.session
        if s.facade_owned and (not s.opened or s.closing):
            raise ClosedMeanwhile()  # the sync facade (re)opens it, with its loop thread
        if not s.opened:
            if s.closed:
                raise s.closed_error()
            await self.open()

    # --- submitting -----------------------------------------------------------------------------
    async def enqueue(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | float | None = None,
        ttl: float | dt.timedelta | None = MISSING,
        depends_on: Any = (),
        retries: int = 0,
        retry_delay: float = 1.0,
        timeout: float | None = None,
        on_success: Callable[..., Any] | None = None,
        on_failure: Callable[..., Any] | None = None,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        result_ttl: float | dt.timedelta | None = MISSING,
        memory_limit: int | str | None = None,
    ) -> str:
        """Store one task durably and return its id (time-ordered).

        ``key``: an idempotency key. While a task with this key is pending, queued or running,
        or once it succeeded, no new task is stored and its id is returned; after it failed, was
        cancelled or expired, a new task is made. ``memory_limit``: bytes (or ``"4GB"``,
        ``"512MB"``) the task may use; over it, it fails with a memory error naming the limit
        (None: the worker's ``memory_limit``)."""
        task = self.intake.make_task(
            fn, args, kwargs, queue=queue, priority=priority, delay=delay, eta=eta, ttl=ttl,
            depends_on=depends_on, retries=retries, retry_delay=retry_delay, timeout=timeout,
            on_success=on_success, on_failure=on_failure, key=key, metadata=metadata, result_ttl=result_ttl,
            memory_limit=memory_limit,
        )
        return await self.enqueue_task(task)

    async def enqueue_task(self, task: Task) -> str:
        """Store a task built by ``intake.make_task`` durably; its id (that of the task holding
        its key, if another did)."""
        await self.ensure_open()
        (fut,) = self.intake.accept([task])
        await self.flush()
        if fut.done() and fut.exception() is not None:
            raise fut.exception()  # type: ignore[misc]
        tid = self.waiters.resolve_id(task.id)
        if not self.session.serves(task.queue):
            # nobody here will run it and no handle was asked for: keep no waiter (a producer
            # process would otherwise hold one per task forever); get_result(wait=True) or
            # handle() make one on demand
            self.waiters.forget(tid)
        return tid

    async def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncTaskHandle:
        """Run ``fn(*args, **kwargs)`` on a worker; returns at once (stored within milliseconds)."""
        task = self.intake.make_task(fn, args, kwargs)
        await self.ensure_open()
        (fut,) = self.intake.accept([task])
        return AsyncTaskHandle(self, task.id, task.queue, fut)

    async def map(
        self, fn: Callable[..., Any], iterable: Iterable[Any], *, chunksize: int | str = 1, **options: Any
    ) -> list[AsyncTaskHandle]:
        """``fn(item)`` for each item, enqueued as one batch; handles in input order.
        ``chunksize`` > 1 or ``"auto"``: that many items per task (see ``omniq._chunks``)."""
        await self.ensure_open()
        with bulk():
            return [AsyncTaskHandle(self, *h)
                    for h in self.intake.map(fn, iterable, chunksize, options, self.intake.accept)]

    def build_tasks(self, fn: Callable[..., Any], calls: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
                    **options: Any) -> list[Task]:
        """Tasks for ``fn(*args, **kwargs)`` per ``(args, kwargs)`` in ``calls``, validated once,
        with consecutive time-ordered ids (for ``map`` and sweeps; hand them to ``submit_tasks``).
        ``keys=`` and ``metadata=`` may give one value per call (``Intake.build_tasks``)."""
        return self.intake.build_tasks(fn, calls, **options)

    def submit_tasks(self, tasks: Sequence[Task]) -> list[ResultFuture[TaskResult]]:
        """Hand built tasks to the batching buffer (thread-safe, returns at once); one future
        per task, resolved with its final ``TaskResult``."""
        return self.intake.accept(tasks)

    async def flush(self) -> None:
        """Wait until every task handed over so far is durably stored."""
        await self.intake.flush()

    # --- results --------------------------------------------------------------------------------
    async def find_results(self, key_prefix: str) -> list[TaskResult]:
        """Stored results whose ``key`` starts with ``key_prefix`` (how sweeps resume)."""
        await self.ensure_open()
        found = await self.session.results.find_results(key_prefix=key_prefix)
        await self.waiters.with_blobs(found)
        return found

    async def get_result(self, task_id: str, wait: bool = False, timeout: float | None = None) -> TaskResult | None:
        """The task's final result; ``None`` if not final yet (and ``wait`` is False).
        With ``wait``, block until it is final; ``TimeoutError`` past ``timeout``."""
        await self.ensure_open()
        return await self.waiters.get_result(task_id, wait, timeout)

    def handle(self, task_id: str) -> AsyncTaskHandle:
        """A handle for a task id (from ``enqueue`` or another process)."""
        return AsyncTaskHandle(self, self.waiters.resolve_id(task_id), "", self.waiters.future_for(task_id))

    async def status(self, task_id: str) -> TaskStatus:
        """Current status; ``ConfigError`` for an id this storage has never seen."""
        await self.ensure_open()
        item = _chunks.split_item_id(task_id)
        if item is not None:  # its chunk's, unless the chunk ran and this item raised
            chunk = await self.status(item[0])
            mine = await self.get_result(task_id) if chunk is TaskStatus.SUCCEEDED else None
            return chunk if mine is None else mine.status
        await self.flush()
        s = self.session
        task_id = self.waiters.resolve_id(task_id)  # (a keyed task of the batch just stored, too)
        st = (await s.queue.statuses([task_id])).get(task_id)
        if st is None:
            r = await s.results.get_result(task_id)
            if r is None:
                raise ConfigError(f"task_id={task_id!r} is not known to {masked(s.tasks_url)}")
            return r.status
        return st

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task: a queued one never runs; a running one is stopped (its process
        child is terminated). False if it had already finished or is unknown."""
        return await self.cancel_many([task_id]) == 1

    async def cancel_many(self, task_ids: Sequence[str]) -> int:
        """``cancel`` for many tasks in one storage call; returns how many were not final yet.
        Dependents of cancelled tasks are cancelled too (with the cause in their error)."""
        await self.ensure_open()
        await self.flush()
        s, resolve = self.session, self.waiters.resolve_id
        # an item of a chunked map is cancelled with its chunk
        roots = list(dict.fromkeys(resolve(item[0] if (item := _chunks.split_item_id(t)) else t)
                                   for t in task_ids))
        root_set = set(roots)
        changed = await s.queue.cancel(roots, now=time.time())
        hit = [t for t in roots if (st := changed.get(t)) is not None and not st.is_final]
        if s.worker is not None:
            for t in hit:
                if changed[t] is TaskStatus.RUNNING:  # remote workers notice cancel_requested
                    await s.worker.runner.cancel(t)
        pairs = []
        for tid, st in changed.items():
            if st.is_final or st is TaskStatus.RUNNING:
                continue
            task = await s.queue.get_task(tid)
            if task is not None:
                pairs.append((task, tid if tid in root_set else roots[0]))
        if pairs:
            await self.outcomes.cancelled(pairs)
        return len(hit)

    # --- events ---------------------------------------------------------------------------------
    async def events(
        self, task_id: str | None = None, since: float | dt.datetime | None = None, types: Sequence[str] | None = None
    ) -> list[TaskEvent]:
        """Recorded lifecycle events, in time order."""
        await self.ensure_open()
        self.intake.after_stored_here()
        s = self.session
        await s.events.flush()
        if task_id is not None:
            task_id = self.waiters.resolve_id(task_id)
        return await s.event_store.query_events(task_id=task_id, since=epoch("since", since), types=types)

    def subscribe(
        self,
        task_id: str | None = None,
        queue: str | None = None,
        types: Sequence[str] | None = None,
        *,
        buffer: int = DEFAULT_BUFFER,
    ) -> AsyncIterator[TaskEvent]:
        """Live events, from this process at once and from others through the event store:
        ``async for ev in oq.subscribe(task_id=...)``. A subscriber that falls more than
        ``buffer`` events behind gets a ``dropped`` event saying how many it missed."""
        s = self.session
        if not s.opened:
            raise RuntimeError("open the AsyncOmniQ before subscribing (async with AsyncOmniQ(...))")
        sub = s.processor.subscribe(task_id, queue, types, buffer=buffer)
        return aiter_subscription(s.processor, sub)

    def on_event(self, callback: Callable[[TaskEvent], Any], types: Sequence[str] | None = None) -> Callable[[], None]:
        """Call ``callback(event)`` on OmniQ's loop for every event, from this process or any
        other sharing the event store (keep it quick). Returns a function that unsubscribes."""
        s = self.session
        if not s.opened:
            raise RuntimeError("open the OmniQ before registering event callbacks")
        processor = s.processor
        sub = processor.subscribe(None, None, types)

        async def pump() -> None:
            async for ev in aiter_subscription(processor, sub):
                try:
                    callback(ev)
                except Exception:
                    log.exception("event callback %r failed", callback)

        s.call_soon(lambda: s.spawn(pump()))

        def unsubscribe() -> None:
            assert s.loop is not None
            s.loop.call_soon_threadsafe(processor.unsubscribe, sub)

        return unsubscribe

    async def health(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """One picture of the queue for people and dashboards; never raises for a storage
        that is down (that is what it reports): workers (alive = heartbeat within a lease),
        queue depths by status, oldest queued age, leases overrun, schedules with their last
        outcome, storage reachability, and this process's metrics."""
        await self.ensure_open()
        return await self.monitor.report(timeout=timeout)

    # --- operators: list, inspect, retry, purge --------------------------------------------------
    async def tasks(
        self,
        status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
        queue: str | None = None,
        name: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[TaskSummary]:
        """A page of task summaries, newest first. ``status``: a ``TaskStatus``, its name
        (``"failed"``) or several; ``queue`` / ``name`` (the function's qualified name) filter
        exactly; ``before``: a task id, for the next page (pass the last id of this one). A page
        costs the same with ten tasks stored or a million."""
        await self.ensure_open()
        return await self.admin.tasks(status, queue, name, limit, before)

    async def task(self, task_id: str) -> TaskDetail:
        """Everything about one task: its arguments as a short safe repr (nothing is
        unpickled), its result or error with traceback, and its events. ``TaskNotFound`` (a
        ``KeyError``) for an id this storage does not know."""
        await self.ensure_open()
        return await self.admin.task(task_id)

    async def retry(self, task_id: str) -> bool:
        """Run a failed, cancelled or expired task again under the same id: its attempts go
        on and its old result is removed (the new run's replaces it). False for a task that is
        not final or succeeded; ``TaskNotFound`` for an unknown id."""
        await self.ensure_open()
        return await self.admin.retry(task_id)

    async def purge(
        self,
        older_than: float | dt.timedelta | str,
        statuses: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
    ) -> dict[str, int]:
        """Remove final tasks that finished more than ``older_than`` ago (seconds, a
        ``timedelta``, or ``"7d"`` / ``"12h"`` / ``"30m"``), only those in ``statuses`` when
        given, with their results and events, then the blobs nothing refers to any more.
        Returns the counts: ``{"tasks", "results", "events", "blobs"}``."""
        await self.ensure_open()
        return await self.admin.purge(older_than, statuses)

    # --- schedules ------------------------------------------------------------------------------
    async def schedule(
        self,
        fn: Callable[..., Any],
        *,
        cron: str | None = None,
        interval: float | dt.timedelta | None = None,
        at: dt.datetime | float | None = None,
        timezone: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str = "default",
        priority: int = 0,
        name: str | None = None,
        retries: int = 0,
        timeout: float | None = None,
        ttl: float | dt.timedelta | None = None,
    ) -> str:
        """Run ``fn`` on a cron expression, every ``interval`` seconds, or once ``at`` a time.
        Returns the schedule id; a schedule with the same name is replaced."""
        await self.ensure_open()
        if not callable(fn):
            raise ConfigError(f"fn={fn!r} is not valid: expected a callable")
        queue_name(queue)
        return await self.scheduler.add(
            payload=dumps_call(fn, tuple(args), dict(kwargs or {})),
            func_name=callable_name(fn),
            name=name or default_schedule_name(fn),
            cron=cron, interval=interval, at=at, timezone=timezone,
            queue=queue, priority=integer("priority", priority),
            options={
                "retries": integer("retries", retries, minimum=0),
                "timeout": seconds("timeout", timeout),
                "ttl": seconds("ttl", ttl),
            },
        )

    async def pause_schedule(self, schedule_id: str) -> bool:
        await self.ensure_open()
        return await self.scheduler.pause(schedule_id)

    async def resume_schedule(self, schedule_id: str) -> bool:
        await self.ensure_open()
        return await self.scheduler.resume(schedule_id)

    async def delete_schedule(self, schedule_id: str) -> bool:
        await self.ensure_open()
        return await self.scheduler.delete(schedule_id)

    async def schedules(self) -> list[dict[str, Any]]:
        """One row per schedule, with its next run."""
        await self.ensure_open()
        return await self.scheduler.list()

    # --- sweeps, blobs, executors -----------------------------------------------------------------
    async def sweep(self, fn: Callable[..., Any], grid: Any, name: str | None = None, **options: Any) -> Any:
        """Run ``fn(**point)`` for every point of ``grid``; finished points of an earlier run
        of the same sweep (same name, function and parameters) are reused. Returns an
        ``AsyncSweep``."""
        await self.ensure_open()
        return await AsyncSweep.start(self, fn, grid, name=name, **options)

    async def sweep_blobs(self, *, now: float | None = None) -> int:
        """Remove blobs no unfinished task and no stored result refers to any more (older than
        ``BLOB_GRACE``); the janitor calls this every ``BLOB_SWEEP_EVERY`` seconds."""
        return await self.janitor.sweep_blobs(now=now)

    def executor(self, **task_options: Any) -> Any:
        """A ``concurrent.futures.Executor`` over this open instance (``OmniQ.executor``)."""
        from .executor import BoundExecutor

        return BoundExecutor(self, task_options)
