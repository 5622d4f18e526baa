"""Events in the EVENTS stream, one subject per task."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Collection, Sequence

from nats.aio.msg import Msg

from ...models import TaskEvent
from .._codec import encode
from ..base import EventStore
from ..checks import events_in_order
from .connection import (
    JetStream,
)
from .guard import (
    gather,
    guarded,
    publish_quietly,
)
from .records import (
    EVENT_CLOCK_SLACK,
    MSG_ID,
    decode_event,
    token,
)


class NatsEvents(JetStream, EventStore):
    """The event store."""

    # --- events -------------------------------------------------------------------------------------------
    @guarded
    async def _append_events(self, events: Sequence[TaskEvent]) -> None:
        items: list[tuple[str, bytes, dict[str, str] | None]] = []
        for e in events:
            data = encode(e)
            msg_id = hashlib.blake2b(data, digest_size=16).hexdigest()  # same on a retry
            items.append((f"{self._p}.ev.{token(e.task_id)}", data, {MSG_ID: msg_id}))
        for i in range(0, len(items), 1000):
            await self._publish_ok(items[i : i + 1000])
        nc = self._nc
        if nc is not None:  # live subscriptions elsewhere read the stream now
            job = asyncio.ensure_future(publish_quietly(nc, f"{self._p}.evwake", b""))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    async def wait_for_events(self, timeout: float) -> None:
        """Return when any process's ``append_events`` published on ``<ns>.evwake`` (a core
        subject, not stored; subscribed on the first wait, so workers never receive it)."""
        nc = self._nc
        if self._events_sub is None and nc is not None:
            async def appended(msg: Msg) -> None:
                self._events_appended.set()

            self._events_sub = await nc.subscribe(f"{self._p}.evwake", cb=appended)
        await self._events_appended.wait(timeout)

    @guarded
    async def _query_events(
        self, task_id: str | None, since: float | None, types: list[str] | None, limit: int | None
    ) -> list[TaskEvent]:
        """``since`` is inclusive. Reading starts ``EVENT_CLOCK_SLACK`` s before ``since`` on the
        server's clock, so an event stamped more than that ahead of the server is not found."""
        subject = f"{self._p}.ev.{token(task_id) if task_id is not None else '>'}"
        start = None if since is None else since - EVENT_CLOCK_SLACK
        msgs = await self._scan(self.events_stream, subject, start_time=start)
        events = [decode_event(m.data) for m in msgs]
        return events_in_order(events, since, types, limit)  # ties keep stream order

    @guarded
    async def purge_events(self, *, before: float, task_ids: Collection[str] | None = None) -> int:
        if task_ids is None:
            msgs = await self._scan(self.events_stream, f"{self._p}.ev.>")
        else:  # one subject per task
            found = await gather(self._scan(self.events_stream, f"{self._p}.ev.{token(t)}")
                                 for t in dict.fromkeys(task_ids))
            msgs = [m for part in found for m in part]
        old = [m.metadata.sequence.stream for m in msgs if decode_event(m.data).timestamp < before]
        await gather(self._delete_msg(self.events_stream, s) for s in old)
        return len(old)
