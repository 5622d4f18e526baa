"""Health: one picture of the queue for people and dashboards, which never raises for a storage
that is down (that is what it reports)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..models import EventType, TaskEvent
from ..redact import masked

if TYPE_CHECKING:
    from ..client.session import Session

OVERRUN_WINDOW = 3600.0  # health() lists leases that overran within the last hour


class HealthMonitor:
    """``report()`` asks every store its questions at once, each bounded by a timeout."""

    def __init__(self, session: Session, flush: Callable[[], Awaitable[None]],
                 schedules: Callable[[], Awaitable[list[dict[str, Any]]]]) -> None:
        self.session = session
        self._flush = flush  # (the intake's: counts include what was just submitted)
        self._schedules = schedules

    async def report(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """Workers (alive = heartbeat within a lease), queue depths by status, oldest queued
        age, leases overrun, schedules with their last outcome, storage reachability, and this
        process's metrics."""
        s = self.session
        now = time.time()
        probes: dict[str, Any] = {}

        async def probe(part: str, url: str, call: Callable[[], Awaitable[Any]]) -> Any:
            began = time.perf_counter()
            try:
                with anyio.fail_after(timeout):
                    value = await call()
            except Exception as exc:  # TimeoutError included: report, do not raise
                if part not in probes or probes[part]["ok"]:
                    probes[part] = {"url": masked(url), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
                return None
            if part not in probes:
                probes[part] = {"url": masked(url), "ok": True,
                                "latency_ms": round((time.perf_counter() - began) * 1000, 3)}
            return value

        with anyio.move_on_after(timeout), contextlib.suppress(Exception):
            await self._flush()  # counts include what was just submitted (a cut-short flush loses nothing)
        q, ev = s.queue, s.event_store
        calls: dict[str, tuple[str, str, Callable[[], Awaitable[Any]]]] = {
            "counts": ("tasks", s.tasks_url, q.counts),
            "result": ("results", s.results_url, lambda: s.results.get_result("omniq-health-probe")),
            "event": ("events", s.events_url, lambda: ev.query_events(task_id="omniq-health-probe", limit=1)),
            "workers": ("tasks", s.tasks_url, q.workers),
            "oldest": ("tasks", s.tasks_url, q.oldest_queued),
            "overrun": ("tasks", s.tasks_url, lambda: q.overrun(now=now)),
            "reaped": ("events", s.events_url, lambda: ev.query_events(
                since=now - OVERRUN_WINDOW, types=[EventType.REQUEUED.value, EventType.FAILED.value], limit=10_000)),
            "schedules": ("tasks", s.tasks_url, self._schedules),
        }
        got: dict[str, Any] = {}

        async def run(key: str) -> None:
            got[key] = await probe(*calls[key])

        # all at once: a storage that hangs costs one timeout, not one per question
        async with anyio.create_task_group() as tg:
            for key in calls:
                tg.start_soon(run, key)
        probes = {part: probes[part] for part in ("tasks", "results", "events") if part in probes}
        counts, oldest, overrun, reaped = got["counts"], got["oldest"] or {}, got["overrun"], got["reaped"]
        worker_rows, schedules = got["workers"] or [], got["schedules"] or []
        last_ids = [sc["last_task_id"] for sc in schedules if sc.get("last_task_id")]
        last = (await probe("tasks", s.tasks_url, lambda: q.statuses(last_ids)) or {}) if last_ids else {}
        for sc in schedules:
            st = last.get(sc.get("last_task_id") or "")
            sc["last_outcome"] = st.value if st is not None else None
        return {
            "time": now,
            "ok": all(p["ok"] for p in probes.values()),
            "storage": probes,
            "workers": [
                {
                    "id": w.id, "kind": w.kind, "host": w.host, "pid": w.pid, "slots": w.slots,
                    "queues": w.queues, "alive": now - w.last_heartbeat < (w.lease or s.config.lease),
                    "last_heartbeat": w.last_heartbeat, "started_at": w.started_at, "missing": w.missing,
                    "job": w.job,
                }
                for w in worker_rows
            ],
            "queues": counts or {},
            "oldest_queued_age": {name: now - t for name, t in oldest.items()},
            "leases_overrun": overruns(now, overrun, reaped or []),
            "schedules": schedules,
            "metrics": s.metrics.snapshot(),
        }


def overruns(now: float, lapsed: list[Any] | None, reaped: list[TaskEvent]) -> list[dict[str, Any]]:
    """Tasks whose worker stopped renewing the lease: still lapsed (not reaped yet), or
    delivered again / failed as ``WorkerDied`` within ``OVERRUN_WINDOW``; newest first."""
    out: dict[str, dict[str, Any]] = {}
    for ev in reaped:
        if ev.type == EventType.REQUEUED.value or ev.detail == "WorkerDied":
            out[ev.task_id] = {"task_id": ev.task_id, "queue": ev.queue, "worker": ev.worker,
                               "at": ev.timestamp, "outcome": "requeued" if ev.type == "requeued" else "failed"}
    for o in lapsed or []:
        out[o.task_id] = {"task_id": o.task_id, "queue": o.queue, "worker": o.worker,
                          "at": o.lease_until, "outcome": "lapsed"}
    return sorted(out.values(), key=lambda r: -r["at"])[:100]
