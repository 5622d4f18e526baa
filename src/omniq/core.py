"""AsyncOmniQ (the orchestrator) and OmniQ (its sync facade).

``AsyncOmniQ`` wires the three storage interfaces to a worker, an event logger, a scheduler and
a janitor (leases, TTLs, results of tasks finished elsewhere). ``OmniQ`` runs one ``AsyncOmniQ``
on a private event loop in a daemon thread behind an anyio ``BlockingPortal``, so the same calls
work in a plain script and inside a running Jupyter loop. Its methods are generated from the
async ones by ``_portal_method``; only ``submit`` and ``map`` are written out, because they must
not pay a portal round trip per call: they hand tasks to a thread-safe buffer that the loop
drains in batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import datetime as dt
import functools
import heapq
import inspect
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import msgspec
from anyio.from_thread import BlockingPortal

from . import _chunks, ids
from ._futures import ResultFuture, WeakFutures, bulk, resolve_many
from .blobcache import BlobCache
from .config import configure_logging, load_config, resolve_urls
from .config.sizes import parse_size
from .errors import ConfigError, OmniQClosed, StorageError, StorageUnwritable, TaskError
from .events.logger import EventLogger
from .events.metrics import Metrics
from .events.processor import EventProcessor, aiter_subscription
from .logs import Outage, get_logger
from .models import EventType, OmniQConfig, Task, TaskEvent, TaskResult, TaskStatus
from .scheduling import Scheduler, default_schedule_name
from .serialization import BlobSink, dumps, dumps_call, dumps_calls, loads, path_fetch
from .serialization._seals import check_schedule, seal_tasks
from .storage.base import EventStore, ResultStore, TaskQueue, masked
from .storage.urls import check_signing, open_backends
from .workers.base import Worker, cancelled_results
from .workers.registry import make_runner

log = get_logger("omniq")

P = ParamSpec("P")
R = TypeVar("R")

_MISSING: Any = object()


# --------------------------------------------------------------------------------------------
# argument checking: pure functions, errors name the argument
# --------------------------------------------------------------------------------------------
def _seconds(name: str, value: Any, *, allow_zero: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r} is not valid: expected seconds (a number or timedelta) or None")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} is not valid: expected a number of seconds {bound}")
    return float(value)


def _epoch(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()  # naive = local time, as datetime does
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{name}={value!r} is not valid: expected a datetime or epoch seconds")


def _int(name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} is not valid: expected an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value!r} is not valid: expected an integer >= {minimum}")
    return value


def _queue_name(value: Any, name: str = "queue") -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}={value!r} is not valid: expected a non-empty string")
    return value


def _task_ids(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, TaskHandle, AsyncTaskHandle)):
        value = [value]
    out = []
    for v in value:
        if isinstance(v, (TaskHandle, AsyncTaskHandle)):
            out.append(v.id)
        elif isinstance(v, str) and v:
            out.append(v)
        else:
            raise ConfigError(f"depends_on contains {v!r}: expected task ids (str) or task handles")
        if _chunks.split_item_id(out[-1]) is not None:  # its chunk succeeds even if the item raised
            raise ConfigError(
                f"depends_on contains {out[-1]!r}, an item of a chunked map: a task can depend on whole "
                "tasks only (map without chunksize to depend on single items)"
            )
    return tuple(out)


def _map_keys(key: Any, items: Sequence[Any]) -> list[str | None]:
    """A ``map``'s ``key=``: one idempotency key per item, from a list or a function of the item."""
    if isinstance(key, str):
        raise ConfigError(f"key={key!r} is not valid for map: give one key per item (a list of str, "
                          "or a function of the item returning one)")
    if callable(key):
        keys = [key(item) for item in items]
    elif isinstance(key, Iterable):
        keys = list(key)
    else:
        raise ConfigError(f"key={key!r} is not valid for map: expected a list of str or a function of the item")
    if len(keys) != len(items):
        raise ConfigError(f"key has {len(keys)} entries for {len(items)} items: give one key per item")
    for k in keys:
        if k is not None and (not isinstance(k, str) or not k):
            raise ConfigError(f"key contains {k!r}: each item's key must be a non-empty str or None")
    return keys


def _callable_name(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    mod = getattr(fn, "__module__", None)
    return f"{mod}.{name}" if mod and mod not in ("__main__", "builtins") else str(name)


def _run_callback(callback: bytes, argument: bytes) -> Any:
    """Body of an ``on_success``/``on_failure`` task: call the callback with the result or error."""
    return loads(callback)(loads(argument))


# --------------------------------------------------------------------------------------------
# handles
# --------------------------------------------------------------------------------------------
class _HandleBase:
    __slots__ = ("_future", "_id", "queue")

    def __init__(self, task_id: str, queue: str, future: cf.Future[TaskResult]) -> None:
        self._id = task_id
        self.queue = queue
        self._future = future

    @property
    def id(self) -> str:
        """The task's id. A task with a ``key`` that another task held when it was stored
        (``flush()``) was not stored: its handle follows that task, and ``id`` is its id."""
        core = self._core()
        return self._id if core is None else core._aliases.get(self._id, self._id)

    def _core(self) -> AsyncOmniQ | None:
        return None

    def done(self) -> bool:
        """True once the task's final result is known to this process."""
        return self._future.done()

    @property
    def future(self) -> cf.Future[TaskResult]:
        """Resolves with the final ``TaskResult`` (for progress displays and callbacks)."""
        return self._future

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "pending"
        return f"<{type(self).__name__} {self.id} queue={self.queue!r} {state}>"

    @staticmethod
    def _value(result: TaskResult) -> Any:
        if result.status is TaskStatus.SUCCEEDED:
            return result.value
        raise TaskError.from_info(result.task_id, result.error)


class TaskHandle(_HandleBase):
    """A submitted task, seen from synchronous code. Waiting never needs a portal round trip."""

    __slots__ = ("_oq",)

    def __init__(self, oq: OmniQ, task_id: str, queue: str, future: cf.Future[TaskResult]) -> None:
        self._id, self.queue, self._future, self._oq = task_id, queue, future, oq  # 10,000 a map

    def _core(self) -> AsyncOmniQ | None:
        return self._oq._core

    def status(self) -> TaskStatus:
        if self._future.done() and self._future.exception() is None:
            return self._future.result().status
        return self._oq.status(self.id)

    def get(self, timeout: float | None = None) -> TaskResult:
        """The final ``TaskResult`` (whatever its status); ``TimeoutError`` past ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._oq._core
        if not self._future.done():
            core._poke_pickup()
        while True:
            if not self._future.done() and not core.is_open:
                # its instance closed: nothing here resolves the future; read storage instead
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                return _read_result(core, self.id, left)
            left = None if deadline is None else deadline - time.monotonic()
            try:
                return self._future.result(timeout=0.5 if left is None else max(0.0, min(left, 0.5)))
            except cf.TimeoutError:
                if left is not None and left <= 0.5:
                    raise TimeoutError(f"task {self.id} did not finish within {timeout} s") from None

    def result(self, timeout: float | None = None) -> Any:
        """The task's value, or ``TaskError`` (remote type, message, traceback) if it did not succeed."""
        return self._value(self.get(timeout))

    def cancel(self) -> bool:
        return self._oq.cancel(self.id)


class AsyncTaskHandle(_HandleBase):
    """A submitted task, seen from async code."""

    __slots__ = ("_oq",)

    def __init__(self, oq: AsyncOmniQ, task_id: str, queue: str, future: cf.Future[TaskResult]) -> None:
        self._id, self.queue, self._future, self._oq = task_id, queue, future, oq  # 10,000 a map

    def _core(self) -> AsyncOmniQ | None:
        return self._oq

    async def status(self) -> TaskStatus:
        if self._future.done() and self._future.exception() is None:
            return self._future.result().status
        return await self._oq.status(self.id)

    async def get(self, timeout: float | None = None) -> TaskResult:
        return await self._oq._wait(self.id, self._future, timeout)

    async def result(self, timeout: float | None = None) -> Any:
        return self._value(await self.get(timeout))

    async def cancel(self) -> bool:
        return await self._oq.cancel(self.id)

    def __await__(self) -> Any:
        return self.result().__await__()


# --------------------------------------------------------------------------------------------
# the orchestrator
# --------------------------------------------------------------------------------------------
class AsyncOmniQ:
    """The queue, its storage, and this process's workers. Use as ``async with AsyncOmniQ() as oq``."""

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
            queues = [_queue_name(q, "queues") for q in queues]
        self.config = load_config(
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
        self.tasks_url, self.results_url, self.events_url = resolve_urls(self.config)
        self._opened = False
        self._closing = False
        self._closed = False  # closed by close(): calls refuse (OmniQClosed) until open()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._buffer: deque[Task] = deque()
        self._kick_pending = False
        self._kick: asyncio.Event | None = None
        self._flush_lock: asyncio.Lock | None = None
        # the batch being stored, in its own task: a flush() whose caller is cancelled (a
        # timeout around it) stops waiting but never stops the write; the next flush waits for it
        self._storing: asyncio.Task[None] | None = None
        # futures live as long as someone holds them (a handle, a sweep): a producer that drops
        # its handles keeps nothing per task
        self._waiters = WeakFutures()
        # tasks handed over here that this instance's workers serve: close(drain=True) waits
        self._waiter_meta: dict[str, tuple[str, float, float]] = {}  # id -> (queue, eta, since)
        self._results_changed: anyio.Event | None = None
        self._bg: list[asyncio.Task[Any]] = []
        self._worker: Worker | None = None
        self._queue: TaskQueue
        self._results: ResultStore
        self._events_store: EventStore
        self._events: EventLogger
        self._scheduler: Scheduler
        self._pickup_now = anyio.Event()
        self.metrics = Metrics()  # this process's counters and timings (health(), Prometheus)
        self._expiries: list[float] = []  # heap of result expiry times written here
        self._facade_owned = False  # set by OmniQ: only it (re)opens, so a loop never outlives it
        self._stored_here: deque[tuple[Task, float, bool]] = deque()  # by _store_here, for the loop
        self._stored_here_kick = False
        # first task id -> how many tasks one call handed over (if > 1): they lie together in
        # the buffer (one deque.extend), and are stored or refused together
        self._units: dict[str, int] = {}
        # large values (blobs): bytes waiting to be stored with the first task that needs them,
        # digests this instance stored lately (not sent again), and the files this process reads
        self._blob_bytes: dict[str, bytes] = {}
        self._known_blobs = _Recent(self.BLOB_GRACE / 2)
        self.blobs = BlobCache()
        # ids of keyed tasks the queue did not store because another task held their key ->
        # that task's id: handles, futures and calls naming the first follow the second
        self._aliases: dict[str, str] = {}
        self._adopt_listeners: list[Callable[[Mapping[str, str]], None]] = []  # (sweeps)

    #: seconds a blob, or an owner of one, is kept however unreferenced: values are stored before
    #: the task that uses them, and a client skips re-sending a digest it stored lately
    BLOB_GRACE = 3600.0
    BLOB_SWEEP_EVERY = 300.0  # seconds between sweeps of unreferenced blobs (janitor)

    # --- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, source: OmniQConfig | Mapping[str, Any] | str | Any, **overrides: Any) -> AsyncOmniQ:
        """Build from a YAML path, a dict or an ``OmniQConfig``; ``OMNIQ_*`` variables override it,
        keyword arguments override both."""
        return cls(config=source, **overrides)

    @property
    def is_open(self) -> bool:
        return self._opened

    async def __aenter__(self) -> AsyncOmniQ:
        await self.open()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.close(drain=exc_type is None)

    async def open(self) -> None:
        """Connect storage and start this instance's worker slots (idempotent); reopens a
        closed instance."""
        if self._opened:
            return
        self._closed = False
        cfg = self.config
        if _log_level_asked(cfg):
            configure_logging(cfg.log_level)  # the library prints nothing unless asked
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._kick = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._results_changed = anyio.Event()
        self._queue, self._results, self._events_store = open_backends(
            self.tasks_url, self.results_url, self.events_url, storage_options=dict(cfg.storage_options)
        )
        # shared storage without a key: one WARNING, or a ConfigError with require_signing
        check_signing((self.tasks_url, self.results_url, self.events_url),
                      require=cfg.require_signing, log=log)
        connected: list[Any] = []
        try:
            for b in (self._queue, self._results, self._events_store):
                await b.connect()
                connected.append(b)
        except Exception as exc:
            for b in connected:
                with contextlib.suppress(Exception):
                    await b.close()
            if isinstance(exc, (StorageError, ConfigError)):
                raise
            raise StorageError(f"could not open storage {masked(self.tasks_url)}: {exc}") from exc
        # one backend holding tasks and results: a succeeded task holds its key only while its
        # result is stored (a caller handed its id would otherwise wait for a result that is gone)
        self._queue.results_here = self._queue is self._results
        self._events = EventLogger(self._events_store)
        self._events.add_listener(self.metrics.on_events)
        self._processor = EventProcessor(self._events, self._events_store)
        self._spawn(self._events.run())
        self._spawn(self._processor.run())
        self._spawn(self._flush_loop())
        self._spawn(self._janitor())
        self._spawn(self._pickup_loop())
        self._start_scheduler()
        if cfg.concurrency > 0:
            runner = make_runner(cfg.default_worker, cfg.concurrency)
            runner.blobs = self.blobs
            if hasattr(runner, "memory_limit"):  # runners that can watch memory: the default limit
                runner.memory_limit = cfg.memory_limit
            await runner.start()
            self._worker = Worker(
                queue=self._queue,
                results=self._results,
                events=self._events,
                runner=runner,
                queues=cfg.queues,
                lease=cfg.lease,
                on_results=self._on_results,
                make_follow_ups=self._follow_ups,
                metrics=self.metrics,
            )
            self._spawn(self._worker.claim_loop())
            self._spawn(self._worker.complete_loop())
            self._spawn(self._worker.maintain_loop())
        self._opened = True
        log.info(
            "omniq open: tasks=%s results=%s events=%s worker=%s x%d",
            masked(self.tasks_url), masked(self.results_url), masked(self.events_url),
            cfg.default_worker, cfg.concurrency,
        )

    def _spawn(self, coro: Awaitable[Any]) -> None:
        assert self._loop is not None
        t: asyncio.Task[Any] = self._loop.create_task(coro)  # type: ignore[arg-type]
        t.add_done_callback(_report_crash)
        self._bg.append(t)

    async def close(self, *, drain: bool = False, timeout: float | None = None) -> None:
        """Store what is buffered; with ``drain``, wait for this instance's ready tasks to finish
        first. Unstarted tasks go back to the queue; nothing accepted is lost. Later calls
        raise ``OmniQClosed`` until ``open()``."""
        self._closed = True
        if not self._opened or self._closing:
            return
        self._closing = True
        events_stuck = False
        try:
            await self.flush()
            if drain and self._worker is not None:
                with anyio.move_on_after(timeout):
                    await self._drain()
            if self._worker is not None:
                await self._worker.stop(graceful=drain)
            events_stuck = not await _within(CLOSE_STEP, "writing the last events", self.events_url,
                                             self._events.flush())
        finally:
            # close() cut short (its caller's timeout, a cancel) while tasks it accepted were
            # still on their way: store them before the storage closes under them
            if self._buffer or (self._storing is not None and not self._storing.done()):
                assert self._loop is not None
                rest = self._loop.create_task(self.flush())
                if not await _finish(rest, CLOSE_STEP):
                    log.warning("close: storing %d accepted tasks (%s) did not finish within %g s; "
                                "going on", len(self._buffer), masked(self.tasks_url), CLOSE_STEP)
            await _cancel_all(self._bg)
            self._bg.clear()
            if not events_stuck:  # (once timed out is enough)
                with contextlib.suppress(Exception):
                    await _within(CLOSE_STEP, "writing the last events", self.events_url, self._events.flush())
            for b, url in ((self._events_store, self.events_url), (self._results, self.results_url),
                           (self._queue, self.tasks_url)):
                with contextlib.suppress(Exception):
                    await _within(CLOSE_STEP, "closing", url, b.close())
            self._opened = False
            self._closing = False
            self._worker = None

    async def _drain(self) -> None:
        served = self.config.queues
        while True:
            now = time.time()
            waiting = [
                tid for tid, (q, eta, _) in list(self._waiter_meta.items())
                if eta <= now + 0.5 and (served is None or q in served)
            ]
            if not waiting:
                return
            await self._wait_changed(0.25)

    # --- submitting -----------------------------------------------------------------------------
    def _make_task(
        self,
        fn: Callable[..., Any],
        args: Any = (),
        kwargs: Any = None,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: Any = None,
        eta: Any = None,
        ttl: Any = _MISSING,
        depends_on: Any = (),
        retries: int = 0,
        retry_delay: Any = 1.0,
        timeout: Any = None,
        on_success: Callable[..., Any] | None = None,
        on_failure: Callable[..., Any] | None = None,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        result_ttl: Any = _MISSING,
        memory_limit: Any = None,
        task_id: str | None = None,
        payload: bytes | None = None,
        blobs: tuple[str, ...] = (),
        now: float | None = None,
    ) -> Task:
        if not callable(fn):
            raise ConfigError(f"fn={fn!r} is not valid: expected a callable")
        if not isinstance(args, (tuple, list)):
            raise ConfigError(f"args={args!r} is not valid: expected a tuple or list of positional arguments")
        if kwargs is None:
            kwargs = {}
        elif not isinstance(kwargs, Mapping):
            raise ConfigError(f"kwargs={kwargs!r} is not valid: expected a dict of keyword arguments")
        _queue_name(queue)
        _int("priority", priority)
        _int("retries", retries, minimum=0)
        if delay is not None and eta is not None:
            raise ConfigError("delay and eta are both set: give one of them (delay in seconds, eta as a time)")
        now = time.time() if now is None else now
        start = _epoch("eta", eta)
        d = _seconds("delay", delay, allow_zero=True)
        if d:
            start = now + d
        ttl_s = _seconds("ttl", self.config.task_ttl if ttl is _MISSING else ttl)
        rttl = _seconds("result_ttl", self.config.result_ttl if result_ttl is _MISSING else result_ttl)
        deps = _task_ids(depends_on)
        for name, cb in (("on_success", on_success), ("on_failure", on_failure)):
            if cb is not None and not callable(cb):
                raise ConfigError(f"{name}={cb!r} is not valid: expected a callable or None")
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigError(f"key={key!r} is not valid: expected a non-empty string or None")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ConfigError(f"metadata={metadata!r} is not valid: expected a dict or None")
        mem = parse_size(memory_limit, "memory_limit")
        pending = bool(deps) or (start is not None and start > now)
        if payload is None:
            sink = self._blob_sink()
            payload = dumps_call(fn, tuple(args), dict(kwargs), blobs=sink)
            blobs = self._hold_blobs(sink)
        return Task(
            id=task_id or ids.new_id(),
            payload=payload,
            blobs=blobs,
            name=_callable_name(fn),
            queue=queue,
            priority=priority,
            status=TaskStatus.PENDING if pending else TaskStatus.QUEUED,
            created_at=now,
            eta=start,
            expires_at=(now + ttl_s) if ttl_s else None,
            depends_on=deps,
            retries=retries,
            retry_delay=_seconds("retry_delay", retry_delay, allow_zero=True) or 0.0,
            timeout=_seconds("timeout", timeout),
            max_deliveries=self.config.max_deliveries,
            on_success=dumps(on_success) if on_success is not None else None,
            on_failure=dumps(on_failure) if on_failure is not None else None,
            key=key,
            result_ttl=rttl,
            memory_limit=mem,
            metadata=dict(metadata) if metadata else {},
        )

    def _blob_sink(self) -> BlobSink:
        return BlobSink(self._known_blobs)

    def _hold_blobs(self, sink: BlobSink) -> tuple[str, ...]:
        """Keep the bytes of a sink's new blobs until the flush stores them; the digests of the
        payload just made."""
        for d, data in sink.data.items():
            if data is not None:
                self._blob_bytes[d] = data
        return sink.take()

    async def _store_blobs(self, batch: Sequence[Task]) -> None:
        """Store the blobs a batch of tasks refers to (each once per storage) and record the
        tasks as their owners, before the tasks themselves."""
        owners = {"t:" + t.id: t.blobs for t in batch if t.blobs}
        if not owners:
            return
        q, now = self._queue, time.time()
        digests = list(dict.fromkeys(d for ds in owners.values() for d in ds))
        held = {d: self._blob_bytes[d] for d in digests if d in self._blob_bytes}
        if held:
            missing = await q.missing_blobs(list(held))
            if missing:
                await q.put_blobs({d: held[d] for d in missing}, next(iter(owners)), now=now)
            if self._worker is not None:  # this process's own workers need not fetch them back
                await anyio.to_thread.run_sync(self.blobs.seed, q, held)
        await q.add_blob_owners(owners, now=now)
        for d in digests:
            self._known_blobs[d] = now

    async def _with_blobs(self, results: Iterable[TaskResult | None]) -> None:
        """Give results whose values are partly blobs a way to read them: the blobs fetched
        into this process's cache (files, mapped when the value is read)."""
        for r in results:
            if r is not None and r.blobs and "_fetch" not in r.__dict__:
                paths = await self.blobs.ensure(self._results, r.blobs)
                # mapped when read (a mapping holds a file descriptor: not one per result now);
                # the cache keeps files used in the last ten minutes whatever its size
                r.__dict__["_fetch"] = path_fetch(paths)

    def _accept(self, tasks: Sequence[Task]) -> list[ResultFuture[TaskResult]]:
        """Register waiters and hand tasks to the flusher. Thread-safe; never blocks."""
        if self._closing and self._facade_owned:
            raise _ClosedMeanwhile()  # accepted now, it would miss the closing flush
        if self._closed and not self._opened:
            raise _closed_error(self)
        if not self._opened or self._loop is None or self._closing:
            raise RuntimeError("this OmniQ is not open (or is closing): use `async with AsyncOmniQ(...)` "
                               "or `await oq.open()`")
        futs = []
        waiters, meta = self._waiters, self._waiter_meta
        now = time.time()
        if len(tasks) > 1:
            self._units[tasks[0].id] = len(tasks)
        served, local = self.config.queues, self._worker is not None
        for t in tasks:
            f: ResultFuture[TaskResult] = ResultFuture()
            f.since = now
            if local and (served is None or t.queue in served):
                meta[t.id] = (t.queue, t.eta or 0.0, now)
            futs.append(f)
        waiters.add_many(zip([t.id for t in tasks], futs))
        self._buffer.extend(tasks)
        if not self._kick_pending:
            self._kick_pending = True
            assert self._kick is not None
            if threading.get_ident() == self._loop_thread:
                self._kick.set()
            else:
                self._loop.call_soon_threadsafe(self._kick.set)
        return futs

    async def _flush_loop(self) -> None:
        assert self._kick is not None
        while True:
            await self._kick.wait()
            self._kick.clear()
            self._kick_pending = False
            await self.flush()

    async def flush(self) -> None:
        """Wait until every task handed over so far is durably stored."""
        if not self._opened:
            return
        self._after_stored_here()  # tasks stored by enqueue() on another thread: their events
        assert self._flush_lock is not None and self._loop is not None
        async with self._flush_lock:
            while True:
                storing = self._storing
                if storing is None or storing.done():
                    self._storing = None
                    if not self._buffer:
                        return
                    batch: list[Task] = []
                    pop = self._buffer.popleft
                    with contextlib.suppress(IndexError):
                        while len(batch) < 20000:
                            batch.append(pop())
                    storing = self._storing = self._loop.create_task(self._store_batch(batch))
                # Cancelling this wait (asyncio.wait_for, an anyio scope) leaves the write going
                # on: the batch was taken from the buffer and nothing else would store it.
                await asyncio.shield(storing)

    async def _store_batch(self, batch: list[Task]) -> None:
        err: BaseException | None = None
        stamp = time.time()  # before the store: a fast worker's `started` must come after it
        dups: dict[str, str] = {}
        seal_tasks(batch)  # last, after every field is set (Executor.map's chunks set some late)
        for attempt in range(4):
            try:
                await self._store_blobs(batch)
                dups = await self._queue.enqueue(batch) or {}
                err = None
                break
            except StorageUnwritable as exc:  # disk full, read-only: retrying only delays the error
                err = exc
                break
            except ConfigError as exc:  # e.g. an unknown dependency: refused, not transient
                units = _split_units(batch, self._units)
                if len(units) > 1:
                    # store each call's tasks on their own, in order: only the refused call's
                    # tasks fail, and a task depending on an earlier call's still finds it
                    for unit in units:
                        await self._store_batch(unit)
                    return
                err = exc
                break
            except Exception as exc:
                err = exc
                await anyio.sleep(0.05 * 4**attempt)
        for t in batch:  # stored (or refused): their bytes are not needed here any more
            for d in t.blobs:
                self._blob_bytes.pop(d, None)
        i, starts = 0, self._units
        while i < len(batch):
            i += starts.pop(batch[i].id, 1)
        if i > len(batch) and self._buffer:  # the call's rest waits at the buffer's head
            starts[self._buffer[0].id] = i - len(batch)
        if err is not None:
            # Tell every waiter loudly rather than drop the tasks silently.
            if not isinstance(err, ConfigError):  # a refused task is the caller's error, raised to it
                log.error("could not store %d tasks in %s: %s", len(batch), masked(self.tasks_url), err)
            e = err if isinstance(err, (ConfigError, StorageError)) else StorageError(
                f"could not store tasks in {masked(self.tasks_url)}: {err}"
            )
            for t in batch:
                f = self._waiters.pop(t.id, None)
                self._waiter_meta.pop(t.id, None)
                if f is not None and not f.done():
                    f.set_exception(e)
            return
        if dups:
            self._adopt(dups)
            batch = [t for t in batch if t.id not in dups]
        kind = EventType.ENQUEUED.value
        self._events.emit_many([
            TaskEvent(task_id=t.id, type=kind, timestamp=stamp, queue=t.queue,
                      detail=None if t.key is None else f"key {t.key}")
            for t in batch
        ])
        self._queue.notify()
        with_deps = [t for t in batch if t.depends_on]
        if with_deps:
            await self._settle_stillborn(with_deps)

    def _adopt(self, dups: Mapping[str, str]) -> None:
        """Keyed tasks the queue did not store (``{new id: id of the task holding the key}``):
        their futures follow the existing tasks, and every call naming a new id acts on the
        existing task (``_aliases``). Their results are read like those of tasks run elsewhere."""
        aliases, waiters, meta = self._aliases, self._waiters, self._waiter_meta
        for new, old in dups.items():
            aliases[new] = old
            f = waiters.pop(new)
            m = meta.pop(new, None)
            if f is None:
                continue
            g = waiters.get(old)
            if g is None:
                waiters[old] = f
                if m is not None:
                    meta.setdefault(old, m)
            elif g is not f:  # someone here waits for it already: resolve with that future
                g.add_done_callback(functools.partial(_pass_on, f))
        self._poke_pickup()
        for listener in list(self._adopt_listeners):  # on the loop: keep it quick
            try:
                listener(dups)
            except Exception:
                log.exception("adoption listener %r failed", listener)

    def _resolve_id(self, task_id: str) -> str:
        """The id a call naming ``task_id`` acts on (see ``_adopt``)."""
        return self._aliases.get(task_id, task_id) if self._aliases else task_id

    async def _settle_stillborn(self, tasks: list[Task]) -> None:
        """Tasks stored CANCELLED at once because a dependency had already failed, been
        cancelled or expired: give them their CANCELLED result (every task ends with one)."""
        states = await self._queue.statuses([t.id for t in tasks])
        dead = [t for t in tasks if states.get(t.id) is TaskStatus.CANCELLED]
        if not dead:
            return
        deps = await self._queue.statuses(sorted({d for t in dead for d in t.depends_on}))
        bad = {TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
        pairs = [(t, next((d for d in t.depends_on if deps.get(d) in bad), t.depends_on[0])) for t in dead]
        await self._record_cancelled(pairs)

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
        ttl: float | dt.timedelta | None = _MISSING,
        depends_on: Any = (),
        retries: int = 0,
        retry_delay: float = 1.0,
        timeout: float | None = None,
        on_success: Callable[..., Any] | None = None,
        on_failure: Callable[..., Any] | None = None,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        result_ttl: float | dt.timedelta | None = _MISSING,
        memory_limit: int | str | None = None,
    ) -> str:
        """Store one task durably and return its id (time-ordered).

        ``key``: an idempotency key. While a task with this key is pending, queued or running,
        or once it succeeded, no new task is stored and its id is returned; after it failed, was
        cancelled or expired, a new task is made. ``memory_limit``: bytes (or ``"4GB"``,
        ``"512MB"``) the task may use; over it, it fails with a memory error naming the limit
        (None: the worker's ``memory_limit``)."""
        task = self._make_task(
            fn, args, kwargs, queue=queue, priority=priority, delay=delay, eta=eta, ttl=ttl,
            depends_on=depends_on, retries=retries, retry_delay=retry_delay, timeout=timeout,
            on_success=on_success, on_failure=on_failure, key=key, metadata=metadata, result_ttl=result_ttl,
            memory_limit=memory_limit,
        )
        return await self._enqueue_task(task)

    async def _enqueue_task(self, task: Task) -> str:
        await self._ensure_open()
        (fut,) = self._accept([task])
        await self.flush()
        if fut.done() and fut.exception() is not None:
            raise fut.exception()  # type: ignore[misc]
        tid = self._resolve_id(task.id)
        if not self._serves(task.queue):
            # nobody here will run it and no handle was asked for: keep no waiter (a producer
            # process would otherwise hold one per task forever); get_result(wait=True) or
            # handle() make one on demand
            self._waiters.pop(tid, None)
            self._waiter_meta.pop(tid, None)
        return tid

    def _store_here(self, task: Task) -> bool:
        """The sync ``enqueue()``'s fast path: store ``task`` on the calling thread (see
        ``TaskQueue.enqueue_blocking``) when the backend can and nothing handed over earlier is
        still on its way to storage, so order and dependencies hold. False: go through the loop."""
        q = self._queue
        lock = self._flush_lock
        if (
            not self._opened or self._closing or not q.blocking_enqueue or task.depends_on or task.blobs
            or task.key is not None or self._buffer or lock is None or lock.locked()
            or (self._storing is not None and not self._storing.done())  # a cut-short flush's batch
            or threading.get_ident() == self._loop_thread
        ):
            return False
        serves = self._serves(task.queue)
        stamp = time.time()  # before the store, as for batches: `enqueued` precedes `started`
        if serves:  # a worker here runs it: close(drain=True) waits for it
            self._waiter_meta[task.id] = (task.queue, task.eta or 0.0, stamp)
        seal_tasks((task,))
        try:
            ready = q.enqueue_blocking([task])
        except BaseException:
            self._waiter_meta.pop(task.id, None)
            raise
        if ready is None:  # the backend is closing: take the loop's way
            self._waiter_meta.pop(task.id, None)
            return False
        self._stored_here.append((task, stamp, ready))
        if not self._stored_here_kick:
            loop = self._loop
            assert loop is not None
            self._stored_here_kick = True
            try:
                if serves:  # a worker here waits for it: wake the loop now
                    loop.call_soon_threadsafe(self._after_stored_here)
                else:  # only events to write: one wake-up per 20 ms, not one per call (~0.3 ms each)
                    loop.call_soon_threadsafe(loop.call_later, 0.02, self._after_stored_here)
            except RuntimeError:  # the loop closed meanwhile: the task is stored; its event is not
                self._stored_here_kick = False
        return True

    def _after_stored_here(self) -> None:
        """On the loop: the events and wake-ups of tasks ``_store_here`` stored."""
        self._stored_here_kick = False
        items = []
        with contextlib.suppress(IndexError):
            while True:
                items.append(self._stored_here.popleft())
        if not items:
            return
        self._events.emit_many([
            TaskEvent(task_id=t.id, type=EventType.ENQUEUED.value, timestamp=stamp, queue=t.queue)
            for t, stamp, _ in items
        ])
        self._queue.after_blocking_enqueue([t for t, _, _ in items], any(r for _, _, r in items))

    def _serves(self, queue: str) -> bool:
        """True when this instance's own workers take tasks from ``queue``."""
        served = self.config.queues
        return self._worker is not None and (served is None or queue in served)

    async def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncTaskHandle:
        """Run ``fn(*args, **kwargs)`` on a worker; returns at once (stored within milliseconds)."""
        task = self._make_task(fn, args, kwargs)
        await self._ensure_open()
        (fut,) = self._accept([task])
        return AsyncTaskHandle(self, task.id, task.queue, fut)

    async def map(
        self, fn: Callable[..., Any], iterable: Iterable[Any], *, chunksize: int | str = 1, **options: Any
    ) -> list[AsyncTaskHandle]:
        """``fn(item)`` for each item, enqueued as one batch; handles in input order.
        ``chunksize`` > 1 or ``"auto"``: that many items per task (see ``omniq._chunks``)."""
        await self._ensure_open()
        with bulk():
            return [AsyncTaskHandle(self, *h) for h in self._map(fn, iterable, chunksize, options, self._accept)]

    def _map(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: Any,
        options: Mapping[str, Any],
        accept: Callable[[Sequence[Task]], list[ResultFuture[TaskResult]]],
    ) -> list[tuple[str, str, cf.Future[TaskResult]]]:
        """``(id, queue, future)`` per item of a ``map``, its tasks handed to ``accept``."""
        none: dict[str, Any] = {}  # one empty kwargs for every call: only read, never kept
        key = options.get("key")
        if type(chunksize) is int and chunksize == 1:
            if key is None:
                tasks = self.build_tasks(fn, [((item,), none) for item in iterable], **options)
            else:
                items = list(iterable)
                opts = {k: v for k, v in options.items() if k != "key"}
                tasks = self.build_tasks(fn, [((item,), none) for item in items], keys=_map_keys(key, items), **opts)
            return [(t.id, t.queue, f) for t, f in zip(tasks, accept(tasks))]
        if key is not None:
            raise ConfigError(f"key is not valid with chunksize={chunksize!r}: a chunk is one task for many "
                              "items; map with chunksize=1 to key each item")
        items = list(iterable)
        size = _chunks.chunk_length(chunksize, len(items), self.config.concurrency or os.cpu_count() or 1)
        opts = dict(options)
        retries = _int("retries", opts.pop("retries", 0), minimum=0)
        retry_delay = _seconds("retry_delay", opts.pop("retry_delay", 1.0), allow_zero=True) or 0.0
        timeout = _seconds("timeout", opts.pop("timeout", None))
        if not callable(fn):
            raise ConfigError(f"fn={fn!r} is not valid: expected a callable")
        for name in ("on_success", "on_failure"):
            if opts.get(name) is not None:
                raise ConfigError(f"{name} is not valid with chunksize={chunksize!r}: a chunk is one task "
                                  "for many items; map with chunksize=1 for a callback per item")
        if not items:
            return []
        sink = self._blob_sink()
        fn_payload = dumps_call(fn, blobs=sink)  # the function once; each chunk carries its items
        fn_blobs = self._hold_blobs(sink)
        runner = _chunks.run_chunk_async if inspect.iscoroutinefunction(fn) else _chunks.run_chunk
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        tasks = self.build_tasks(runner, [((fn_payload, c, retries, retry_delay), none) for c in chunks], **opts)
        name = _callable_name(fn)
        tasks = [
            msgspec.structs.replace(t, name=name, timeout=timeout * len(c) if timeout else None,
                                    blobs=tuple(dict.fromkeys(t.blobs + fn_blobs)) if fn_blobs else t.blobs)
            for t, c in zip(tasks, chunks)
        ]
        out: list[tuple[str, str, cf.Future[TaskResult]]] = []
        for t, f, c in zip(tasks, accept(tasks), chunks):
            futs: list[ResultFuture[TaskResult]] = [ResultFuture() for _ in c]
            f.add_done_callback(functools.partial(_resolve_items, futs, n=len(c)))
            out += [(_chunks.item_id(t.id, i), t.queue, g) for i, g in enumerate(futs)]
        return out

    def build_tasks(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
        *,
        keys: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> list[Task]:
        """Tasks for ``fn(*args, **kwargs)`` per ``(args, kwargs)`` in ``calls``, validated once,
        with consecutive time-ordered ids (for ``map`` and sweeps; hand them to ``submit_tasks``)."""
        if not callable(fn):
            raise ConfigError(f"fn={fn!r} is not valid: expected a callable")
        if keys is not None:
            if isinstance(keys, str) or len(keys) != len(calls):
                n = "a str" if isinstance(keys, str) else f"{len(keys)} entries"
                raise ConfigError(f"keys has {n} for {len(calls)} calls: give one key per call")
            if not all(type(k) is str and k for k in keys):
                bad = next(k for k in keys if k is not None and (not isinstance(k, str) or not k))
                raise ConfigError(f"keys contains {bad!r}: each key must be a non-empty str or None")
        if not calls:
            return []
        now = time.time()
        for i, (args, kwargs) in enumerate(calls):
            if (type(args) is not tuple or type(kwargs) is not dict) and (
                not isinstance(args, (tuple, list)) or not isinstance(kwargs, Mapping)
            ):
                raise ConfigError(f"calls[{i}] is not valid: expected (args tuple, kwargs dict)")
        sink = self._blob_sink()
        payloads = dumps_calls(fn, calls, blobs=sink)  # a by-value function is pickled once for the batch
        self._hold_blobs(sink)
        per_call = sink.per_call
        task_ids = ids.new_ids(len(calls))
        per_md = isinstance(metadata, Sequence)
        # validate the shared options once, then stamp out copies
        template = self._make_task(
            fn, calls[0][0], calls[0][1], task_id=task_ids[0], now=now, payload=payloads[0], blobs=per_call[0],
            key=keys[0] if keys is not None else None,
            metadata=metadata[0] if per_md else metadata, **options,  # type: ignore[index,arg-type]
        )
        replace = msgspec.structs.replace
        out = [template]
        if keys is None and not metadata:  # map: only id and payload differ (metadata: read-only)
            if any(per_call):
                out += [replace(template, id=i, payload=p, blobs=b)
                        for i, p, b in zip(task_ids[1:], payloads[1:], per_call[1:])]
            else:
                out += [replace(template, id=i, payload=p) for i, p in zip(task_ids[1:], payloads[1:])]
            return out
        for i in range(1, len(calls)):
            md = metadata[i] if per_md else metadata  # type: ignore[index]
            out.append(replace(
                template, id=task_ids[i], payload=payloads[i], blobs=per_call[i],
                key=keys[i] if keys is not None else None,
                metadata=dict(md) if md else {},  # type: ignore[arg-type]
            ))
        return out

    def submit_tasks(self, tasks: Sequence[Task]) -> list[ResultFuture[TaskResult]]:
        """Hand built tasks to the batching buffer (thread-safe, returns at once); one future
        per task, resolved with its final ``TaskResult``."""
        return self._accept(tasks)

    async def find_results(self, key_prefix: str) -> list[TaskResult]:
        """Stored results whose ``key`` starts with ``key_prefix`` (how sweeps resume)."""
        await self._ensure_open()
        found = await self._results.find_results(key_prefix=key_prefix)
        await self._with_blobs(found)
        return found

    async def _ensure_open(self) -> None:
        if self._facade_owned and (not self._opened or self._closing):
            raise _ClosedMeanwhile()  # the sync facade (re)opens it, with its loop thread
        if not self._opened:
            if self._closed:
                raise _closed_error(self)
            await self.open()

    # --- results --------------------------------------------------------------------------------
    def _on_results(self, results: Sequence[TaskResult]) -> None:
        """Called on the loop after results are stored: wake waiters in this process."""
        waiters, meta = self._waiters, self._waiter_meta
        ready: list[tuple[cf.Future[TaskResult], TaskResult]] = []
        for r in results:
            if r.expires_at is not None:
                heapq.heappush(self._expiries, r.expires_at)  # the janitor purges as each passes
            meta.pop(r.task_id, None)
            f = waiters.pop(r.task_id, None)
            if f is not None:
                ready.append((f, r))
        resolve_many(ready)
        if self._results_changed is not None:
            self._results_changed.set()
            self._results_changed = anyio.Event()

    async def _wait_changed(self, timeout: float) -> None:
        ev = self._results_changed
        assert ev is not None
        with anyio.move_on_after(timeout):
            await ev.wait()

    def _future_for(self, task_id: str) -> cf.Future[TaskResult]:
        item = _chunks.split_item_id(task_id)
        if item is not None:  # resolved from its chunk's future
            g: ResultFuture[TaskResult] = ResultFuture()
            self._future_for(item[0]).add_done_callback(functools.partial(_resolve_items, [g], start=item[1]))
            return g
        task_id = self._resolve_id(task_id)
        f = self._waiters.get(task_id)
        if f is None:
            f = ResultFuture()  # "since" 0: the pickup loop reads its result at once
            self._waiters[task_id] = f
            self._poke_pickup()
            if self._loop is not None and self._opened:  # an id never stored must not wait for ever
                self._spawn(self._refuse_unknown(task_id, f))
        return f

    async def _refuse_unknown(self, task_id: str, f: cf.Future[TaskResult]) -> None:
        """Fail a waiter on ``task_id`` with ``ConfigError`` (as ``status()`` does) when
        neither the task queue nor the result store has ever seen that id."""
        try:
            await self.flush()  # (a task submitted here a moment ago is stored first)
            if task_id in await self._queue.statuses([task_id]) or f.done():
                return
            if await self._results.get_result(task_id) is not None or f.done():
                return
        except Exception:  # storage trouble: the waiter keeps waiting (the pickup loop says so)
            return
        if self._waiters.get(task_id) is f:
            self._waiters.pop(task_id, None)
        with contextlib.suppress(cf.InvalidStateError):
            f.set_exception(ConfigError(f"task_id={task_id!r} is not known to {masked(self.tasks_url)}"))
        if self._results_changed is not None:  # wake get_result(wait=True) now
            self._results_changed.set()
            self._results_changed = anyio.Event()

    async def _wait(self, task_id: str, fut: cf.Future[TaskResult], timeout: float | None) -> TaskResult:
        self._poke_pickup()  # someone is waiting: look for results finished elsewhere now
        with anyio.move_on_after(timeout) as scope:
            while not fut.done():
                await self._wait_changed(0.25)
        if scope.cancelled_caught and not fut.done():
            raise TimeoutError(f"task {task_id} did not finish within {timeout} s")
        return fut.result()

    async def get_result(self, task_id: str, wait: bool = False, timeout: float | None = None) -> TaskResult | None:
        """The task's final result; ``None`` if not final yet (and ``wait`` is False).
        With ``wait``, block until it is final; ``TimeoutError`` past ``timeout``."""
        await self._ensure_open()
        item = _chunks.split_item_id(task_id)
        if item is not None:  # an item of a chunked map: cut from its chunk's result
            chunk = await self.get_result(item[0], wait, timeout)
            return None if chunk is None else _chunks.item_result(chunk, item[1])
        task_id = self._resolve_id(task_id)
        f = self._waiters.get(task_id)
        if f is not None and f.done():
            return f.result()
        r = await self._results.get_result(task_id)
        if r is not None or not wait:
            await self._with_blobs([r])
            return r
        r = await self._wait(task_id, self._future_for(task_id), timeout)
        await self._with_blobs([r])
        return r

    def handle(self, task_id: str) -> AsyncTaskHandle:
        """A handle for a task id (from ``enqueue`` or another process)."""
        return AsyncTaskHandle(self, self._resolve_id(task_id), "", self._future_for(task_id))

    async def status(self, task_id: str) -> TaskStatus:
        """Current status; ``ConfigError`` for an id this storage has never seen."""
        await self._ensure_open()
        item = _chunks.split_item_id(task_id)
        if item is not None:  # its chunk's, unless the chunk ran and this item raised
            chunk = await self.status(item[0])
            mine = await self.get_result(task_id) if chunk is TaskStatus.SUCCEEDED else None
            return chunk if mine is None else mine.status
        await self.flush()
        task_id = self._resolve_id(task_id)  # (a keyed task of the batch just stored, too)
        st = (await self._queue.statuses([task_id])).get(task_id)
        if st is None:
            r = await self._results.get_result(task_id)
            if r is None:
                raise ConfigError(f"task_id={task_id!r} is not known to {masked(self.tasks_url)}")
            return r.status
        return st

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task: a queued one never runs; a running one is stopped (its process
        child is terminated). False if it had already finished or is unknown."""
        return await self.cancel_many([task_id]) == 1

    async def cancel_many(self, task_ids: Sequence[str]) -> int:
        """``cancel`` for many tasks in one storage call; returns how many were not final yet.
        Dependents of cancelled tasks are cancelled too (with the cause in their error)."""
        await self._ensure_open()
        await self.flush()
        # an item of a chunked map is cancelled with its chunk
        roots = list(dict.fromkeys(self._resolve_id(item[0] if (item := _chunks.split_item_id(t)) else t)
                                   for t in task_ids))
        root_set = set(roots)
        changed = await self._queue.cancel(roots, now=time.time())
        hit = [t for t in roots if (st := changed.get(t)) is not None and not st.is_final]
        if self._worker is not None:
            for t in hit:
                if changed[t] is TaskStatus.RUNNING:  # remote workers notice cancel_requested
                    await self._worker.runner.cancel(t)
        pairs = []
        for tid, st in changed.items():
            if st.is_final or st is TaskStatus.RUNNING:
                continue
            task = await self._queue.get_task(tid)
            if task is not None:
                pairs.append((task, tid if tid in root_set else roots[0]))
        if pairs:
            await self._record_cancelled(pairs)
        return len(hit)

    async def events(
        self, task_id: str | None = None, since: float | dt.datetime | None = None, types: Sequence[str] | None = None
    ) -> list[TaskEvent]:
        """Recorded lifecycle events, in time order."""
        await self._ensure_open()
        self._after_stored_here()
        await self._events.flush()
        if task_id is not None:
            task_id = self._resolve_id(task_id)
        return await self._events_store.query_events(task_id=task_id, since=_epoch("since", since), types=types)

    def subscribe(
        self,
        task_id: str | None = None,
        queue: str | None = None,
        types: Sequence[str] | None = None,
        *,
        buffer: int = 10_000,
    ) -> AsyncIterator[TaskEvent]:
        """Live events, from this process at once and from others through the event store:
        ``async for ev in oq.subscribe(task_id=...)``. A subscriber that falls more than
        ``buffer`` events behind gets a ``dropped`` event saying how many it missed."""
        if not self._opened:
            raise RuntimeError("open the AsyncOmniQ before subscribing (async with AsyncOmniQ(...))")
        sub = self._processor.subscribe(task_id, queue, types, buffer=buffer)
        return aiter_subscription(self._processor, sub)

    def on_event(self, callback: Callable[[TaskEvent], Any], types: Sequence[str] | None = None) -> Callable[[], None]:
        """Call ``callback(event)`` on OmniQ's loop for every event, from this process or any
        other sharing the event store (keep it quick). Returns a function that unsubscribes."""
        if not self._opened:
            raise RuntimeError("open the OmniQ before registering event callbacks")
        sub = self._processor.subscribe(None, None, types)

        async def pump() -> None:
            async for ev in aiter_subscription(self._processor, sub):
                try:
                    callback(ev)
                except Exception:
                    log.exception("event callback %r failed", callback)

        assert self._loop is not None

        def start() -> None:
            self._spawn(pump())

        if threading.get_ident() == self._loop_thread:
            start()
        else:
            self._loop.call_soon_threadsafe(start)

        def unsubscribe() -> None:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._processor.unsubscribe, sub)

        return unsubscribe

    async def health(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """One picture of the queue for people and dashboards; never raises for a storage
        that is down (that is what it reports): workers (alive = heartbeat within a lease),
        queue depths by status, oldest queued age, leases overrun, schedules with their last
        outcome, storage reachability, and this process's metrics."""
        await self._ensure_open()
        now = time.time()
        probes: dict[str, Any] = {}

        async def probe(part: str, url: str, call: Callable[[], Awaitable[Any]]) -> Any:
            began = time.perf_counter()
            try:
                with anyio.fail_after(timeout):
                    value = await call()
            except Exception as exc:  # TimeoutError included: report, do not raise
                if part not in probes or probes[part]["ok"]:
                    probes[part] = {"url": masked(url), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
                return None
            if part not in probes:
                probes[part] = {"url": masked(url), "ok": True,
                                "latency_ms": round((time.perf_counter() - began) * 1000, 3)}
            return value

        with anyio.move_on_after(timeout), contextlib.suppress(Exception):
            await self.flush()  # counts include what was just submitted (a cut-short flush loses nothing)
        q, ev = self._queue, self._events_store
        calls: dict[str, tuple[str, str, Callable[[], Awaitable[Any]]]] = {
            "counts": ("tasks", self.tasks_url, q.counts),
            "result": ("results", self.results_url, lambda: self._results.get_result("omniq-health-probe")),
            "event": ("events", self.events_url, lambda: ev.query_events(task_id="omniq-health-probe", limit=1)),
            "workers": ("tasks", self.tasks_url, q.workers),
            "oldest": ("tasks", self.tasks_url, q.oldest_queued),
            "overrun": ("tasks", self.tasks_url, lambda: q.overrun(now=now)),
            "reaped": ("events", self.events_url, lambda: ev.query_events(
                since=now - OVERRUN_WINDOW, types=[EventType.REQUEUED.value, EventType.FAILED.value], limit=10_000)),
            "schedules": ("tasks", self.tasks_url, self._scheduler.list),
        }
        got: dict[str, Any] = {}

        async def run(key: str) -> None:
            got[key] = await probe(*calls[key])

        # all at once: a storage that hangs costs one timeout, not one per question
        async with anyio.create_task_group() as tg:
            for key in calls:
                tg.start_soon(run, key)
        probes = {part: probes[part] for part in ("tasks", "results", "events") if part in probes}
        counts, oldest, overrun, reaped = got["counts"], got["oldest"] or {}, got["overrun"], got["reaped"]
        worker_rows, schedules = got["workers"] or [], got["schedules"] or []
        last_ids = [s["last_task_id"] for s in schedules if s.get("last_task_id")]
        last = (await probe("tasks", self.tasks_url, lambda: q.statuses(last_ids)) or {}) if last_ids else {}
        for s in schedules:
            st = last.get(s.get("last_task_id") or "")
            s["last_outcome"] = st.value if st is not None else None
        return {
            "time": now,
            "ok": all(p["ok"] for p in probes.values()),
            "storage": probes,
            "workers": [
                {
                    "id": w.id, "kind": w.kind, "host": w.host, "pid": w.pid, "slots": w.slots,
                    "queues": w.queues, "alive": now - w.last_heartbeat < (w.lease or self.config.lease),
                    "last_heartbeat": w.last_heartbeat, "started_at": w.started_at, "missing": w.missing,
                }
                for w in worker_rows
            ],
            "queues": counts or {},
            "oldest_queued_age": {name: now - t for name, t in oldest.items()},
            "leases_overrun": _overruns(now, overrun, reaped or []),
            "schedules": schedules,
            "metrics": self.metrics.snapshot(),
        }

    # --- schedules ------------------------------------------------------------------------------
    def _start_scheduler(self) -> None:
        self._scheduler = Scheduler(self._queue, self._schedule_task, on_fired=self._scheduled)
        self._spawn(self._scheduler.run())

    def _scheduled(self, task: Task) -> None:
        self._events.emit(task.id, EventType.ENQUEUED, queue=task.queue,
                          detail=f"schedule {task.metadata.get('schedule')}", timestamp=task.created_at)

    def _schedule_task(self, schedule: Any, slot: float) -> Task:
        check_schedule(schedule)  # its call was not swapped for another in storage
        now = time.time()
        opts = dict(schedule.options or {})
        task = Task(
            id=ids.new_id(),
            payload=schedule.payload,
            name=schedule.func_name or schedule.name,
            queue=schedule.queue,
            priority=schedule.priority,
            created_at=now,
            max_deliveries=self.config.max_deliveries,
            retries=int(opts.get("retries") or 0),
            timeout=opts.get("timeout"),
            expires_at=(now + float(opts["ttl"])) if opts.get("ttl") else None,
            metadata={"schedule": schedule.id, "slot": slot},
        )
        seal_tasks((task,))
        return task

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
        await self._ensure_open()
        if not callable(fn):
            raise ConfigError(f"fn={fn!r} is not valid: expected a callable")
        _queue_name(queue)
        return await self._scheduler.add(
            payload=dumps_call(fn, tuple(args), dict(kwargs or {})),
            func_name=_callable_name(fn),
            name=name or default_schedule_name(fn),
            cron=cron, interval=interval, at=at, timezone=timezone,
            queue=queue, priority=_int("priority", priority),
            options={
                "retries": _int("retries", retries, minimum=0),
                "timeout": _seconds("timeout", timeout),
                "ttl": _seconds("ttl", ttl),
            },
        )

    async def pause_schedule(self, schedule_id: str) -> bool:
        await self._ensure_open()
        return await self._scheduler.pause(schedule_id)

    async def resume_schedule(self, schedule_id: str) -> bool:
        await self._ensure_open()
        return await self._scheduler.resume(schedule_id)

    async def delete_schedule(self, schedule_id: str) -> bool:
        await self._ensure_open()
        return await self._scheduler.delete(schedule_id)

    async def schedules(self) -> list[dict[str, Any]]:
        """One row per schedule, with its next run."""
        await self._ensure_open()
        return await self._scheduler.list()

    # --- sweeps -------------------------------------------------------------------------------
    async def sweep(self, fn: Callable[..., Any], grid: Any, name: str | None = None, **options: Any) -> Any:
        """Run ``fn(**point)`` for every point of ``grid``; finished points of an earlier run
        of the same sweep (same name, function and parameters) are reused. Returns an
        ``AsyncSweep``."""
        from .sweep import AsyncSweep

        await self._ensure_open()
        return await AsyncSweep.start(self, fn, grid, name=name, **options)

    # --- callbacks and housekeeping ----------------------------------------------------------
    def _follow_ups(self, result: TaskResult, task: Task) -> list[Task]:
        """Tasks for ``on_success`` / ``on_failure`` callbacks of a finished task."""
        if result.status is TaskStatus.SUCCEEDED and task.on_success is not None:
            arg = result.payload if result.payload is not None else dumps(None)
            cb = task.on_success
        elif result.status is TaskStatus.FAILED and task.on_failure is not None:
            arg = dumps(TaskError.from_info(task.id, result.error))
            cb = task.on_failure
        else:
            return []
        return [
            Task(
                id=ids.new_id(),
                payload=dumps_call(_run_callback, (cb, arg), {}),
                name=f"{task.name}:callback",
                queue=task.queue,
                priority=task.priority,
                created_at=time.time(),
                max_deliveries=task.max_deliveries,
                metadata={"callback_of": task.id},
            )
        ]

    async def _janitor(self) -> None:
        """Leases that lapsed, TTLs that ran out, and results finished by other processes."""
        last_purge = 0.0
        last_sweep = time.time()
        outage = Outage(log, "housekeeping", masked(self.tasks_url))
        while True:
            await anyio.sleep(0.5)
            now = time.time()
            try:
                reaped = await self._queue.reap(now=now)
                for t in reaped.requeued:  # stamped at the reap: a worker woken by it may
                    # claim the task and emit `started` before this coroutine resumes
                    self._events.emit(t.id, EventType.REQUEUED, queue=t.queue, detail="lease lapsed", timestamp=now)
                if reaped.requeued:
                    self._queue.notify()
                if reaped.dead:
                    from .models import ErrorInfo

                    dead = [
                        TaskResult(
                            task_id=t.id, status=TaskStatus.FAILED, queue=t.queue, name=t.name, key=t.key,
                            attempts=t.attempts, finished_at=now, metadata=t.metadata,
                            error=ErrorInfo(
                                "WorkerDied",
                                f"worker {t.worker} stopped responding; delivered {t.deliveries} times "
                                f"(max_deliveries={t.max_deliveries})",
                            ),
                        )
                        for t in reaped.dead
                    ]
                    await self._results.put_results(dead)
                    for r in dead:
                        self._events.emit(r.task_id, EventType.FAILED, queue=r.queue, detail="WorkerDied")
                    self._on_results(dead)
                if reaped.cancelled:
                    await self._record_cancelled(reaped.cancelled)
                expired = await self._queue.expire(now=now)
                if expired:
                    from .models import ErrorInfo

                    exp = [
                        TaskResult(
                            task_id=t.id, status=TaskStatus.EXPIRED, queue=t.queue, name=t.name, key=t.key,
                            finished_at=now, metadata=t.metadata,
                            error=ErrorInfo("TaskExpired", "its ttl ran out before it started"),
                        )
                        for t in expired
                        if t.status is TaskStatus.EXPIRED
                    ]
                    await self._results.put_results(exp)
                    for r in exp:
                        self._events.emit(r.task_id, EventType.EXPIRED, queue=r.queue)
                    self._on_results(exp)
                    dependents = [t for t in expired if t.status is TaskStatus.CANCELLED]
                    if dependents:
                        gone = {t.id for t in expired}
                        await self._record_cancelled([
                            (t, next((d for d in t.depends_on if d in gone), exp[0].task_id if exp else ""))
                            for t in dependents
                        ])
                expiries = self._expiries
                if now - last_purge > self._purge_every() or (expiries and now >= expiries[0]):
                    while expiries and expiries[0] <= now:
                        heapq.heappop(expiries)
                    last_purge = now
                    await self._results.purge_results(now=now)
                if now - last_sweep > self.BLOB_SWEEP_EVERY:
                    last_sweep = now
                    await self.sweep_blobs(now=now)
                outage.ok()
            except Exception as exc:
                outage.failed(exc)

    async def sweep_blobs(self, *, now: float | None = None) -> int:
        """Remove blobs no unfinished task and no stored result refers to any more (older than
        ``BLOB_GRACE``); the janitor calls this every ``BLOB_SWEEP_EVERY`` seconds."""
        now = time.time() if now is None else now
        removed = 0
        stores = {id(s): s for s in (self._queue, self._results)}
        for store in stores.values():
            with contextlib.suppress(NotImplementedError):
                removed += await store.sweep_blobs(older_than=now - self.BLOB_GRACE)
        return removed

    def _purge_every(self) -> float:
        """Purge expired results at least as often as the default result TTL (0.5-60 s)."""
        return max(0.5, min(60.0, self.config.result_ttl or 60.0))

    async def _record_cancelled(self, pairs: Sequence[tuple[Task, str]]) -> None:
        res = cancelled_results(pairs)
        for r, (t, cause) in zip(res, pairs):
            if t.id == cause and r.error is not None:
                r.error = type(r.error)("TaskCancelled", "cancelled by user")
        await self._results.put_results(res)
        for r in res:
            self._events.emit(r.task_id, EventType.CANCELLED, queue=r.queue,
                              detail=r.error.message if r.error else None)
        self._on_results(res)

    def _poke_pickup(self) -> None:
        """Someone waits on a result (from any thread): look for results made elsewhere now."""
        loop = self._loop
        if loop is None or not self._opened:
            return
        if threading.get_ident() == self._loop_thread:
            self._pickup_now.set()
        else:
            with contextlib.suppress(RuntimeError):  # loop closing
                loop.call_soon_threadsafe(self._pickup_now.set)

    async def _pickup_loop(self) -> None:
        """Resolve waiters whose tasks another process (an ``omniq worker``) finished: read their
        results in batches of 1,000, every 50 ms while results keep coming, backing off to 1 s
        when none do. Tasks this instance's own runner holds are left to it."""
        delay = 0.05
        outage = Outage(log, "reading results", masked(self.results_url))
        while True:
            with anyio.move_on_after(delay):
                await self._pickup_now.wait()
            self._pickup_now = anyio.Event()
            now = time.time()
            held = set(self._worker.runner.held()) if self._worker is not None else set()
            # tasks our own runner holds report themselves; look up the rest (run elsewhere):
            # those someone waits for, and those close(drain=True) would wait for
            # (live() copies the map in one C-level step: producer threads may be adding)
            since = {tid: f.since for tid, f in self._waiters.live()}
            since.update((tid, m[2]) for tid, m in list(self._waiter_meta.items()))
            stale = [tid for tid, t in since.items() if now - t > 0.05 and tid not in held]
            found_any = False
            try:
                for i in range(0, len(stale), 1000):
                    found = await self._results.get_results(stale[i : i + 1000])
                    if found:
                        found_any = True
                        await self._with_blobs(found.values())
                        self._on_results(list(found.values()))
                if stale:  # only a call that was made says the storage works again
                    outage.ok()
            except Exception as exc:
                outage.failed(exc)
            # someone waits on a few tasks run elsewhere: look at least 5 times a second (a
            # second's back-off made a 1.5 s task in an `omniq worker` take 2.0 s to come back)
            delay = 0.05 if found_any else min(0.2 if 0 < len(stale) <= 1000 else 1.0, delay * 2)

    def executor(self, **task_options: Any) -> Any:
        """A ``concurrent.futures.Executor`` over this open instance (``OmniQ.executor``)."""
        from .executor import Executor

        return Executor._over(self, task_options)


CLOSE_STEP = 30.0  # seconds a storage may take to answer one step of close()


class _Recent(dict[str, float]):
    """Digests with the time they were last stored here: ``in`` only while recent enough that
    no sweep can have removed them (a sink then skips copying their bytes)."""

    def __init__(self, within: float) -> None:
        super().__init__()
        self.within = within

    def __contains__(self, key: object) -> bool:
        t = self.get(key)  # type: ignore[call-overload]
        return t is not None and time.time() - t < self.within


async def _within(limit: float, what: str, url: str, step: Awaitable[Any]) -> bool:
    """One step of ``close()`` that waits on a storage: a server that stops answering costs a
    WARNING naming it, not a ``close()`` that never returns. False if it timed out."""
    with anyio.move_on_after(limit) as scope:
        await step
    if scope.cancelled_caught:
        log.warning("close: %s (%s) did not finish within %g s; going on", what, masked(url), limit)
    return not scope.cancelled_caught


async def _finish(task: asyncio.Task[Any], limit: float) -> bool:
    """Wait up to ``limit`` seconds for ``task`` (never cancelling it), through any cancellation
    of the caller meanwhile (an anyio scope, a ``Task.cancel()``), which is raised afterwards.
    True if it finished."""
    deadline = time.monotonic() + limit
    cancelled: BaseException | None = None
    with anyio.CancelScope(shield=True):
        while not task.done() and (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait({task}, timeout=left)
            except asyncio.CancelledError as exc:
                cancelled = exc
    if task.done() and not task.cancelled():
        task.exception()  # retrieved (a failed store has told its waiters already)
    if cancelled is not None:
        raise cancelled
    return task.done()


async def _cancel_all(tasks: Sequence[asyncio.Task[Any]], timeout: float = 10.0) -> None:
    """Cancel background tasks and wait for them, cancelling again while any is left: on
    Python 3.11 a driver's ``asyncio.wait_for`` can swallow a cancel that lands together with
    its reply, and one lost cancel must not hang ``close()`` for ever."""
    pending = set(tasks)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    if pending:
        log.warning("%d background tasks did not stop within %g s; leaving them", len(pending), timeout)


def _split_units(batch: list[Task], starts: Mapping[str, int]) -> list[list[Task]]:
    """Consecutive runs of tasks handed over by one call (a lone task is its own unit)."""
    units: list[list[Task]] = []
    i = 0
    while i < len(batch):
        n = starts.get(batch[i].id) or 1
        units.append(batch[i : i + n])
        i += n
    return units


def _log_level_asked(cfg: OmniQConfig) -> bool:
    import os

    from .config import settings

    return cfg.log_level.upper() != settings.LOG_LEVEL or bool(os.environ.get("OMNIQ_LOG_LEVEL"))


def _report_crash(t: asyncio.Task[Any]) -> None:
    if not t.cancelled() and t.exception() is not None:
        log.error("omniq background task %s crashed", t.get_coro(), exc_info=t.exception())


# --------------------------------------------------------------------------------------------
# the sync facade
# --------------------------------------------------------------------------------------------
class _LoopThread:
    """One event loop in a daemon thread, reached through an anyio ``BlockingPortal``.

    A daemon thread (rather than ``start_blocking_portal``'s executor thread) lets the
    interpreter reach ``atexit``, where open instances are closed."""

    def __init__(self) -> None:
        self.portal: BlockingPortal | None = None
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            async with BlockingPortal() as portal:
                self.portal = portal
                ready.set()
                await portal.sleep_until_stopped()

        def run() -> None:
            try:
                anyio.run(main)
            except BaseException as exc:  # pragma: no cover - surfaced to the caller below
                failure.append(exc)
                ready.set()

        self.thread = threading.Thread(target=run, name="omniq-loop", daemon=True)
        self.thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def call(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        assert self.portal is not None
        if kwargs:
            return self.portal.call(functools.partial(fn, *args, **kwargs))
        return self.portal.call(fn, *args)

    def stop(self) -> None:
        if self.portal is not None:
            with contextlib.suppress(Exception):
                self.portal.call(self.portal.stop)
            self.thread.join(5)
            self.portal = None


def _portal_method(
    async_fn: Callable[Concatenate[AsyncOmniQ, P], Awaitable[R]],
) -> Callable[Concatenate[OmniQ, P], R]:
    """Make the sync twin of an ``AsyncOmniQ`` coroutine method: same signature, same docs."""
    name = async_fn.__name__

    @functools.wraps(async_fn)
    def method(self: OmniQ, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._call(getattr(self._core, name), *args, **kwargs)

    return method


_OPEN: weakref.WeakSet[OmniQ] = weakref.WeakSet()
_ATEXIT = False


def _close_all_at_exit() -> None:
    """Close instances left open (a notebook's, say) quietly when the interpreter exits."""
    logging.getLogger("omniq").setLevel(logging.CRITICAL + 1)  # children inherit it
    for oq in list(_OPEN):
        with contextlib.suppress(BaseException):
            oq.close(drain=False, timeout=5)


def _pass_on(f: ResultFuture[TaskResult], g: cf.Future[TaskResult]) -> None:
    """``g`` is done: resolve ``f`` the same way (a duplicate's future following its holder's)."""
    exc = g.exception()
    if exc is not None:
        with contextlib.suppress(cf.InvalidStateError):
            f.set_exception(exc)
    else:
        resolve_many([(f, g.result())])


def _resolve_items(
    items: Sequence[ResultFuture[TaskResult]], chunk: cf.Future[TaskResult], start: int = 0, n: int | None = None
) -> None:
    """A chunk's future is done: resolve its items' futures (``items[k]`` is item ``start + k``;
    ``n``: how many items the chunk has, when known). Futures already final are left alone."""
    exc = chunk.exception()
    if exc is not None:
        for f in items:
            with contextlib.suppress(cf.InvalidStateError):
                f.set_exception(exc)
        return
    r = chunk.result()
    resolve_many(zip(items, _chunks.item_results(r, range(start, start + len(items)), n)))


def _read_result(core: AsyncOmniQ, task_id: str, timeout: float | None) -> TaskResult:
    """Wait for a task's result through a storage-only instance (no workers) on ``core``'s
    URLs: for a handle that outlived its instance, without reopening that instance's workers."""
    reader = OmniQ(tasks=core.tasks_url, results=core.results_url, events=core.events_url,
                   concurrency=0, storage_options=dict(core.config.storage_options) or None)
    try:
        r = reader.get_result(task_id, wait=True, timeout=timeout)
    finally:
        reader.close()
    assert r is not None
    return r


def _closed_error(core: AsyncOmniQ) -> OmniQClosed:
    return OmniQClosed(
        f"this OmniQ (tasks={masked(core.tasks_url)}) is closed: reopen it with oq.open() or use a "
        "new `with` block; handles from it still read their results")


class _ClosedMeanwhile(RuntimeError):
    """A facade call reached its AsyncOmniQ while another thread closed it (the facade retries
    on the reopened instance; elsewhere it reads as this message)."""

    def __init__(self) -> None:
        super().__init__("this OmniQ was closed by another thread meanwhile; call again to reopen it")


OVERRUN_WINDOW = 3600.0  # health() lists leases that overran within the last hour


def _overruns(now: float, lapsed: list[Any] | None, reaped: list[TaskEvent]) -> list[dict[str, Any]]:
    """Tasks whose worker stopped renewing the lease: still lapsed (not reaped yet), or
    delivered again / failed as ``WorkerDied`` within ``OVERRUN_WINDOW``; newest first."""
    out: dict[str, dict[str, Any]] = {}
    for ev in reaped:
        if ev.type == EventType.REQUEUED.value or ev.detail == "WorkerDied":
            out[ev.task_id] = {"task_id": ev.task_id, "queue": ev.queue, "worker": ev.worker,
                               "at": ev.timestamp, "outcome": "requeued" if ev.type == "requeued" else "failed"}
    for o in lapsed or []:
        out[o.task_id] = {"task_id": o.task_id, "queue": o.queue, "worker": o.worker,
                          "at": o.lease_until, "outcome": "lapsed"}
    return sorted(out.values(), key=lambda r: -r["at"])[:100]


class OmniQ:
    """Synchronous OmniQ: the same constructor and methods as ``AsyncOmniQ``, blocking.

    Opens lazily on first use (or with ``with OmniQ(...) as oq``); an instance left open is
    closed at interpreter exit."""

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
        self._core = AsyncOmniQ(
            tasks, results, events, worker, concurrency, queues, config=config, lease=lease,
            max_deliveries=max_deliveries, result_ttl=result_ttl, task_ttl=task_ttl,
            storage_options=storage_options, memory_limit=memory_limit,
            require_signing=require_signing,
        )
        self._core._facade_owned = True
        self._thread: _LoopThread | None = None
        self._lock = threading.Lock()
        self._closed = False  # close() was called: no silent reopening (OmniQClosed) until open()

    @classmethod
    def from_config(cls, source: OmniQConfig | Mapping[str, Any] | str | Any, **overrides: Any) -> OmniQ:
        """Build from a YAML path, a dict or an ``OmniQConfig``; ``OMNIQ_*`` variables override it,
        keyword arguments override both."""
        return cls(config=source, **overrides)

    @property
    def config(self) -> OmniQConfig:
        return self._core.config

    @property
    def core(self) -> AsyncOmniQ:
        """The ``AsyncOmniQ`` this facade drives (on its own loop thread)."""
        return self._core

    def __repr__(self) -> str:
        c = self._core
        state = "open" if c.is_open else "closed"
        return (f"<OmniQ {state} tasks={masked(c.tasks_url)} worker={c.config.default_worker} "
                f"x{c.config.concurrency}>")

    # --- lifecycle ---------------------------------------------------------------------------
    def open(self) -> OmniQ:
        global _ATEXIT
        with self._lock:
            self._closed = False
            if self._thread is None:
                self._thread = _LoopThread()
            if not self._core.is_open:
                try:
                    self._thread.call(self._core.open)
                except BaseException:
                    self._thread.stop()
                    self._thread = None
                    raise
                _OPEN.add(self)
                if not _ATEXIT:
                    import atexit

                    atexit.register(_close_all_at_exit)
                    _ATEXIT = True
        return self

    def close(self, drain: bool = False, timeout: float | None = None) -> None:
        """Store buffered tasks, stop workers (with ``drain``: after this instance's ready
        tasks finish), close storage and the loop thread. Later calls raise ``OmniQClosed``
        until ``open()`` (handles from it still read their results)."""
        with self._lock:
            self._closed = True
            if self._thread is None:
                return
            try:
                if self._core.is_open:
                    self._thread.call(self._core.close, drain=drain, timeout=timeout)
            finally:
                self._thread.stop()
                self._thread = None
                _OPEN.discard(self)

    def __enter__(self) -> OmniQ:
        return self.open()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(drain=exc_type is None)

    def _open_lazily(self) -> None:
        """Open on first use; an instance closed by ``close()`` is not reopened behind its
        owner's back."""
        if self._closed:
            raise _closed_error(self._core)
        self.open()

    def _call(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Run ``fn`` on the loop thread, opening first on first use."""
        return self._while_open(lambda thread: thread.call(fn, *args, **kwargs))

    def _while_open(self, use: Callable[[_LoopThread], R]) -> R:
        """``use(loop thread)`` on an open instance. One that lands while another thread closes
        this instance waits for that close and runs again on the reopened instance."""
        for _ in range(100):
            thread = self._thread
            if thread is None or not self._core.is_open:
                self._open_lazily()
                continue
            try:
                return use(thread)
            except _ClosedMeanwhile:
                with self._lock:  # let the closing thread finish, then reopen
                    continue
            except RuntimeError:
                if thread is self._thread:
                    raise  # not a close racing us: a real error
        raise StorageError("this OmniQ kept being closed by another thread while a call waited")

    # --- the hot path: no portal round trip ------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskHandle:
        """Run ``fn(*args, **kwargs)`` on a worker. Returns at once; the task is stored within
        milliseconds (``flush()`` or leaving the ``with`` block waits for that)."""
        task = self._core._make_task(fn, args, kwargs)
        (fut,) = self._hand_over([task])
        return TaskHandle(self, task.id, task.queue, fut)

    def _hand_over(self, tasks: Sequence[Task]) -> list[ResultFuture[TaskResult]]:
        """``_accept`` on an open instance (no portal round trip), waiting out a racing close."""
        return self._while_open(lambda _thread: self._core._accept(tasks))

    def map(
        self, fn: Callable[..., Any], iterable: Iterable[Any], *, chunksize: int | str = 1, **options: Any
    ) -> list[TaskHandle]:
        """``fn(item)`` for each item, as one batch; handles in input order. ``options`` are
        ``enqueue`` options (queue, priority, retries, timeout, ...). ``chunksize`` > 1 or
        ``"auto"`` runs that many items per task, as joblib batches: far less storage per item;
        each item keeps its own handle, value and error (see ``omniq._chunks``)."""
        with bulk():
            return [TaskHandle(self, *h) for h in self._core._map(fn, iterable, chunksize, options, self._hand_over)]

    def handle(self, task_id: str) -> TaskHandle:
        """A handle for a task id (from ``enqueue`` or another process)."""
        if not self._core.is_open:
            self._open_lazily()
        fut = self._call(_async_future_for, self._core, task_id)
        return TaskHandle(self, task_id, "", fut)

    def gather(self, handles: Iterable[TaskHandle], timeout: float | None = None) -> list[Any]:
        """Values of many handles, in order (raises the first ``TaskError``)."""
        return [h.result(timeout) for h in handles]

    # --- everything else: generated from AsyncOmniQ --------------------------------------------
    @functools.wraps(AsyncOmniQ.enqueue)
    def enqueue(self, fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                **options: Any) -> str:
        core = self._core
        if self._thread is None or not core.is_open:
            self._open_lazily()
        task = core._make_task(fn, args, kwargs, **options)
        if core._store_here(task):  # stored durably on this thread: no round trip to the loop
            return task.id
        return self._call(core._enqueue_task, task)

    find_results = _portal_method(AsyncOmniQ.find_results)
    flush = _portal_method(AsyncOmniQ.flush)
    get_result = _portal_method(AsyncOmniQ.get_result)
    status = _portal_method(AsyncOmniQ.status)
    cancel = _portal_method(AsyncOmniQ.cancel)
    cancel_many = _portal_method(AsyncOmniQ.cancel_many)
    events = _portal_method(AsyncOmniQ.events)
    health = _portal_method(AsyncOmniQ.health)
    schedule = _portal_method(AsyncOmniQ.schedule)
    pause_schedule = _portal_method(AsyncOmniQ.pause_schedule)
    resume_schedule = _portal_method(AsyncOmniQ.resume_schedule)
    delete_schedule = _portal_method(AsyncOmniQ.delete_schedule)
    schedules = _portal_method(AsyncOmniQ.schedules)
    sweep_blobs = _portal_method(AsyncOmniQ.sweep_blobs)

    def sweep(self, fn: Callable[..., Any], grid: Any, name: str | None = None, **options: Any) -> Any:
        """Run ``fn(**point)`` for every point of ``grid``; finished points of an earlier run
        of the same sweep (same name, function and parameters) are reused. Returns a ``Sweep``
        at once (the kernel stays free): ``.wait()``, ``.results()``, ``.failed()``, ..."""
        from .sweep import Sweep

        if not self._core.is_open:
            self._open_lazily()
        return Sweep.start(self, fn, grid, name=name, **options)

    def on_event(self, callback: Callable[[TaskEvent], Any], types: Sequence[str] | None = None) -> Callable[[], None]:
        """Call ``callback(event)`` (on OmniQ's loop thread) for every event, from this process or
        any other sharing the event store; returns a function that unsubscribes."""
        if not self._core.is_open:
            self._open_lazily()
        return self._core.on_event(callback, types)

    def executor(self, **task_options: Any) -> Any:
        """A ``concurrent.futures.Executor`` over this open OmniQ; ``task_options`` (queue,
        priority, retries, timeout, ...) apply to every call. Its ``shutdown()`` leaves this
        OmniQ open. See ``omniq.Executor``."""
        from .executor import Executor

        return Executor._over(self, task_options)


async def _async_future_for(core: AsyncOmniQ, task_id: str) -> cf.Future[TaskResult]:
    return core._future_for(task_id)
