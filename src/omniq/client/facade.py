"""``OmniQ``: the sync facade. It runs one ``AsyncOmniQ`` on a private event loop in a daemon
thread behind an anyio ``BlockingPortal``, so the same calls work in a plain script and inside
a running Jupyter loop. Its methods are generated from the async ones by ``portal_method``;
only ``submit``, ``map`` and ``enqueue`` are written out, because they must not pay a portal
round trip per call: they hand tasks to the intake's thread-safe buffer (or, for ``enqueue``,
store on the calling thread when the backend can). It uses only public members of
``AsyncOmniQ`` and its components.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import functools
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .._futures import ResultFuture, bulk
from ..errors import StorageError
from ..models import OmniQConfig, Task, TaskEvent, TaskResult
from ..redact import masked
from ..sweep import Sweep
from .handles import TaskHandle
from .orchestrator import AsyncOmniQ
from .session import ClosedMeanwhile

P = ParamSpec("P")
R = TypeVar("R")


class LoopThread:
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


def portal_method(
    async_fn: Callable[Concatenate[AsyncOmniQ, P], Awaitable[R]],
) -> Callable[Concatenate[OmniQ, P], R]:
    """Make the sync twin of an ``AsyncOmniQ`` coroutine method: same signature, same docs."""
    name = async_fn.__name__

    @functools.wraps(async_fn)
    def method(self: OmniQ, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._call(getattr(self.core, name), *args, **kwargs)

    return method


_OPEN: weakref.WeakSet[OmniQ] = weakref.WeakSet()
_ATEXIT = False


def _close_all_at_exit() -> None:
    """Close instances left open (a notebook's, say) quietly when the interpreter exits."""
    logging.getLogger("omniq").setLevel(logging.CRITICAL + 1)  # children inherit it
    for oq in list(_OPEN):
        with contextlib.suppress(BaseException):
            oq.close(drain=False, timeout=5)


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
        self._core.session.facade_owned = True
        self._thread: LoopThread | None = None
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
                self._thread = LoopThread()
            if not self._core.is_open:
                try:
                    self._thread.call(self._core.open)
                except BaseException:
                    self._thread.stop()
                    self._thread = None
                    raise
                _OPEN.add(self)
                if not _ATEXIT:
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
            raise self._core.session.closed_error()
        self.open()

    def _call(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Run ``fn`` on the loop thread, opening first on first use."""
        return self._while_open(lambda thread: thread.call(fn, *args, **kwargs))

    def _while_open(self, use: Callable[[LoopThread], R]) -> R:
        """``use(loop thread)`` on an open instance. One that lands while another thread closes
        this instance waits for that close and runs again on the reopened instance."""
        for _ in range(100):
            thread = self._thread
            if thread is None or not self._core.is_open:
                self._open_lazily()
                continue
            try:
                return use(thread)
            except ClosedMeanwhile:
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
        task = self._core.intake.make_task(fn, args, kwargs)
        (fut,) = self._hand_over([task])
        return TaskHandle(self, task.id, task.queue, fut)

    def _hand_over(self, tasks: Sequence[Task]) -> list[ResultFuture[TaskResult]]:
        """``intake.accept`` on an open instance (no portal round trip), waiting out a racing close."""
        accept = self._core.intake.accept
        return self._while_open(lambda _thread: accept(tasks))

    def map(
        self, fn: Callable[..., Any], iterable: Iterable[Any], *, chunksize: int | str = 1, **options: Any
    ) -> list[TaskHandle]:
        """``fn(item)`` for each item, as one batch; handles in input order. ``options`` are
        ``enqueue`` options (queue, priority, retries, timeout, ...). ``chunksize`` > 1 or
        ``"auto"`` runs that many items per task, as joblib batches: far less storage per item;
        each item keeps its own handle, value and error (see ``omniq._chunks``)."""
        with bulk():
            return [TaskHandle(self, *h)
                    for h in self._core.intake.map(fn, iterable, chunksize, options, self._hand_over)]

    def handle(self, task_id: str) -> TaskHandle:
        """A handle for a task id (from ``enqueue`` or another process)."""
        if not self._core.is_open:
            self._open_lazily()
        fut = self._call(_future_on_loop, self._core, task_id)
        return TaskHandle(self, task_id, "", fut)

    def gather(self, handles: Iterable[TaskHandle], timeout: float | None = None) -> list[Any]:
        """Values of many handles, in order (raises the first ``TaskError``)."""
        return [h.result(timeout) for h in handles]

    def read_result(self, task_id: str, timeout: float | None) -> TaskResult:
        """Wait for a task's result through a storage-only instance (no workers) on this
        instance's URLs: for a handle that outlived its instance, without reopening its workers."""
        core = self._core
        reader = OmniQ(tasks=core.tasks_url, results=core.results_url, events=core.events_url,
                       concurrency=0, storage_options=dict(core.config.storage_options) or None)
        try:
            r = reader.get_result(task_id, wait=True, timeout=timeout)
        finally:
            reader.close()
        assert r is not None
        return r

    # --- everything else: generated from AsyncOmniQ --------------------------------------------
    @functools.wraps(AsyncOmniQ.enqueue)
    def enqueue(self, fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                **options: Any) -> str:
        core = self._core
        if self._thread is None or not core.is_open:
            self._open_lazily()
        task = core.intake.make_task(fn, args, kwargs, **options)
        if core.intake.store_here(task):  # stored durably on this thread: no round trip to the loop
            return task.id
        return self._call(core.enqueue_task, task)

    find_results = portal_method(AsyncOmniQ.find_results)
    flush = portal_method(AsyncOmniQ.flush)
    get_result = portal_method(AsyncOmniQ.get_result)
    status = portal_method(AsyncOmniQ.status)
    cancel = portal_method(AsyncOmniQ.cancel)
    cancel_many = portal_method(AsyncOmniQ.cancel_many)
    events = portal_method(AsyncOmniQ.events)
    health = portal_method(AsyncOmniQ.health)
    schedule = portal_method(AsyncOmniQ.schedule)
    pause_schedule = portal_method(AsyncOmniQ.pause_schedule)
    resume_schedule = portal_method(AsyncOmniQ.resume_schedule)
    delete_schedule = portal_method(AsyncOmniQ.delete_schedule)
    schedules = portal_method(AsyncOmniQ.schedules)
    sweep_blobs = portal_method(AsyncOmniQ.sweep_blobs)
    tasks = portal_method(AsyncOmniQ.tasks)
    task = portal_method(AsyncOmniQ.task)
    retry = portal_method(AsyncOmniQ.retry)
    purge = portal_method(AsyncOmniQ.purge)

    def sweep(self, fn: Callable[..., Any], grid: Any, name: str | None = None, **options: Any) -> Any:
        """Run ``fn(**point)`` for every point of ``grid``; finished points of an earlier run
        of the same sweep (same name, function and parameters) are reused. Returns a ``Sweep``
        at once (the kernel stays free): ``.wait()``, ``.results()``, ``.failed()``, ..."""
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
        from .executor import BoundExecutor

        return BoundExecutor(self.core, task_options, sync=self)


async def _future_on_loop(core: AsyncOmniQ, task_id: str) -> cf.Future[TaskResult]:
    return core.waiters.future_for(task_id)
