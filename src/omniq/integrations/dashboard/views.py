"""What each page shows, gathered from the public API (``health()``, ``tasks()``, ``task()``,
``schedules()``) and the result store; no HTML here. Every storage call is bounded, so a store
that does not answer costs a page ``STORAGE_TIMEOUT`` seconds and a banner, never a hang."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ...client.admin import UNREADABLE
from ...errors import ConfigError, TaskNotFound
from ...models import TaskStatus
from ...redact import masked
from ...serialization.peek import safe_repr, value_repr
from ...sweep.handles import latest_results

if TYPE_CHECKING:
    from ...client.orchestrator import AsyncOmniQ
    from ...models import Task

T = TypeVar("T")
STORAGE_TIMEOUT = 3.0
STATUSES = [s.value for s in TaskStatus]
ACTIVE = (TaskStatus.RUNNING, TaskStatus.QUEUED, TaskStatus.PENDING)
SWEEP_SCAN = 500  # active tasks looked at per status to find the sweeps in flight
PAGE_SIZES = (25, 50, 100, 200, 500)


class StorageDown(Exception):
    """A store did not answer (or failed) while a page was gathered; ``url`` is masked."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class Unreadable(Exception):
    """A stored record could not be decoded (malformed bytes): the storage answered, so this is
    no "storage down"; the page says which call failed instead."""


async def bounded(oq: AsyncOmniQ, call: Awaitable[T], url: str | None = None) -> T:
    """``await call`` within ``STORAGE_TIMEOUT``; a failure of the storage becomes ``StorageDown``
    naming ``url`` (default: the task queue's), password masked; a record that cannot be decoded
    becomes ``Unreadable``. Bad input and unknown ids pass."""
    try:
        with anyio.fail_after(STORAGE_TIMEOUT):
            return await call
    except (TaskNotFound, ConfigError):
        raise
    except UNREADABLE as exc:
        raise Unreadable(f"a stored record cannot be read: {type(exc).__name__}: {exc}"[:500]) from None
    except TimeoutError:
        raise StorageDown(masked(url or oq.tasks_url), f"no answer within {STORAGE_TIMEOUT:g} s") from None
    except Exception as exc:
        raise StorageDown(masked(url or oq.tasks_url), f"{type(exc).__name__}: {exc}") from None


def parse_filters(params: dict[str, str]) -> dict[str, Any]:
    """The ``/tasks`` query (status, queue, name, limit, before) checked; ``ConfigError`` names a
    bad one and what is valid."""
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise ConfigError(f"status={status!r} is not valid: expected one of {', '.join(STATUSES)}")
    raw_limit = params.get("limit") or "50"
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise ConfigError(f"limit={raw_limit!r} is not valid: expected a whole number from 1 to 1000")
    return {
        "status": status,
        "queue": (params.get("queue") or "").strip() or None,
        "name": (params.get("name") or "").strip() or None,
        "limit": limit,
        "before": (params.get("before") or "").strip() or None,
    }


async def overview(oq: AsyncOmniQ) -> dict[str, Any]:
    """The front page's data: counts by queue and status, workers, schedules with their last
    outcome, recent failures, sweeps in flight. Heavier than any other page (a count over every
    task), so the dashboard keeps one copy for all pages (``Overview``)."""
    s = oq.session
    now = time.time()
    down: list[str] = []
    unreadable: list[str] = []
    got: dict[str, Any] = {}
    calls: dict[str, tuple[Awaitable[Any], str]] = {
        "counts": (s.queue.counts(), s.tasks_url),
        "workers": (s.queue.workers(), s.tasks_url),
        "schedules": (oq.schedules(), s.tasks_url),
        "failures": (recent_failures(oq), s.tasks_url),
        "sweeps": (running_sweeps(oq), s.results_url),
    }

    async def fetch(key: str) -> None:
        call, url = calls[key]
        try:
            got[key] = await bounded(oq, call, url)
        except StorageDown as exc:
            down.append(exc.url)
        except Unreadable as exc:  # that part shows empty; the rest of the page stands
            unreadable.append(f"{key}: {exc}")

    async with anyio.create_task_group() as tg:
        for key in calls:
            tg.start_soon(fetch, key)
    schedules = got.get("schedules") or []
    last_ids = [sc["last_task_id"] for sc in schedules if sc.get("last_task_id")]
    last: dict[str, TaskStatus] = {}
    if last_ids and not down:
        with contextlib.suppress(StorageDown):
            last = await bounded(oq, s.queue.statuses(last_ids))
    for sc in schedules:
        st = last.get(sc.get("last_task_id") or "")
        sc["last_outcome"] = st.value if st is not None else None
    lease = oq.config.lease
    workers = [{"id": w.id, "kind": w.kind, "host": w.host, "slots": w.slots, "queues": w.queues,
                "last_heartbeat": w.last_heartbeat, "alive": now - w.last_heartbeat < (w.lease or lease),
                "missing": w.missing, "job": w.job} for w in got.get("workers") or []]
    queues = [{"name": q, "counts": {st: c.get(st, 0) for st in STATUSES}, "total": sum(c.values())}
              for q, c in sorted((got.get("counts") or {}).items())]
    return {"queues": queues, "workers": workers, "schedules": schedules,
            "failures": got.get("failures") or [], "sweeps": got.get("sweeps") or [],
            "down": sorted(set(down)), "unreadable": unreadable, "taken": now, "complete": not down}


NAME_SCAN = 20_000  # tasks a search by function name reads per page at most
NAME_BATCH = 1_000


async def tasks_named(oq: AsyncOmniQ, f: dict[str, Any]) -> tuple[list[Any], str | None, bool]:
    """A ``/tasks`` page filtered by function name, reading at most ``NAME_SCAN`` tasks (a name
    is matched on the decoded records: a name nothing matches would read them all). Returns the
    page, the ``before=`` of the next one (None at the end), and whether the scan stopped short
    of a full page (then "no more matches in the last N tasks")."""
    s = oq.session
    if f["before"] is not None and await s.queue.get_task(f["before"]) is None:
        raise TaskNotFound(f["before"], masked(oq.tasks_url))
    statuses = [TaskStatus(f["status"])] if f["status"] else None
    found: list[Task] = []
    cursor: str | None = f["before"]
    scanned = 0
    while len(found) < f["limit"]:
        if scanned >= NAME_SCAN:
            return await oq.admin.summaries(found), cursor, True
        want = min(NAME_BATCH, NAME_SCAN - scanned)
        batch = await s.queue.list_tasks(statuses=statuses, queue=f["queue"], limit=want, before=cursor)
        scanned += len(batch)
        for t in batch:
            if t.name == f["name"]:
                found.append(t)
                if len(found) == f["limit"]:
                    return await oq.admin.summaries(found), t.id, False
        if len(batch) < want:
            return await oq.admin.summaries(found), None, False
        cursor = batch[-1].id
    return await oq.admin.summaries(found), found[-1].id if found else None, False


FAILURES_SCAN = 200  # failed tasks looked at (newest created) to find the latest failures


async def recent_failures(oq: AsyncOmniQ, count: int = 10) -> list[Any]:
    """The ``count`` latest failures by failure time (a task created long ago that just failed
    first), among the newest ``FAILURES_SCAN`` failed tasks."""
    page = await oq.tasks(status=TaskStatus.FAILED, limit=FAILURES_SCAN)
    return sorted(page, key=lambda t: t.finished or t.created, reverse=True)[:count]


class Overview:
    """One copy of the front page's data for the whole dashboard process: pages read it, the
    event hub refreshes it after events (one refresh at a time, whatever the number of pages),
    and a read of a copy older than ``MAX_AGE`` serves it and refreshes it behind."""

    MAX_AGE = 5.0

    def __init__(self, oq: AsyncOmniQ) -> None:
        self.oq = oq
        self.data: dict[str, Any] | None = None
        self.taken = 0.0  # monotonic time of the last refresh
        self.cost = 0.0  # seconds the last refresh took
        self.stale = True
        self.read_at = 0.0  # monotonic time of the last read (the hub refreshes while someone looks)
        self._lock = anyio.Lock()
        self._behind: asyncio.Task[Any] | None = None

    async def get(self) -> dict[str, Any]:
        self.read_at = time.monotonic()
        if self.data is None or not self.data["complete"]:
            return await self.refresh()
        if self.stale or time.monotonic() - self.taken > self.MAX_AGE:
            self.refresh_behind()
        return self.data

    def refresh_behind(self) -> None:
        if self._behind is None or self._behind.done():
            self._behind = asyncio.get_running_loop().create_task(self.refresh())

    def close(self) -> None:
        """Cancel a refresh still running behind (the dashboard is stopping)."""
        if self._behind is not None and not self._behind.done():
            self._behind.cancel()

    def recently_read(self, within: float = 60.0) -> bool:
        return time.monotonic() - self.read_at < within

    async def refresh(self) -> dict[str, Any]:
        """A new copy (waits for one in progress instead of starting a second)."""
        started = time.monotonic()
        async with self._lock:
            if self.data is not None and self.taken >= started and self.data["complete"]:
                return self.data  # refreshed while this call waited
            self.stale = False
            begun = time.monotonic()
            self.data = await overview(self.oq)
            self.taken = time.monotonic()
            self.cost = self.taken - begun
            return self.data


async def _active_sweep_tasks(oq: AsyncOmniQ) -> list[Task]:
    """The newest ``SWEEP_SCAN`` tasks of each active status that belong to a sweep."""
    s = oq.session
    out: list[Task] = []
    for status in ACTIVE:
        page = await bounded(oq, s.queue.list_tasks(statuses=[status], limit=SWEEP_SCAN))
        out += [t for t in page if isinstance(t.metadata, dict) and isinstance(t.metadata.get("sweep"), str)]
    return out


#: sweep name -> (monotonic time, {key: status} of its finished points): the front page reads a
#: running sweep's results at most every SWEEP_EVERY seconds, not at each refresh
_finished_cache: dict[tuple[int, str], tuple[float, dict[str, str]]] = {}
SWEEP_EVERY = 10.0


async def _finished_statuses(oq: AsyncOmniQ, name: str) -> dict[str, str]:
    cache_key = (id(oq), name)
    hit = _finished_cache.get(cache_key)
    if hit is not None and time.monotonic() - hit[0] < SWEEP_EVERY:
        return hit[1]
    done = await sweep_results(oq, name)
    statuses = {key: r.status.value for key, r in done.items()}  # the values are dropped here
    if len(_finished_cache) > 100:
        _finished_cache.clear()
    _finished_cache[cache_key] = (time.monotonic(), statuses)
    return statuses


async def running_sweeps(oq: AsyncOmniQ) -> list[dict[str, Any]]:
    """Sweeps with points queued, running or pending (among the newest ``SWEEP_SCAN`` of each),
    with their progress: finished points from the result store, active ones from the queue. A
    point run again (retried, resubmitted) counts once, as active."""
    active: dict[str, dict[str, str]] = {}  # sweep -> point key (or task id) -> status
    for t in await _active_sweep_tasks(oq):
        active.setdefault(t.metadata["sweep"], {})[t.key or t.id] = t.status.value
    out = []
    for name, points in sorted(active.items()):
        finished = Counter(st for key, st in (await _finished_statuses(oq, name)).items() if key not in points)
        counts = Counter(points.values())
        total = sum(finished.values()) + len(points)
        out.append({"name": name, "succeeded": finished["succeeded"], "failed": finished["failed"],
                    "running": counts["running"], "waiting": counts["queued"] + counts["pending"],
                    "total": total,
                    "percent": round(100 * sum(finished.values()) / total) if total else 100})
    return out


async def sweep_results(oq: AsyncOmniQ, name: str) -> dict[str, Any]:
    """The latest stored result of each point of sweep ``name`` (key -> TaskResult), values
    left as bytes (shown through ``value_repr``, never unpickled)."""
    s = oq.session
    found = await bounded(oq, s.results.find_results(key_prefix=f"{name}/"), s.results_url)
    return latest_results(r for r in found if (r.metadata or {}).get("sweep") == name)


SWEEP_PAGE = 200  # points per page of a sweep's table
PARAM_CHARS = 80  # characters of a parameter's repr shown in a cell


def _param_reprs(params: Any) -> dict[str, str]:
    if not isinstance(params, dict):
        return {}
    return {str(k)[:PARAM_CHARS]: _cut(safe_repr(v)) for k, v in list(params.items())[:50]}


def _cut(text: str) -> str:
    return text if len(text) <= PARAM_CHARS else text[: PARAM_CHARS - 3] + "..."


async def sweep_page(oq: AsyncOmniQ, name: str, offset: int = 0) -> dict[str, Any] | None:
    """A sweep's table of points (None when nothing of it is stored): parameters, status,
    duration, value or error, and the task of each, in submission order, ``SWEEP_PAGE`` points
    from ``offset``; parameters and values as short reprs."""
    done = await sweep_results(oq, name)
    rows: dict[str, dict[str, Any]] = {}
    for key, r in done.items():
        rows[key] = {
            "task_id": r.task_id, "params": (r.metadata or {}).get("params") or {},
            "status": r.status.value, "attempts": r.attempts,
            "duration": (r.finished_at - r.started_at) if r.finished_at and r.started_at else None,
            "payload": r.payload if r.status is TaskStatus.SUCCEEDED else None,
            "error": _cut(f"{r.error.type}: {r.error.message}") if r.error else None,
        }
    for task in await _active_sweep_tasks(oq):
        if task.metadata.get("sweep") != name or not task.key:
            continue
        if task.key in rows and rows[task.key]["task_id"] > task.id:
            continue
        rows[task.key] = {"task_id": task.id, "params": task.metadata.get("params") or {},
                          "status": task.status.value, "attempts": task.attempts,
                          "duration": None, "payload": None, "error": None}
    if not rows:
        return None
    ordered = sorted(rows.values(), key=lambda r: r["task_id"])
    counts = Counter(r["status"] for r in ordered)
    offset = max(0, min(offset, len(ordered) - 1))
    shown = ordered[offset : offset + SWEEP_PAGE]

    def reprs() -> None:
        for r in shown:
            r["params"] = _param_reprs(r["params"])
            payload = r.pop("payload")
            r["value"] = value_repr(payload) if payload is not None else None

    await anyio.to_thread.run_sync(reprs)
    params = list(dict.fromkeys(p for r in shown for p in r["params"]))[:50]
    return {"name": name, "rows": shown, "params": params, "counts": dict(counts), "total": len(ordered),
            "offset": offset, "end": offset + len(shown),
            "older": offset + SWEEP_PAGE if offset + SWEEP_PAGE < len(ordered) else None,
            "newer": max(0, offset - SWEEP_PAGE) if offset else None}


def fmt_time(t: float | None) -> str:
    """Epoch seconds as local ``YYYY-MM-DD HH:MM:SS`` (``-`` for None)."""
    if t is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (OverflowError, OSError, ValueError, TypeError):  # a stored time no clock can show
        return f"? ({t!r})"[:40]


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{fmt_duration(max(0.0, seconds))} ago"
