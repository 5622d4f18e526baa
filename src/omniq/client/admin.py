"""The operator's view of the queue: list tasks, read one, run a failed one again, purge old
ones. ``AsyncOmniQ.tasks`` / ``task`` / ``retry`` / ``purge`` hand over here; the dashboard and
``omniq tasks|show|retry|purge`` use only those methods.

Nothing here unpickles a payload: arguments and values are shown as safe reprs
(``serialization.peek``), so reading a task someone planted in shared storage runs no code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from anyio import to_thread

from ..errors import ConfigError, StorageError, TaskNotFound
from ..models import EventType, Task, TaskDetail, TaskResult, TaskStatus, TaskSummary
from ..redact import masked
from ..storage.checks import REQUEUABLE, check_page, check_statuses

if TYPE_CHECKING:
    from .session import Session
    from .waiters import Waiters

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
#: what reading one malformed record raises (a decoding error, not a storage that is down)
UNREADABLE = (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeError)
#: the final statuses ``purge`` removes unless told otherwise
FINAL = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED)


def age_seconds(name: str, value: Any) -> float:
    """``value`` as seconds: a number, a ``timedelta``, or a string such as ``"7d"``,
    ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"`` (a bare number is seconds)."""
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    elif isinstance(value, str):
        m = _AGE.match(value)
        if m is None:
            raise ConfigError(
                f"{name}={value!r} is not valid: expected seconds, a timedelta, or a number with "
                "a unit s, m, h, d or w (\"7d\", \"12h\", \"30m\")"
            )
        value = float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise ConfigError(
            f"{name}={value!r} is not valid: expected seconds >= 0, a timedelta, or \"7d\" / \"12h\""
        )
    return float(value)


def summary_of(t: Task, r: TaskResult | None) -> TaskSummary:
    """A task's summary from its record and (when final) its result. A RUNNING record with a
    final result is a run that just ended (a worker stores the result, then ends the record):
    the result's status is shown."""
    sweep = t.metadata.get("sweep") if isinstance(t.metadata, dict) else None
    status = r.status if r is not None and t.status is TaskStatus.RUNNING and r.status.is_final else t.status
    return TaskSummary(
        id=t.id, queue=t.queue, name=t.name, status=status,
        attempts=max(t.attempts, r.attempts if r is not None else 0),
        created=t.created_at,
        started=r.started_at if r is not None else None,
        finished=r.finished_at if r is not None else None,
        sweep=sweep if isinstance(sweep, str) else None,
    )


class Admin:
    """``tasks`` / ``task`` / ``retry`` / ``purge`` over the session's stores."""

    def __init__(self, session: Session, waiters: Waiters, flush: Callable[[], Awaitable[None]],
                 sweep_blobs: Callable[[], Awaitable[int]]) -> None:
        self.session = session
        self.waiters = waiters
        self.flush = flush
        self.sweep_blobs = sweep_blobs

    async def tasks(
        self, status: Any = None, queue: str | None = None, name: str | None = None,
        limit: int = 100, before: str | None = None,
    ) -> list[TaskSummary]:
        statuses = check_statuses(status)
        check_page(limit, before, queue, name)
        await self.flush()
        s = self.session
        page = await s.queue.list_tasks(statuses=statuses, queue=queue, name=name, limit=limit,
                                        before=before)
        return await self.summaries(page)

    async def summaries(self, page: Sequence[Task]) -> list[TaskSummary]:
        """The summaries of task records (their results read in one call)."""
        done = [t.id for t in page if t.status.is_final or t.status is TaskStatus.RUNNING]
        results = await self._results(done)
        out = [summary_of(t, results.get(t.id)) for t in page]
        started = await self._started([o for o in out if o.status is TaskStatus.RUNNING])
        for o in out:
            if o.id in started:
                o.started = started[o.id]
        return out

    async def _results(self, ids: list[str]) -> dict[str, TaskResult]:
        """The stored results of ``ids``; when one record cannot be read (malformed bytes), the
        others one by one, the unreadable ones left out (their task's record speaks for them)."""
        if not ids:
            return {}
        results = self.session.results
        try:
            return await results.get_results(ids)
        except UNREADABLE:
            out: dict[str, TaskResult] = {}
            for tid in ids:
                with contextlib.suppress(*UNREADABLE):
                    r = await results.get_result(tid)
                    if r is not None:
                        out[tid] = r
            return out

    async def _started(self, running: Sequence[TaskSummary]) -> dict[str, float]:
        """When each running task started (its latest ``started`` event), one query each: a
        page holds few running tasks (at most the workers' slots)."""
        out: dict[str, float] = {}
        store = self.session.event_store
        for summary in running[:50]:
            with contextlib.suppress(Exception):  # the events are extra: a list never fails on them
                evs = await store.query_events(task_id=summary.id, types=[EventType.STARTED.value])
                if evs:
                    out[summary.id] = evs[-1].timestamp
        return out

    async def task(self, task_id: str) -> TaskDetail:
        from ..serialization.peek import call_reprs, value_repr  # (only when a task is shown)

        if not isinstance(task_id, str) or not task_id:
            raise ConfigError(f"task_id must be a task id (non-empty str), got {task_id!r}")
        await self.flush()
        s = self.session
        await s.events.flush()
        task_id = self.waiters.resolve_id(task_id)
        t = await s.queue.get_task(task_id)
        unreadable: str | None = None
        try:
            r = await s.results.get_result(task_id)
        except UNREADABLE as exc:  # a malformed result record: the task is still shown
            r, unreadable = None, f"<unreadable result record: {type(exc).__name__}: {exc}>"[:300]
        if t is None and r is None:
            if unreadable is not None:
                raise StorageError(f"task {task_id}: its task record is gone and its result record "
                                   f"cannot be read ({unreadable[1:-1]})")
            raise TaskNotFound(task_id, masked(s.tasks_url))
        events = await s.event_store.query_events(task_id=task_id)
        if t is None:  # purged, its result kept: what the result says
            assert r is not None
            t = Task(id=task_id, payload=b"", name=r.name, queue=r.queue, status=r.status,
                     attempts=r.attempts, key=r.key, metadata=r.metadata,
                     created_at=events[0].timestamp if events else 0.0)
            args = kwargs = "<not stored any more>"
        else:
            args, kwargs = await to_thread.run_sync(call_reprs, t.payload)
            if r is not None and not t.status.is_final and t.status is not TaskStatus.RUNNING:
                r = None  # (queued or pending again: an earlier run's, being replaced)
        summary = summary_of(t, r)
        if summary.started is None and summary.status is TaskStatus.RUNNING:
            started = [e.timestamp for e in events if e.type == EventType.STARTED.value]
            summary.started = started[-1] if started else None
        err = r.error if r is not None else None
        value = await to_thread.run_sync(value_repr, r.payload) if r is not None else unreadable
        return TaskDetail(
            **{f: getattr(summary, f) for f in TaskSummary.__struct_fields__},
            args=args, kwargs=kwargs,
            value=value,
            result=r,
            error_type=err.type if err is not None else None,
            error_message=err.message if err is not None else None,
            traceback=(err.traceback or None) if err is not None else None,
            events=events, priority=t.priority, key=t.key, metadata=dict(t.metadata),
            depends_on=tuple(t.depends_on),
        )

    async def retry(self, task_id: str) -> bool:
        if not isinstance(task_id, str) or not task_id:
            raise ConfigError(f"task_id must be a task id (non-empty str), got {task_id!r}")
        await self.flush()
        s = self.session
        task_id = self.waiters.resolve_id(task_id)
        t = await s.queue.get_task(task_id)
        if t is None:
            raise TaskNotFound(task_id, masked(s.tasks_url))
        if t.status not in REQUEUABLE:
            return False
        now = time.time()
        if t.blobs:  # its large values: owned again (a sweep keeps them), and still there
            await s.queue.add_blob_owners({"t:" + task_id: list(t.blobs)}, now=now)
            gone = await s.queue.missing_blobs(list(t.blobs))
            if gone:
                raise ConfigError(
                    f"task {task_id} cannot run again: {len(gone)} of the large values it reads "
                    "were removed from storage (swept after it ended); submit it anew"
                )
        if t.key is not None:  # a later task with its key that succeeded holds the key now
            held = [o.task_id for o in await s.results.find_results(key_prefix=t.key)
                    if o.key == t.key and o.task_id != task_id and o.status is TaskStatus.SUCCEEDED]
            if held:
                raise ConfigError(
                    f"task {task_id} is not run again: task {held[0]} with the same key {t.key!r} "
                    "succeeded since (its result is the key's; purge it first to run this one)"
                )
        r = await s.results.get_result(task_id)
        attempts = max(t.attempts, r.attempts if r is not None else 0)
        # the old result goes first: nobody waiting from now on may take it for the new run's
        await s.results.delete_results([task_id])
        before = await s.queue.requeue(task_id, now=now, attempts=attempts)
        if before not in REQUEUABLE:
            return False  # another caller retried it meanwhile
        self.waiters.forget(task_id)
        s.events.emit(task_id, EventType.ENQUEUED, queue=t.queue, detail=f"retry of a {before.value} task",
                      timestamp=now)
        return True

    async def purge(self, older_than: Any, statuses: Any = None) -> dict[str, int]:
        age = age_seconds("older_than", older_than)
        wanted = check_statuses(statuses, "statuses")
        if wanted is not None:
            unfinished = sorted(st.value for st in wanted if not st.is_final)
            if unfinished:
                raise ConfigError(
                    f"statuses={unfinished} cannot be purged: only final tasks are "
                    f"({', '.join(st.value for st in FINAL)}); cancel them first"
                )
        await self.flush()
        s = self.session
        await s.events.flush()
        now = time.time()
        ids = await s.queue.purge_tasks(before=now - age, statuses=wanted)
        counts = {"tasks": len(ids), "results": 0, "events": 0, "blobs": 0}
        if ids:
            for i in range(0, len(ids), 1000):
                chunk = ids[i : i + 1000]
                counts["results"] += await s.results.delete_results(chunk)
                counts["events"] += await s.event_store.purge_events(before=now, task_ids=chunk)
            counts["blobs"] = await self.sweep_blobs()
        return counts


__all__ = ["FINAL", "Admin", "age_seconds", "summary_of"]
