"""Live event subscriptions: this process's events at once, other processes' through the store.

Events emitted here reach subscribers straight from the ``EventLogger``. Events written by
other processes (an ``omniq worker`` elsewhere) are found by polling the event store with
back-off (50 ms while events flow, up to 1 s when idle), looking back a little to catch batches
that were flushed late; every event is delivered once (keys remembered for a minute).

A subscriber never slows the workers: each has a bounded buffer, and when it falls behind the
overflow is dropped and counted; the next event it receives is preceded by a ``dropped`` event
whose ``detail`` says how many it missed.

``AsyncOmniQ.subscribe()`` and ``OmniQ.on_event()`` are the public way in.

Examples:
    >>> import anyio
    >>> from omniq.events.logger import EventLogger
    >>> from omniq.events.processor import EventProcessor
    >>> from omniq.storage.memory import MemoryBackend
    >>> async def main():
    ...     store = MemoryBackend()
    ...     events = EventLogger(store)
    ...     processor = EventProcessor(events, store)
    ...     sub = processor.subscribe(task_id="t2")
    ...     events.emit("t1", "started")
    ...     events.emit("t2", "started")
    ...     async for ev in sub:
    ...         processor.unsubscribe(sub)
    ...         return ev.task_id, ev.type
    >>> anyio.run(main)
    ('t2', 'started')
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..logs import get_logger
from ..models import TaskEvent
from ..storage.base import EventStore
from .logger import EventLogger

log = get_logger("omniq.events")

_Key = tuple[str, str, float, "str | None"]
LOOKBACK = 2.0  # seconds: other processes flush events in batches, a little after they happen
REMEMBER = 60.0
DEFAULT_BUFFER = 10_000  # events a subscriber may fall behind by before they are dropped


def _key(ev: TaskEvent) -> _Key:
    return (ev.task_id, ev.type, ev.timestamp, ev.worker)


class Subscription:
    """One subscriber: a filter, a bounded buffer and a count of what it missed.

    Made by ``EventProcessor.subscribe``; iterate it with ``async for``. The iteration ends
    when it is closed.

    Args:
        task_id: only this task's events (None: every task's).
        queue: only this queue's events (None: every queue's).
        types: only these event types (None or empty: every type).
        buffer: events held for a slow consumer; beyond it events are dropped and counted.

    Attributes:
        dropped: events dropped since the consumer last received one.

    Examples:
        >>> from omniq import TaskEvent
        >>> from omniq.events.processor import Subscription
        >>> sub = Subscription(None, "gpu", ["succeeded"], buffer=10)
        >>> sub.wants(TaskEvent(task_id="t", type="succeeded", timestamp=0.0, queue="gpu"))
        True
        >>> sub.wants(TaskEvent(task_id="t", type="started", timestamp=0.0, queue="gpu"))
        False
    """

    def __init__(
        self,
        task_id: str | None,
        queue: str | None,
        types: Sequence[str] | None,
        buffer: int,
    ) -> None:
        self.task_id = task_id
        self.queue = queue
        self.types = {str(t) for t in types} if types else None
        self.dropped = 0
        send: MemoryObjectSendStream[TaskEvent]
        recv: MemoryObjectReceiveStream[TaskEvent]
        send, recv = anyio.create_memory_object_stream(max_buffer_size=buffer)
        self._send, self._recv = send, recv

    def wants(self, ev: TaskEvent) -> bool:
        """Whether ``ev`` passes this subscription's filter.

        Args:
            ev: an event.

        Returns:
            True when its task, queue and type match.
        """
        return (
            (self.task_id is None or ev.task_id == self.task_id)
            and (self.queue is None or ev.queue == self.queue)
            and (self.types is None or ev.type in self.types)
        )

    def offer(self, ev: TaskEvent) -> None:
        """Hand ``ev`` to the consumer without waiting; counted in ``dropped`` when the buffer
        is full, ignored once closed.

        Args:
            ev: an event that passed ``wants``.

        Examples:
            >>> from omniq import TaskEvent
            >>> from omniq.events.processor import Subscription
            >>> sub = Subscription(None, None, None, buffer=1)
            >>> for _ in range(3):
            ...     sub.offer(TaskEvent(task_id="t", type="started", timestamp=0.0))
            >>> sub.dropped
            2
        """
        try:
            self._send.send_nowait(ev)
        except anyio.WouldBlock:
            self.dropped += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def __aiter__(self) -> AsyncIterator[TaskEvent]:
        while True:
            try:
                ev = await self._recv.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return  # closed (the instance closing under a consumer): the stream just ends
            if self.dropped:
                n, self.dropped = self.dropped, 0
                yield TaskEvent(task_id="", type="dropped", timestamp=time.time(),
                                detail=f"{n} events dropped: this subscriber fell behind")
            yield ev

    def close(self) -> None:
        """End the subscription: a consumer's ``async for`` ends after the events it holds."""
        self._send.close()
        self._recv.close()


class EventProcessor:
    """Fans events out to subscriptions (see module docstring).

    Args:
        logger: this process's ``EventLogger`` (its events reach subscribers at once).
        store: the event store polled for other processes' events while anyone subscribes.

    Examples:
        >>> from omniq.events.logger import EventLogger
        >>> from omniq.events.processor import EventProcessor
        >>> from omniq.storage.memory import MemoryBackend
        >>> store = MemoryBackend()
        >>> processor = EventProcessor(EventLogger(store), store)
        >>> sub = processor.subscribe(types=["failed"])
        >>> processor.unsubscribe(sub)
    """

    def __init__(self, logger: EventLogger, store: EventStore) -> None:
        self._store = store
        self._subs: list[Subscription] = []
        self._seen: dict[_Key, float] = {}
        self._order: deque[tuple[float, _Key]] = deque()
        self._wake = anyio.Event()
        logger.add_listener(self._local)

    def subscribe(
        self,
        task_id: str | None = None,
        queue: str | None = None,
        types: Sequence[str] | None = None,
        *,
        buffer: int = DEFAULT_BUFFER,
    ) -> Subscription:
        """A new subscription to events from now on (from this and other processes).

        Args:
            task_id: only this task's events.
            queue: only this queue's events.
            types: only these event types.
            buffer: events held for a slow consumer (see ``Subscription``).

        Returns:
            The subscription; ``unsubscribe`` it when done.
        """
        sub = Subscription(task_id, queue, types, buffer)
        self._subs.append(sub)
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub`` and close it (idempotent).

        Args:
            sub: a subscription from ``subscribe``.
        """
        if sub in self._subs:
            self._subs.remove(sub)
        sub.close()

    def _remember(self, ev: TaskEvent, now: float) -> bool:
        """False if this event was already delivered."""
        k = _key(ev)
        if k in self._seen:
            return False
        self._seen[k] = now
        self._order.append((now, k))
        while self._order and now - self._order[0][0] > REMEMBER:
            _, old = self._order.popleft()
            self._seen.pop(old, None)
        return True

    def _deliver(self, events: Sequence[TaskEvent]) -> int:
        now = time.monotonic()
        n = 0
        for ev in events:
            if not self._remember(ev, now):
                continue
            n += 1
            for sub in self._subs:
                if sub.wants(ev):
                    sub.offer(ev)
        return n

    def _local(self, batch: list[TaskEvent]) -> None:
        if self._subs:
            self._deliver(batch)

    async def run(self) -> None:
        """Poll the store for other processes' events while anyone is subscribed.

        Runs until cancelled; sleeps while nobody subscribes. Uses the store's own wake-up
        (PostgreSQL ``NOTIFY``, Redis pub/sub, a NATS subject) where it has one, else polls
        with back-off (50 ms to 1 s). A failed poll is logged at DEBUG and retried.
        """
        since = time.time()
        delay = 0.05
        while True:
            if not self._subs:
                self._wake = anyio.Event()
                await self._wake.wait()
                since = time.time() - LOOKBACK
            try:
                found = await self._store.query_events(since=since - LOOKBACK)
            except Exception:
                log.debug("event poll failed; will retry", exc_info=True)
                found = []
            if found:
                since = max(since, max(e.timestamp for e in found if not math.isnan(e.timestamp)))
            fresh = self._deliver(found)
            delay = 0.05 if fresh else min(1.0, delay * 1.5)
            try:  # the store's own signal when it has one (NOTIFY, pub/sub), else a back-off
                await self._store.wait_for_events(delay)
            except Exception:
                log.debug("waiting for events failed; polling", exc_info=True)
                await anyio.sleep(delay)


async def aiter_subscription(processor: EventProcessor, sub: Subscription) -> AsyncIterator[TaskEvent]:
    """Iterate a subscription and unsubscribe when the consumer stops.

    Args:
        processor: the processor ``sub`` came from.
        sub: the subscription.

    Yields:
        Its events, preceded by a ``dropped`` event when the consumer fell behind.

    Examples:
        >>> import anyio
        >>> from omniq.events.logger import EventLogger
        >>> from omniq.events.processor import EventProcessor, aiter_subscription
        >>> from omniq.storage.memory import MemoryBackend
        >>> async def main():
        ...     store = MemoryBackend()
        ...     events = EventLogger(store)
        ...     processor = EventProcessor(events, store)
        ...     sub = processor.subscribe()
        ...     events.emit("t1", "succeeded")
        ...     stream = aiter_subscription(processor, sub)
        ...     ev = await stream.__anext__()
        ...     await stream.aclose()                       # unsubscribes
        ...     return ev.task_id, ev.type
        >>> anyio.run(main)
        ('t1', 'succeeded')
    """
    try:
        async for ev in sub:
            yield ev
    finally:
        processor.unsubscribe(sub)


__all__ = ["DEFAULT_BUFFER", "EventProcessor", "Subscription", "aiter_subscription"]
