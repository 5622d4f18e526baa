"""The event logger batches writes and never loses an event when the store fails for a while."""

from __future__ import annotations

import anyio
import pytest

from omniq.events.logger import EventLogger
from omniq.storage.memory import MemoryBackend

pytestmark = pytest.mark.anyio


class FlakyStore(MemoryBackend):
    """A real memory store whose first ``fail`` appends raise (a backend outage)."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail
        self.batches: list[int] = []

    async def append_events(self, events):
        if self.fail:
            self.fail -= 1
            raise OSError("store unavailable")
        self.batches.append(len(events))
        await super().append_events(events)


async def test_events_are_batched_and_kept_in_order():
    store = FlakyStore(fail=0)
    await store.connect()
    log = EventLogger(store, interval=0.02)
    seen = []
    log.add_listener(seen.extend)
    async with anyio.create_task_group() as tg:
        tg.start_soon(log.run)
        for i in range(1000):
            log.emit(f"t{i:04d}", "enqueued", timestamp=float(i))
        await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    await log.flush()
    got = await store.query_events()
    assert [e.task_id for e in got] == [f"t{i:04d}" for i in range(1000)]
    assert len(store.batches) < 10  # a burst costs a handful of writes
    assert len(seen) == 1000  # listeners saw every event at once


async def test_store_outage_keeps_events_for_the_next_try():
    store = FlakyStore(fail=2)
    await store.connect()
    log = EventLogger(store, interval=0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(log.run)
        log.emit("a", "enqueued", timestamp=1.0)
        log.emit("a", "started", timestamp=2.0)
        with anyio.fail_after(10):
            while len(await store.query_events()) < 2:
                await anyio.sleep(0.05)
                log.emit_many([])  # nothing new: the retry comes from the flusher itself
                log._wake.set()
        tg.cancel_scope.cancel()
    assert [e.type for e in await store.query_events(task_id="a")] == ["enqueued", "started"]


async def test_store_outage_is_one_warning_and_one_recovery_line(caplog):
    """A server restart while events are written: no ERROR, no traceback per retry."""
    import logging

    store = FlakyStore(fail=3)
    store.url = "redis://user:s3cret@127.0.0.1:6379/0"
    await store.connect()
    log = EventLogger(store, interval=0.01)
    caplog.set_level(logging.INFO, logger="omniq")
    async with anyio.create_task_group() as tg:
        tg.start_soon(log.run)
        log.emit("a", "enqueued", timestamp=1.0)
        with anyio.fail_after(10):
            while not await store.query_events():
                await anyio.sleep(0.05)
                log._wake.set()
        tg.cancel_scope.cancel()
    mine = [r for r in caplog.records if r.name == "omniq.events"]
    assert [r.levelno for r in mine] == [logging.WARNING, logging.WARNING]
    assert "failed" in mine[0].getMessage() and "works again" in mine[1].getMessage()
    assert not any(r.exc_info for r in mine)
    assert all("s3cret" not in r.getMessage() and "***" in r.getMessage() for r in mine)
