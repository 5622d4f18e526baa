"""Batched, non-blocking event logging.

Workers call ``emit`` on the hot path: it appends a ``TaskEvent`` to a list and, at most once
per batch, wakes the flusher. The flusher writes whole batches to the event store, so a burst
of 10,000 completions costs a handful of writes. In-process listeners see each event at once.

Examples:
    >>> import anyio
    >>> from omniq.events.logger import EventLogger
    >>> from omniq.storage.memory import MemoryBackend
    >>> async def main():
    ...     store = MemoryBackend()
    ...     events = EventLogger(store)
    ...     events.emit("t1", "enqueued", queue="default")
    ...     await events.flush()
    ...     return [e.type for e in await store.query_events(task_id="t1")]
    >>> anyio.run(main)
    ['enqueued']
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from ..logs import Outage, get_logger
from ..models import TaskEvent
from ..storage.base import EventStore, masked

log = get_logger("omniq.events")

Listener = Callable[[list[TaskEvent]], None]


class EventLogger:
    """Collects events and writes them to ``store`` in batches (every ``interval`` seconds at most).

    An ``AsyncOmniQ`` owns one and runs ``run()`` on its loop; workers and the intake call
    ``emit``. Not thread-safe: call it on the loop it runs on.

    Args:
        store: the event store batches are written to.
        interval: seconds between writes at most (the flusher sleeps this long after each).
        max_batch: events per ``append_events`` call at most.

    Examples:
        >>> from omniq.events.logger import EventLogger
        >>> from omniq.storage.memory import MemoryBackend
        >>> events = EventLogger(MemoryBackend(), interval=0.1)
        >>> seen = []
        >>> stop = events.add_listener(lambda batch: seen.extend(e.type for e in batch))
        >>> events.emit("t1", "started", worker="w1")
        >>> seen
        ['started']
    """

    def __init__(self, store: EventStore, *, interval: float = 0.05, max_batch: int = 5000) -> None:
        self._store = store
        self._interval = interval
        self._max_batch = max_batch
        self._pending: list[TaskEvent] = []
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._listeners: list[Listener] = []
        self._closed = False
        self._writing = anyio.Lock()  # one flush at a time: flush() waits for the loop's write
        # a store that stops answering (a server restart) is one WARNING and one when it is
        # back, not a traceback per retry
        self._outage = Outage(log, "writing events", masked(getattr(store, "url", "") or "event store"))

    def add_listener(self, fn: Listener) -> Callable[[], None]:
        """Call ``fn(batch)`` on the loop for every batch emitted in this process.

        A listener that raises is logged and kept; it never stops the queue.

        Args:
            fn: called with each list of ``TaskEvent`` as it is emitted (before it is stored).

        Returns:
            A function that removes the listener (idempotent).

        Examples:
            >>> from omniq.events.logger import EventLogger
            >>> from omniq.storage.memory import MemoryBackend
            >>> events = EventLogger(MemoryBackend())
            >>> seen = []
            >>> remove = events.add_listener(seen.append)
            >>> events.emit("t1", "enqueued")
            >>> remove()
            >>> events.emit("t1", "started")
            >>> [[e.type for e in batch] for batch in seen]
            [['enqueued']]
        """
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def emit(
        self,
        task_id: str,
        type: str,
        *,
        worker: str | None = None,
        queue: str | None = None,
        detail: str | None = None,
        timestamp: float | None = None,
    ) -> None:
        """Record one event: listeners see it now, the store with the next batch.

        Args:
            task_id: the task it is about.
            type: the event type (``"enqueued"``, ``"started"``, ``"succeeded"``, ...; see
                ``omniq.models.EventType``).
            worker: the worker's id, when a worker emits it.
            queue: the task's queue.
            detail: free text (a retry's reason, a requeue's cause).
            timestamp: epoch seconds (default: now).

        Examples:
            >>> from omniq.events.logger import EventLogger
            >>> from omniq.storage.memory import MemoryBackend
            >>> events = EventLogger(MemoryBackend())
            >>> got = []
            >>> _ = events.add_listener(got.extend)
            >>> events.emit("t1", "retry", queue="gpu", detail="attempt 1 failed", timestamp=0.0)
            >>> got[0].type, got[0].queue, got[0].timestamp
            ('retry', 'gpu', 0.0)
        """
        self.emit_many(
            [
                TaskEvent(
                    task_id=task_id,
                    type=type,
                    timestamp=time.time() if timestamp is None else timestamp,
                    worker=worker,
                    queue=queue,
                    detail=detail,
                )
            ]
        )

    def emit_many(self, events: list[TaskEvent]) -> None:
        """Record several events at once (one wake-up of the flusher, one call per listener).

        Args:
            events: the events, in time order; an empty list does nothing.

        Examples:
            >>> from omniq import TaskEvent
            >>> from omniq.events.logger import EventLogger
            >>> from omniq.storage.memory import MemoryBackend
            >>> events = EventLogger(MemoryBackend())
            >>> calls = []
            >>> _ = events.add_listener(calls.append)
            >>> events.emit_many([TaskEvent(task_id=t, type="enqueued", timestamp=1.0) for t in ("a", "b")])
            >>> len(calls), len(calls[0])
            (1, 2)
        """
        if not events:
            return
        self._pending.extend(events)
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._wake.set()
        for fn in list(self._listeners):
            try:
                fn(events)
            except Exception:  # a listener's bug must not stop the queue
                log.exception("event listener %r failed", fn)

    async def run(self) -> None:
        """Flush loop; runs until cancelled (``close`` flushes what is left).

        A store that fails keeps the batch for the next try and logs one WARNING per outage;
        it never raises.
        """
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self._flush_once()
            await anyio.sleep(self._interval)

    async def _flush_once(self) -> None:
        async with self._writing:
            await self._write_pending()

    async def _write_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._store.append_events(batch)
            except anyio.get_cancelled_exc_class():
                self._pending[:0] = batch  # maybe not written: the closing flush writes it (again)
                raise
            except Exception as exc:
                # Events are diagnostics: keep them for the next try rather than lose or crash.
                self._outage.failed(exc)
                self._pending[:0] = batch
                await anyio.sleep(min(1.0, self._interval * 10))
                return
            self._outage.ok()
        self._idle.set()

    async def flush(self) -> None:
        """Write everything emitted so far (``events()`` calls this before it queries).

        Examples:
            >>> import anyio
            >>> from omniq.events.logger import EventLogger
            >>> from omniq.storage.memory import MemoryBackend
            >>> async def main():
            ...     store = MemoryBackend()
            ...     events = EventLogger(store)
            ...     events.emit("t1", "enqueued")
            ...     before = len(await store.query_events())
            ...     await events.flush()
            ...     return before, len(await store.query_events())
            >>> anyio.run(main)
            (0, 1)
        """
        await self._flush_once()
