"""Thread workers: a fixed set of threads in this process.

A thread cannot be killed, so a task that times out (or is cancelled while running) is marked
failed and *abandoned*: its thread is replaced and whatever it returns later is discarded.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Sequence

from ..errors import SerializationError
from ..models import Task
from ..serialization import fetching, loads_call
from ._wire import dump_result
from .base import Outcome, Runner, error_info, expired_outcome, stopped_outcome

_STOP = object()


class _Slot:
    __slots__ = ("abandoned", "current", "thread")

    def __init__(self) -> None:
        self.current: Task | None = None
        self.abandoned = False
        self.thread: threading.Thread | None = None


class ThreadRunner(Runner):
    """The ``"thread"`` worker kind: ``slots`` daemon threads in this process. A task past its
    timeout or cancelled while running is abandoned (its thread cannot be killed): its slot
    gets a new thread, and its outcome is reported at once.

    Args:
        slots: Threads, hence tasks at once.

    Examples:
        Runs tasks as :class:`~omniq.workers.base.Runner`'s example shows, made with
        ``make_runner("thread", slots)``:

        >>> from omniq.workers.registry import make_runner
        >>> make_runner("thread", 2).kind
        'thread'
    """

    kind = "thread"

    def __init__(self, slots: int) -> None:
        super().__init__(slots)
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._slots: list[_Slot] = []
        self._queued: dict[str, Task] = {}  # dispatched, not yet taken by a thread
        self._lock = threading.Lock()
        self._out: list[Outcome] = []
        self._begun: list[tuple[Task, _Slot, float]] = []  # started, not yet told to the loop
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._running: dict[str, _Slot] = {}

    async def start(self) -> None:
        """Start the threads (see :meth:`Runner.start`)."""
        self._loop = asyncio.get_running_loop()
        for _ in range(self.slots):
            self._add_slot()

    def _add_slot(self) -> None:
        slot = _Slot()
        t = threading.Thread(target=self._work, args=(slot,), name="omniq-thread-worker", daemon=True)
        slot.thread = t
        self._slots.append(slot)
        t.start()

    def capacity(self) -> int:
        """Room for the tasks running plus ``_prefetch`` ahead of each slot."""
        busy = len(self._running) + len(self._queued)
        return max(0, self.slots * (1 + self._prefetch()) - busy)

    def held(self) -> list[str]:
        """See :meth:`Runner.held`."""
        return list(self._queued) + list(self._running)

    def dispatch(self, tasks: Sequence[Task]) -> None:
        """Queue the tasks for the threads (see :meth:`Runner.dispatch`)."""
        with self._lock:
            for t in tasks:
                self._queued[t.id] = t
        for t in tasks:
            self._inbox.put(t)

    # --- in the worker threads -------------------------------------------------------------
    # Bookkeeping (_queued, _running, _out) happens under one lock in the thread itself, so a
    # task that finishes before the loop hears it started is still reported exactly once.
    def _work(self, slot: _Slot) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            item = self._inbox.get()
            if item is _STOP:
                return
            assert isinstance(item, Task)
            task = item
            started = time.time()
            gone = expired_outcome(task, started)
            if gone is not None:
                with self._lock:
                    self._queued.pop(task.id, None)
                    self._out.append(gone)
                    schedule = not self._drain_scheduled
                    self._drain_scheduled = True
                if schedule:
                    loop.call_soon_threadsafe(self._drain)
                continue
            with self._lock:
                self._queued.pop(task.id, None)
                self._running[task.id] = slot
                slot.current = task
                self._begun.append((task, slot, started))
                schedule = not self._drain_scheduled
                self._drain_scheduled = True
            if schedule:  # one wake-up of the loop per batch, not one per task (~0.3 ms each)
                loop.call_soon_threadsafe(self._drain)
            with fetching(self._fetch(task)):
                try:
                    fn, args, kwargs = loads_call(task.payload)
                except SerializationError as exc:
                    out = Outcome(task, error=error_info(exc), started_at=started, finished_at=time.time(),
                                  retryable=False)
                else:
                    try:
                        value = fn(*args, **kwargs)
                        if hasattr(value, "__await__"):
                            value = asyncio.run(_await(value))
                        data, blobs = dump_result(value, self._blob_dir())
                        out = Outcome(task, payload=data, started_at=started, finished_at=time.time(), blobs=blobs)
                    except BaseException as exc:
                        out = Outcome(task, error=error_info(exc), started_at=started, finished_at=time.time())
            with self._lock:
                if slot.abandoned:
                    return  # timed out or cancelled: its outcome was already reported
                self._running.pop(task.id, None)
                slot.current = None
                self._out.append(out)
                if self._drain_scheduled:
                    continue
                self._drain_scheduled = True
            loop.call_soon_threadsafe(self._drain)

    # --- on the loop -------------------------------------------------------------------------
    def _begin(self, task: Task, slot: _Slot, started: float) -> None:
        self.on_started(task, started)
        if task.timeout is not None and self._loop is not None:
            with self._lock:
                if self._running.get(task.id) is not slot:
                    return  # already done
            self._timers[task.id] = self._loop.call_later(task.timeout, self._abandon, task, slot, "timeout")

    def _drain(self) -> None:
        with self._lock:
            begun, self._begun = self._begun, []
            outs, self._out = self._out, []
            self._drain_scheduled = False
        for task, slot, started in begun:  # starts first: a task's `started` precedes its end
            self._begin(task, slot, started)
        for o in outs:
            h = self._timers.pop(o.task.id, None)
            if h is not None:
                h.cancel()
            self._observe(o.finished_at - o.started_at)
        if outs:
            self.on_done(outs)
            self._signal_capacity()

    def _abandon(self, task: Task, slot: _Slot, reason: str) -> None:
        with self._lock:
            if self._running.get(task.id) is not slot:
                return
            del self._running[task.id]
            slot.abandoned = True
        self._timers.pop(task.id, None)
        self._slots.remove(slot)
        self._add_slot()
        now = time.time()
        self.on_done([stopped_outcome(task, reason, now, now)])
        self._signal_capacity()

    async def cancel(self, task_id: str) -> bool:
        """A queued task is dropped, a running one abandoned (see :meth:`Runner.cancel`)."""
        with self._lock:
            slot = self._running.get(task_id)
            task = slot.current if slot is not None else None
        if slot is not None and task is not None:
            self._abandon(task, slot, "cancel")
            return True
        return False

    async def stop(self, *, graceful: bool) -> list[Task]:
        """See :meth:`Runner.stop`; without ``graceful`` running tasks are abandoned."""
        unstarted: list[Task] = []
        # take back what no thread has started
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Task):
                unstarted.append(item)
                with self._lock:
                    self._queued.pop(item.id, None)
        if graceful:
            while self._running:
                await asyncio.sleep(0.01)
        else:
            with self._lock:
                for slot in self._running.values():
                    slot.abandoned = True
                    if slot.current is not None:
                        unstarted.append(slot.current)
                self._running.clear()
        for _ in self._slots:
            self._inbox.put(_STOP)
        for h in self._timers.values():
            h.cancel()
        return unstarted


async def _await(aw: object) -> object:
    return await aw  # type: ignore[misc]
