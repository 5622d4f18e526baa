"""Live updates: ONE event subscription per dashboard process, fanned out to every open page
through Server-Sent Events, and one storage watch that tells pages when a store goes away and
comes back. A burst of events costs a page one refresh per ``COALESCE`` seconds, not one per
event (no polling storm: pages never poll)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio

from ...logs import get_logger
from ...redact import masked

if TYPE_CHECKING:
    from ...client.orchestrator import AsyncOmniQ
    from .views import Overview

log = get_logger("omniq.dashboard")

COALESCE = 0.2  # seconds: events arriving within this window reach pages as one message
KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream (proxies close idle ones)
STORAGE_EVERY = 2.0  # seconds between storage probes
PROBE_TIMEOUT = 2.0
MAX_IDS = 200  # task ids named per message at most (past that: "many", pages refresh anyway)
PROBE_ID = "omniq-dashboard-probe"
#: seconds at most after events before the front page's copy is refreshed: twice what the last
#: refresh took (so refreshes hold the storage a third of the time at most), within COALESCE..1 s
OVERVIEW_DELAY = 1.0


class Client:
    """One open page's stream: a bounded queue of SSE messages."""

    def __init__(self, watch: str = "") -> None:
        self.watch = watch  # what the page shows: "overview", "all", "task:<id>", "none"
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=64)

    def put(self, message: str) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:  # a stalled page: it gets the next message; one refresh covers all
            pass


def sse(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class Hub:
    """Owns the subscription and the storage watch (``run``), and the pages' streams."""

    def __init__(self, oq: AsyncOmniQ, overview: Overview) -> None:
        self.oq = oq
        self.overview = overview
        self.clients: set[Client] = set()
        self.down: dict[str, str] = {}  # part -> masked URL of a store that does not answer
        self.delivered = 0  # events received (for tests and the benchmark)
        self._pending: list[Any] = []
        self._wake = asyncio.Event()
        self._overview_due = asyncio.Event()

    # --- pages --------------------------------------------------------------------------------
    async def stream(self, watch: str = "") -> AsyncIterator[str]:
        """One page's Server-Sent Events: the storage state at once, then ``tasks`` messages
        (and ``overview`` ones when the front page's copy changed)."""
        client = Client(watch)
        self.clients.add(client)
        try:
            yield "retry: 2000\n\n"
            yield sse("storage", self.storage_state())
            while True:
                try:
                    with anyio.fail_after(KEEPALIVE):
                        message = await client.queue.get()
                except TimeoutError:
                    message = ": keepalive\n\n"
                yield message
        finally:
            self.clients.discard(client)

    def broadcast(self, kind: str, data: Any) -> None:
        message = sse(kind, data)
        for client in list(self.clients):
            client.put(message)

    def overview_watched(self) -> bool:
        """An open front page, or a read of it in the last few seconds."""
        return any(c.watch == "overview" for c in self.clients) or self.overview.recently_read(10.0)

    def storage_state(self) -> dict[str, Any]:
        return {"ok": not self.down, "down": [{"part": p, "url": u} for p, u in sorted(self.down.items())]}

    # --- the one subscription and the storage watch -------------------------------------------
    async def run(self) -> None:
        """Until cancelled: the subscription, the coalescing sender, the storage watch."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._subscribe)
            tg.start_soon(self._send)
            tg.start_soon(self._refresh_overview)
            tg.start_soon(self._watch_storage)

    async def _subscribe(self) -> None:
        while True:
            try:
                async for ev in self.oq.subscribe():
                    self.delivered += 1
                    self._pending.append(ev)
                    self._wake.set()
            except Exception:  # (a closed instance, a store error): subscribe again shortly
                log.debug("dashboard subscription ended; subscribing again", exc_info=True)
            await anyio.sleep(1.0)

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch and self.clients:
                ids = list(dict.fromkeys(e.task_id for e in batch))
                self.broadcast("tasks", {
                    "ids": ids[:MAX_IDS], "many": len(ids) > MAX_IDS, "count": len(batch),
                    "types": sorted({e.type for e in batch}),
                    "queues": sorted({e.queue for e in batch if e.queue}),
                    "sent": time.time(),
                })
            if batch:
                self.overview.stale = True
                self._overview_due.set()
            await anyio.sleep(COALESCE)

    async def _refresh_overview(self) -> None:
        """Refresh the front page's copy after events (and every ``MAX_AGE`` seconds for the
        heartbeats) while someone looked at it lately; tell the pages when it changed. A slow
        refresh (a count over a million rows) delays only the front page, not the event stream."""
        previous: Any = None
        while True:
            with anyio.move_on_after(self.overview.MAX_AGE):
                await self._overview_due.wait()
            self._overview_due.clear()
            if not self.overview_watched():
                continue
            # pages showing the tasks that changed refresh first: on a deep SQLite queue the
            # count this refresh makes holds the storage's one connection for a while
            await anyio.sleep(min(OVERVIEW_DELAY, max(COALESCE, 2 * self.overview.cost)))
            self._overview_due.clear()
            try:
                data = await self.overview.refresh()
            except Exception:
                log.debug("dashboard: refreshing the overview failed", exc_info=True)
                continue
            shape = _comparable(data)
            if shape != previous and self.clients:
                self.broadcast("overview", {"taken": data["taken"]})
            previous = shape

    async def probe(self) -> dict[str, str]:
        """part -> masked URL of each store that does not answer within ``PROBE_TIMEOUT``."""
        s = self.oq.session
        checks = {
            "tasks": (s.tasks_url, lambda: s.queue.statuses([PROBE_ID])),
            "results": (s.results_url, lambda: s.results.get_result(PROBE_ID)),
            "events": (s.events_url, lambda: s.event_store.query_events(task_id=PROBE_ID, limit=1)),
        }
        down: dict[str, str] = {}

        async def check(part: str) -> None:
            url, call = checks[part]
            try:
                with anyio.fail_after(PROBE_TIMEOUT):
                    await call()
            except Exception:
                down[part] = masked(url)

        async with anyio.create_task_group() as tg:
            for part in checks:
                tg.start_soon(check, part)
        return down

    async def _watch_storage(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                if not self.oq.session.opened:  # the storage was down when the dashboard started
                    with contextlib.suppress(Exception), anyio.fail_after(PROBE_TIMEOUT * 2):
                        await self.oq.open()
                down = await self.probe()
                if down != self.down:
                    came_back = bool(self.down) and not down
                    self.down = down
                    self.overview.stale = True
                    self._overview_due.set()
                    state = self.storage_state()
                    state["recovered"] = came_back
                    self.broadcast("storage", state)
                    if down:
                        log.warning("dashboard: storage not answering: %s", ", ".join(down.values()))
            await anyio.sleep(STORAGE_EVERY)


def _comparable(data: dict[str, Any]) -> Any:
    """The overview without its clock readings (a heartbeat alone is no news)."""
    workers = [{k: v for k, v in w.items() if k != "last_heartbeat"} for w in data["workers"]]
    return repr({**data, "taken": None, "workers": workers})
