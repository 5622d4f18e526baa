"""Counters and timings of one process, for ``health()`` and a Prometheus scrape.

Counters come from the lifecycle events this process emits (its submits, its workers' starts
and outcomes), so they cost nothing on the hot path beyond a dict increment per event.
Timings are observed by the worker, which knows when a task became runnable, started and
finished. Metrics are per process, as Prometheus expects: each ``omniq worker`` exposes its own
and the scraper sums them; ``oq.health()`` shows the notebook's own process.

Examples:
    >>> from omniq import TaskEvent
    >>> from omniq.events.metrics import Metrics
    >>> m = Metrics()
    >>> m.on_events([TaskEvent(task_id="t", type="succeeded", timestamp=0.0, queue="gpu")])
    >>> m.run.observe(0.2)
    >>> m.snapshot()["by_queue"], m.snapshot()["run_seconds"]["count"]
    ({'gpu': {'succeeded': 1}}, 1)
"""

from __future__ import annotations

import bisect
import contextlib
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.abc

from ..logs import get_logger
from ..models import EventType, TaskEvent

log = get_logger("omniq.metrics")

#: The event types counted, in the order they are reported.
COUNTED = tuple(t.value for t in EventType)

#: Upper bounds (seconds) of the histogram buckets; the last is +Inf.
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, math.inf)


class Timing:
    """A histogram with exact count/sum/max and percentiles over the most recent samples.

    Args:
        recent: samples kept for the percentiles (the histogram buckets count every sample).

    Attributes:
        count: samples observed.
        total: their sum (seconds).
        max: the largest.
        buckets: samples per bucket of ``BUCKETS`` (not cumulative).

    Examples:
        >>> from omniq.events.metrics import Timing
        >>> t = Timing()
        >>> for s in (0.1, 0.2, 0.3, 2.0):
        ...     t.observe(s)
        >>> s = t.summary()
        >>> s["count"], s["max"], s["p50"], round(s["mean"], 2)
        (4, 2.0, 0.3, 0.65)
    """

    def __init__(self, recent: int = 4096) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.buckets = [0] * len(BUCKETS)
        self._recent: deque[float] = deque(maxlen=recent)

    def observe(self, seconds: float) -> None:
        """Add one sample.

        Args:
            seconds: a duration; below zero (a clock step) counts as zero.
        """
        seconds = max(0.0, seconds)
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self._recent.append(seconds)

    def summary(self) -> dict[str, float | int | None]:
        """The figures ``health()`` shows.

        Returns:
            ``count``, ``sum``, ``mean``, ``max``, ``p50``, ``p95``, ``p99`` (None while empty;
            percentiles over the recent samples).
        """
        recent = sorted(self._recent)

        def pct(p: float) -> float | None:
            return recent[min(len(recent) - 1, int(p * len(recent)))] if recent else None

        return {
            "count": self.count,
            "sum": self.total,
            "mean": self.total / self.count if self.count else None,
            "max": self.max if self.count else None,
            "p50": pct(0.50),
            "p95": pct(0.95),
            "p99": pct(0.99),
        }


class Metrics:
    """What this process has seen: events by type and queue, queue-wait and run durations.

    Attributes:
        since: when counting started (epoch seconds).
        counters: ``(event type, queue) -> count``.
        queue_wait: time from enqueued (or its eta) to started.
        run: time from started to finished.

    Examples:
        >>> from omniq import TaskEvent
        >>> from omniq.events.metrics import Metrics
        >>> m = Metrics()
        >>> m.on_events([TaskEvent(task_id="t", type="enqueued", timestamp=0.0)])
        >>> m.snapshot()["counters"]["enqueued"]
        1
    """

    def __init__(self) -> None:
        self.since = time.time()
        self.counters: Counter[tuple[str, str]] = Counter()  # (event type, queue) -> n
        self.queue_wait = Timing()
        self.run = Timing()

    def on_events(self, batch: Iterable[TaskEvent]) -> None:
        """An ``EventLogger`` listener: count each event by type and queue.

        Args:
            batch: events as emitted (a missing queue counts as ``default``).
        """
        self.counters.update([(ev.type, ev.queue or "default") for ev in batch])  # counted in C

    def snapshot(self) -> dict[str, Any]:
        """The metrics as plain data (``oq.health()["metrics"]``).

        Returns:
            ``since``, ``counters`` (every event type, zeros included), ``by_queue``
            (``{queue: {type: n}}``), ``queue_wait_seconds`` and ``run_seconds`` (summaries).
        """
        totals: dict[str, int] = dict.fromkeys(COUNTED, 0)
        by_queue: dict[str, dict[str, int]] = {}
        for (kind, queue), n in sorted(self.counters.items()):
            totals[kind] = totals.get(kind, 0) + n
            by_queue.setdefault(queue, {})[kind] = n
        return {
            "since": self.since,
            "counters": totals,
            "by_queue": by_queue,
            "queue_wait_seconds": self.queue_wait.summary(),
            "run_seconds": self.run.summary(),
        }

    def prometheus(self, gauges: dict[str, tuple[str, float]] | None = None) -> str:
        """The Prometheus text exposition format (version 0.0.4).

        Args:
            gauges: more values to expose, ``{name: (help text, value)}`` (slots, tasks held).

        Returns:
            ``omniq_events_total`` by type and queue, the ``omniq_queue_wait_seconds`` and
            ``omniq_run_seconds`` histograms, and the gauges, as text.

        Examples:
            >>> from omniq import TaskEvent
            >>> from omniq.events.metrics import Metrics
            >>> m = Metrics()
            >>> m.on_events([TaskEvent(task_id="t", type="failed", timestamp=0.0, queue="gpu")])
            >>> text = m.prometheus({"omniq_slots": ("Worker slots.", 4)})
            >>> 'omniq_events_total{type="failed",queue="gpu"} 1' in text, "omniq_slots 4" in text
            (True, True)
        """
        out = [
            "# HELP omniq_events_total Lifecycle events emitted by this process.",
            "# TYPE omniq_events_total counter",
        ]
        for (kind, queue), n in sorted(self.counters.items()):
            out.append(f'omniq_events_total{{type="{_label(kind)}",queue="{_label(queue)}"}} {n}')
        for name, timing, text in (
            ("omniq_queue_wait_seconds", self.queue_wait, "Time from enqueued (or its eta) to started."),
            ("omniq_run_seconds", self.run, "Time from started to finished."),
        ):
            out += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
            running = 0
            for bound, n in zip(BUCKETS, timing.buckets, strict=True):
                running += n
                le = "+Inf" if math.isinf(bound) else repr(bound)
                out.append(f'{name}_bucket{{le="{le}"}} {running}')
            out += [f"{name}_sum {timing.total!r}", f"{name}_count {timing.count}"]
        for name, (text, value) in (gauges or {}).items():
            out += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value!r}"]
        return "\n".join(out) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def open_listener(host: str, port: int) -> anyio.abc.SocketListener:
    """Bind the metrics port up front, so a port in use is a clear error before any work.

    Args:
        host: the address to listen on (``omniq worker --metrics-host``).
        port: the port (0: any free one; see ``bound_port``).

    Returns:
        The listener, for ``serve_prometheus``.

    Raises:
        ConfigError: the port cannot be bound (in use, not permitted), naming it.

    Examples:
        >>> import anyio
        >>> from omniq.events.metrics import bound_port, open_listener
        >>> async def main():
        ...     listener = await open_listener("127.0.0.1", 0)
        ...     async with listener:
        ...         return bound_port(listener) > 0
        >>> anyio.run(main)
        True
    """
    from ..errors import ConfigError

    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listener  # type: ignore[return-value]


def bound_port(listener: anyio.abc.SocketListener) -> int:
    """The port ``listener`` is bound to (the one chosen when 0 was asked).

    Args:
        listener: from ``open_listener``.

    Returns:
        The local port number.

    Examples:
        >>> import anyio
        >>> from omniq.events.metrics import bound_port, open_listener
        >>> async def main():
        ...     async with await open_listener("127.0.0.1", 0) as listener:
        ...         return 0 < bound_port(listener) < 65536
        >>> anyio.run(main)
        True
    """
    return int(listener.extra(anyio.abc.SocketAttribute.local_port))


async def serve_prometheus(render: Callable[[], str], listener: anyio.abc.SocketListener) -> None:
    """Answer ``GET /metrics`` with ``render()`` until cancelled.

    A few lines of HTTP/1.0 rather than a web framework: a scrape every few seconds is the
    whole load, and a worker should not pull in a server stack for it. A bad request, a
    slow client or a failed accept (out of file descriptors, say) never stops the worker:
    at most 16 connections are served at once, each for at most 5 s.

    Args:
        render: makes the page (``Metrics.prometheus``), called per request.
        listener: from ``open_listener``; closed when this returns.

    Examples:
        >>> import anyio, urllib.request
        >>> from omniq.events.metrics import bound_port, open_listener, serve_prometheus
        >>> async def main():
        ...     listener = await open_listener("127.0.0.1", 0)
        ...     url = f"http://127.0.0.1:{bound_port(listener)}/metrics"
        ...     async with anyio.create_task_group() as tg:
        ...         tg.start_soon(serve_prometheus, lambda: "up 1", listener)
        ...         body = await anyio.to_thread.run_sync(lambda: urllib.request.urlopen(url).read())
        ...         tg.cancel_scope.cancel()
        ...     return body
        >>> anyio.run(main)
        b'up 1'
    """
    limit = anyio.CapacityLimiter(16)

    async def answer(conn: anyio.abc.SocketStream) -> None:
        async with limit, conn:
            try:
                with anyio.fail_after(5):
                    await _answer(conn, render)
            except Exception:  # a client's problem (or a render bug) is logged, not fatal
                log.debug("metrics request failed", exc_info=True)

    async with listener:
        while True:
            try:
                await listener.serve(answer)
            except Exception:  # accept failed (e.g. EMFILE): wait and listen again
                log.warning("metrics endpoint: accept failed; retrying in 1 s", exc_info=True)
                await anyio.sleep(1)


async def _answer(conn: anyio.abc.SocketStream, render: Callable[[], str]) -> None:
    request = b""
    while b"\r\n\r\n" not in request and b"\n\n" not in request and len(request) < 8192:
        try:
            request += await conn.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            break
    parts = request.split(b" ", 2)
    path = parts[1].split(b"?")[0] if len(parts) > 1 else b""
    if parts[0] != b"GET" or path not in (b"/metrics", b"/"):
        status, body, ctype = "404 Not Found", b"try GET /metrics\n", "text/plain"
    else:
        status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
        body = render().encode()
    head = f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await conn.send(head.encode() + body)
