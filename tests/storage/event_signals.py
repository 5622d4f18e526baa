"""A check the server backends share: ``wait_for_events`` returns on another connection's
``append_events`` (NOTIFY, pub/sub), not at its timeout, so live subscriptions see other
processes' events at once rather than at their next poll."""

from __future__ import annotations

import time

import anyio

from omniq.storage.urls import open_backends

from .records import event


async def woken_by_another_connection(url: str) -> None:
    _, _, waiting = open_backends("memory://", url, url)
    _, _, writer = open_backends("memory://", url, url)
    await waiting.connect()
    await writer.connect()
    try:
        await waiting.wait_for_events(0.3)  # the first wait subscribes
        began = time.monotonic()

        async def append_soon() -> None:
            await anyio.sleep(0.2)
            await writer.append_events([event("t-signal", "enqueued", time.time())])

        async with anyio.create_task_group() as tg:
            tg.start_soon(append_soon)
            await waiting.wait_for_events(30.0)
        assert time.monotonic() - began < 10, "woken by the timeout, not by the append"
    finally:
        await waiting.close()
        await writer.close()
