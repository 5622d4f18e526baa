"""Counters and timings of one process, for ``health()`` and a Prometheus scrape.

Counters come from the lifecycle events this process emits (its submits, its workers' starts
and outcomes), so they cost nothing on the hot path beyond a dict increment per event.
Timings are observed by the worker, which knows when a task became runnable, started and
finished. Metrics are per process, as Prometheus expects: each ``omniq worker`` exposes its own
and the scraper sums them; ``oq.health()`` shows the notebook's own process.
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
    """A histogram with exact count/sum/max and percentiles over the most recent samples."""

    def __init__(self, recent: int = 4096) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.buckets = [0] * len(BUCKETS)
        self._recent: deque[float] = deque(maxlen=recent)

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self._recent.append(seconds)

    def summary(self) -> dict[str, float | int | None]:
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
    """What this process has seen: events by type and queue, queue-wait and run durations."""

    def __init__(self) -> None:
        self.since = time.time()
        self.counters: Counter[tuple[str, str]] = Counter()  # (event type, queue) -> n
        self.queue_wait = Timing()
        self.run = Timing()

    def on_events(self, batch: Iterable[TaskEvent]) -> None:
        """An ``EventLogger`` listener."""
        self.counters.update([(ev.type, ev.queue or "default") for ev in batch])  # counted in C

    def snapshot(self) -> dict[str, Any]:
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
        """The Prometheus text exposition format (version 0.0.4)."""
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
    """Bind the metrics port up front, so a port in use is a clear error before any work."""
    from ..errors import ConfigError

    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listener  # type: ignore[return-value]


def bound_port(listener: anyio.abc.SocketListener) -> int:
    return int(listener.extra(anyio.abc.SocketAttribute.local_port))


async def serve_prometheus(render: Callable[[], str], listener: anyio.abc.SocketListener) -> None:
    """Answer ``GET /metrics`` with ``render()`` until cancelled.

    A few lines of HTTP/1.0 rather than a web framework: a scrape every few seconds is the
    whole load, and a worker should not pull in a server stack for it. A bad request, a
    slow client or a failed accept (out of file descriptors, say) never stops the worker:
    at most 16 connections are served at once, each for at most 5 s.
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
