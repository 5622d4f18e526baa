"""Async workers: coroutine functions run as tasks on the event loop; plain functions run in a
worker thread so they never block the loop. Timeouts and cancels use cancel scopes."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Sequence

import anyio

from ..errors import SerializationError
from ..models import Task
from ..serialization import fetching, loads_call
from ._wire import dump_result
from .base import Outcome, Runner, error_info, expired_outcome, stopped_outcome, timeout_error


class AsyncRunner(Runner):
    """The ``"async"`` worker kind: coroutine functions run as tasks on the event loop, plain
    functions in a thread (so they never block it), ``slots`` at a time. Timeouts and cancels
    use cancel scopes: a plain function past its timeout is abandoned, not killed.

    Args:
        slots: Tasks it runs at once.

    Examples:
        Runs tasks as :class:`~omniq.workers.base.Runner`'s example shows, made with
        ``make_runner("async", slots)``:

        >>> from omniq.workers.registry import make_runner
        >>> make_runner("async", 2).kind
        'async'
    """

    kind = "async"

    def __init__(self, slots: int) -> None:
        super().__init__(slots)
        self._running: dict[str, tuple[Task, asyncio.Task[None]]] = {}  # dispatched: held
        self._started: set[str] = set()  # of those, the ones past the slot gate
        self._cancelled: set[str] = set()
        self._gate: asyncio.Semaphore | None = None

    async def start(self) -> None:
        """Make the slot gate (see :meth:`Runner.start`)."""
        self._gate = asyncio.Semaphore(self.slots)

    def capacity(self) -> int:
        """``slots`` running plus ``_prefetch`` ahead of each, waiting at the slot gate."""
        return max(0, self.slots * (1 + self._prefetch()) - len(self._running))

    def held(self) -> list[str]:
        """See :meth:`Runner.held`."""
        return list(self._running)

    def dispatch(self, tasks: Sequence[Task]) -> None:
        """One asyncio task per task, each waiting for a slot (see :meth:`Runner.dispatch`)."""
        loop = asyncio.get_running_loop()
        for t in tasks:
            self._running[t.id] = (t, loop.create_task(self._gated(t)))

    async def _gated(self, task: Task) -> None:
        """Wait for a slot, then run; a task cancelled while it waits ends CANCELLED."""
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.slots)
        try:
            async with self._gate:
                self._started.add(task.id)
                await self._run(task)
        except asyncio.CancelledError:
            if task.id not in self._cancelled or task.id in self._started:
                raise
            now = time.time()
            self._finish(stopped_outcome(task, "cancel", now, now))

    async def _run(self, task: Task) -> None:
        started = time.time()
        gone = expired_outcome(task, started)
        if gone is not None:
            self._finish(gone)
            return
        self.on_started(task, started)
        with fetching(self._fetch(task)):
            out = await self._call(task, started)
        self._finish(out)

    async def _call(self, task: Task, started: float) -> Outcome:
        try:
            fn, args, kwargs = loads_call(task.payload)
        except SerializationError as exc:
            return Outcome(task, error=error_info(exc), started_at=started, finished_at=time.time(), retryable=False)
        try:
            with anyio.fail_after(task.timeout):
                if inspect.iscoroutinefunction(fn):
                    value = await fn(*args, **kwargs)
                else:
                    value = await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), abandon_on_cancel=True)
                    if inspect.isawaitable(value):
                        value = await value
            data, blobs = dump_result(value, self._blob_dir())
            return Outcome(task, payload=data, started_at=started, finished_at=time.time(), blobs=blobs)
        except TimeoutError:
            return Outcome(task, error=timeout_error(task), started_at=started, finished_at=time.time())
        except asyncio.CancelledError:
            if task.id not in self._cancelled:
                raise
            return stopped_outcome(task, "cancel", started, time.time())
        except Exception as exc:
            return Outcome(task, error=error_info(exc), started_at=started, finished_at=time.time())

    def _finish(self, out: Outcome) -> None:
        self._running.pop(out.task.id, None)
        self._started.discard(out.task.id)
        self._cancelled.discard(out.task.id)
        if out.status is None:
            self._observe(out.finished_at - out.started_at)
        self.on_done([out])
        self._signal_capacity()

    async def cancel(self, task_id: str) -> bool:
        """Cancel the task's asyncio task (see :meth:`Runner.cancel`)."""
        entry = self._running.get(task_id)
        if entry is None:
            return False
        self._cancelled.add(task_id)
        entry[1].cancel()
        return True

    async def stop(self, *, graceful: bool) -> list[Task]:
        """See :meth:`Runner.stop`."""
        if graceful:  # hand back what has not started; let the rest finish
            waiting = [(t, at) for tid, (t, at) in list(self._running.items()) if tid not in self._started]
            for t, at in waiting:
                del self._running[t.id]
                at.cancel()
            while self._running:
                await asyncio.sleep(0.01)
            return [t for t, _ in waiting]
        tasks = [t for t, _ in self._running.values()]
        for _, at in list(self._running.values()):
            at.cancel()
        self._running.clear()
        return tasks
