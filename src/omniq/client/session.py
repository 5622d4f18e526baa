"""The session: what ``AsyncOmniQ.open()`` connects and every component shares.

One ``Session`` per client holds the configuration and its URLs, the open / closing / closed
state, the event loop the client runs on, the three stores, the event logger and processor,
this process's worker (if it runs one), its background tasks, metrics and blob cache. The
components (intake, waiters, janitor, health, schedules) read these; only the orchestrator
opens and closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from ..blobcache import BlobCache
from ..config import configure_logging, resolve_urls, settings
from ..errors import ConfigError, OmniQClosed, StorageError
from ..events.logger import EventLogger
from ..events.metrics import Metrics
from ..events.processor import EventProcessor
from ..logs import get_logger
from ..models import OmniQConfig
from ..redact import masked
from ..storage.base import EventStore, ResultStore, TaskQueue
from ..storage.urls import check_signing, open_backends
from ..workers.base import Worker

log = get_logger("omniq")

CLOSE_STEP = 30.0  # seconds a storage may take to answer one step of close()


class ClosedMeanwhile(RuntimeError):
    """A facade call reached its AsyncOmniQ while another thread closed it (the facade retries
    on the reopened instance; elsewhere it reads as this message)."""

    def __init__(self) -> None:
        super().__init__("this OmniQ was closed by another thread meanwhile; call again to reopen it")


class Session:
    """Connections and state shared by a client's components (see the module docstring)."""

    def __init__(self, config: OmniQConfig) -> None:
        self.config = config
        self.tasks_url, self.results_url, self.events_url = resolve_urls(config)
        self.opened = False
        self.closing = False
        self.closed = False  # closed by close(): calls refuse (OmniQClosed) until open()
        self.facade_owned = False  # set by OmniQ: only it (re)opens, so a loop never outlives it
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0
        self.bg: list[asyncio.Task[Any]] = []
        self.worker: Worker | None = None
        self.queue: TaskQueue
        self.results: ResultStore
        self.event_store: EventStore
        self.events: EventLogger
        self.processor: EventProcessor
        self.metrics = Metrics()  # this process's counters and timings (health(), Prometheus)
        self.blobs = BlobCache()  # the blob files this process reads

    # --- opening and closing ---------------------------------------------------------------
    async def connect(self) -> None:
        """Take the running loop, open and connect the three stores, start the event logger
        and processor. Storage that cannot be opened raises ``StorageError`` (or the backend's
        ``ConfigError``) with every store opened so far closed again."""
        cfg = self.config
        if _log_level_asked(cfg):
            configure_logging(cfg.log_level)  # the library prints nothing unless asked
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.queue, self.results, self.event_store = open_backends(
            self.tasks_url, self.results_url, self.events_url, storage_options=dict(cfg.storage_options)
        )
        # shared storage without a key: one WARNING, or a ConfigError with require_signing
        check_signing((self.tasks_url, self.results_url, self.events_url),
                      require=cfg.require_signing, log=log)
        connected: list[Any] = []
        try:
            for b in (self.queue, self.results, self.event_store):
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
        self.queue.results_here = self.queue is self.results
        self.events = EventLogger(self.event_store)
        self.events.add_listener(self.metrics.on_events)
        self.processor = EventProcessor(self.events, self.event_store)
        self.spawn(self.events.run())
        self.spawn(self.processor.run())

    async def disconnect(self, *, events_stuck: bool) -> None:
        """Stop the background tasks, write the last events (unless that timed out once
        already) and close the stores, each step bounded by ``CLOSE_STEP``."""
        await cancel_all(self.bg)
        self.bg.clear()
        if not events_stuck:  # (once timed out is enough)
            with contextlib.suppress(Exception):
                await within(CLOSE_STEP, "writing the last events", self.events_url, self.events.flush())
        for b, url in ((self.event_store, self.events_url), (self.results, self.results_url),
                       (self.queue, self.tasks_url)):
            with contextlib.suppress(Exception):
                await within(CLOSE_STEP, "closing", url, b.close())

    # --- for the components ------------------------------------------------------------------
    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` as a background task of this session (cancelled by ``disconnect``)."""
        assert self.loop is not None
        t: asyncio.Task[Any] = self.loop.create_task(coro)  # type: ignore[arg-type]
        t.add_done_callback(_report_crash)
        self.bg.append(t)

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.loop_thread

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Call ``fn`` on the loop: now when on the loop's thread, else soon (thread-safe)."""
        assert self.loop is not None
        if self.on_loop_thread():
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    def serves(self, queue: str) -> bool:
        """True when this instance's own workers take tasks from ``queue``."""
        served = self.config.queues
        return self.worker is not None and (served is None or queue in served)

    def check_accepting(self) -> None:
        """Raise unless tasks can be handed over now (open, not closing)."""
        if self.closing and self.facade_owned:
            raise ClosedMeanwhile()  # accepted now, it would miss the closing flush
        if self.closed and not self.opened:
            raise self.closed_error()
        if not self.opened or self.loop is None or self.closing:
            raise RuntimeError("this OmniQ is not open (or is closing): use `async with AsyncOmniQ(...)` "
                               "or `await oq.open()`")

    def closed_error(self) -> OmniQClosed:
        return OmniQClosed(
            f"this OmniQ (tasks={masked(self.tasks_url)}) is closed: reopen it with oq.open() or use a "
            "new `with` block; handles from it still read their results")


async def within(limit: float, what: str, url: str, step: Awaitable[Any]) -> bool:
    """One step of ``close()`` that waits on a storage: a server that stops answering costs a
    WARNING naming it, not a ``close()`` that never returns. False if it timed out."""
    with anyio.move_on_after(limit) as scope:
        await step
    if scope.cancelled_caught:
        log.warning("close: %s (%s) did not finish within %g s; going on", what, masked(url), limit)
    return not scope.cancelled_caught


async def finish(task: asyncio.Task[Any], limit: float) -> bool:
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


async def cancel_all(tasks: Sequence[asyncio.Task[Any]], timeout: float = 10.0) -> None:
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


def _log_level_asked(cfg: OmniQConfig) -> bool:
    return cfg.log_level.upper() != settings.LOG_LEVEL or bool(os.environ.get("OMNIQ_LOG_LEVEL"))


def _report_crash(t: asyncio.Task[Any]) -> None:
    if not t.cancelled() and t.exception() is not None:
        log.error("omniq background task %s crashed", t.get_coro(), exc_info=t.exception())
