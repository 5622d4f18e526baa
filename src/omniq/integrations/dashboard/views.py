"""What each page shows, gathered from the public API (``health()``, ``tasks()``, ``task()``,
``schedules()``) and the result store; no HTML here. Every storage call is bounded, so a store
that does not answer costs a page ``STORAGE_TIMEOUT`` seconds and a banner, never a hang."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ...errors import ConfigError, TaskNotFound
from ...models import TaskStatus
from ...redact import masked
from ...serialization.peek import value_repr
from ...sweep.handles import latest_results

if TYPE_CHECKING:
    from ...client.orchestrator import AsyncOmniQ

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


async def bounded(oq: AsyncOmniQ, call: Awaitable[T], url: str | None = None) -> T:
    """``await call`` within ``STORAGE_TIMEOUT``; a failure of the storage becomes ``StorageDown``
    naming ``url`` (default: the task queue's), password masked. Bad input and unknown ids pass."""
    try:
        with anyio.fail_after(STORAGE_TIMEOUT):
            return await call
    except (TaskNotFound, ConfigError):
        raise
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
    """The front page: queues by status, workers, schedules, recent failures, sweeps in flight."""
    health = await oq.health(timeout=STORAGE_TIMEOUT)
    down = [p["url"] for p in health["storage"].values() if not p["ok"]]
    failures: list[Any] = []
    sweeps: list[dict[str, Any]] = []
    if not down:
        try:
            failures = await bounded(oq, oq.tasks(status=TaskStatus.FAILED, limit=10))
            sweeps = await running_sweeps(oq)
        except StorageDown as exc:
            down.append(exc.url)
    now = health["time"]
    queues = [{"name": q, "counts": {s: counts.get(s, 0) for s in STATUSES},
               "total": sum(counts.values()), "oldest": health["oldest_queued_age"].get(q)}
              for q, counts in sorted(health["queues"].items())]
    workers = [{**w, "ago": now - w["last_heartbeat"]} for w in health["workers"]]
    return {"queues": queues, "workers": workers, "schedules": health["schedules"],
            "failures": failures, "sweeps": sweeps, "down": down, "now": now}


async def running_sweeps(oq: AsyncOmniQ) -> list[dict[str, Any]]:
    """Sweeps with points queued, running or pending (among the newest ``SWEEP_SCAN`` of each),
    with their progress: finished points from the result store, active ones from the queue."""
    active: dict[str, Counter[str]] = {}
    for status in ACTIVE:
        for t in await bounded(oq, oq.tasks(status=status, limit=SWEEP_SCAN)):
            if t.sweep:
                active.setdefault(t.sweep, Counter())[status.value] += 1
    out = []
    for name, counts in sorted(active.items()):
        done = await sweep_results(oq, name)
        finished = Counter(r.status.value for r in done.values())
        total = sum(finished.values()) + sum(counts.values())
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


async def sweep_page(oq: AsyncOmniQ, name: str) -> dict[str, Any] | None:
    """A sweep's table of points (None when nothing of it is stored): parameters, status,
    duration, value or error, and the task of each, in submission order."""
    done = await sweep_results(oq, name)
    rows: dict[str, dict[str, Any]] = {}
    for key, r in done.items():
        rows[key] = {
            "task_id": r.task_id, "params": (r.metadata or {}).get("params") or {},
            "status": r.status.value, "attempts": r.attempts,
            "duration": (r.finished_at - r.started_at) if r.finished_at and r.started_at else None,
            "value": value_repr(r.payload) if r.status is TaskStatus.SUCCEEDED else None,
            "error": f"{r.error.type}: {r.error.message}" if r.error else None,
        }
    active_ids = []
    for status in ACTIVE:
        active_ids += [t.id for t in await bounded(oq, oq.tasks(status=status, limit=SWEEP_SCAN))
                       if t.sweep == name]
    s = oq.session
    tasks = await bounded(oq, asyncio.gather(*(s.queue.get_task(tid) for tid in active_ids[:SWEEP_SCAN])))
    for task in tasks:
        if task is None or not task.key or (task.key in rows and rows[task.key]["task_id"] > task.id):
            continue
        rows[task.key] = {"task_id": task.id, "params": task.metadata.get("params") or {},
                          "status": task.status.value, "attempts": task.attempts,
                          "duration": None, "value": None, "error": None}
    if not rows:
        return None
    ordered = sorted(rows.values(), key=lambda r: r["task_id"])
    params = list(dict.fromkeys(p for r in ordered for p in r["params"]))
    counts = Counter(r["status"] for r in ordered)
    return {"name": name, "rows": ordered, "params": params, "counts": dict(counts), "total": len(ordered)}


def fmt_time(t: float | None) -> str:
    """Epoch seconds as local ``YYYY-MM-DD HH:MM:SS`` (``-`` for None)."""
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


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
