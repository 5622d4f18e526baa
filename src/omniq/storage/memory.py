"""In-process backend: task queue, result store and event store in plain Python structures.

It is the semantic reference for the other backends (the contract suite runs on all of them)
and the speed reference: claiming pops per-queue heaps keyed by ``(-priority, seq)``, delayed
tasks wait in a heap keyed by ``eta``, results live in a dict and events in a list, blobs in a
dict by digest beside a dict of their owners. Every method is ``async`` for the interface but
never awaits, so each call is atomic on its loop.

Tasks are stored as private copies and handed out as copies, so callers cannot change stored
state by mutating what they got back.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
import weakref
from collections import Counter
from collections.abc import Collection, Sequence
from copy import copy

import anyio

from ..errors import ConfigError
from ..lifecycle import (
    CANCELLED,
    PENDING,
    QUEUED,
    RUNNING,
    Cascade,
    claimable,
    expires,
    fired,
    is_expired,
    lease_lapsed,
    on_dependency_end,
    on_lapse,
    ready_status,
    slot_fires,
)
from ..models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from .base import EventStore, Finished, Overrun, Reaped, ResultStore, TaskQueue, WorkerInfo
from .blobs import (
    LIVE_TASK_STATUSES,
    Blob,
    as_bytes,
    nbytes,
    result_owner,
    task_owner,
)
from .checks import REQUEUABLE, check_new_tasks, events_in_order, in_page
from .enqueue import holds_key, keyed, plan_enqueue, plan_keys

_NO_WAIT: frozenset[str] = frozenset()


class _Entry:
    """A stored task plus bookkeeping the Task struct does not carry."""

    __slots__ = ("finished_at", "seq", "task", "waiting")

    def __init__(self, task: Task, seq: int) -> None:
        self.task = task
        self.seq = seq
        self.waiting: set[str] | frozenset[str] = _NO_WAIT  # dependencies not yet succeeded
        self.finished_at: float | None = None


class MemoryResults(ResultStore):
    """The result store part of ``MemoryBackend``: results in a dict by task id."""

    _results: dict[str, TaskResult]

    async def _put_results(self, results: Sequence[TaskResult]) -> None:
        store = self._results
        for r in results:
            store[r.task_id] = copy(r)

    async def get_result(self, task_id: str) -> TaskResult | None:
        r = self._results.get(task_id)
        return None if r is None else copy(r)

    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        store = self._results
        return {i: copy(r) for i in task_ids if (r := store.get(i)) is not None}

    async def find_results(self, *, key_prefix: str) -> list[TaskResult]:
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        found = [
            r for r in self._results.values() if r.key is not None and r.key.startswith(key_prefix)
        ]
        found.sort(key=_key)
        return [copy(r) for r in found]

    async def delete_results(self, task_ids: Sequence[str]) -> int:
        store = self._results
        return sum(store.pop(i, None) is not None for i in task_ids)

    async def purge_results(self, *, now: float) -> int:
        gone = [
            i for i, r in self._results.items() if r.expires_at is not None and r.expires_at <= now
        ]
        for i in gone:
            del self._results[i]
        return len(gone)


class MemoryEvents(EventStore):
    """The event store part of ``MemoryBackend``: events in append order, and by task."""

    _events: list[TaskEvent]
    _events_by_task: dict[str, list[TaskEvent]]

    async def _append_events(self, events: Sequence[TaskEvent]) -> None:
        self._events.extend(events)  # TaskEvent is frozen: no copies needed
        by_task = self._events_by_task
        for e in events:
            lst = by_task.get(e.task_id)
            if lst is None:
                by_task[e.task_id] = [e]
            else:
                lst.append(e)

    async def _query_events(
        self, task_id: str | None, since: float | None, types: list[str] | None, limit: int | None
    ) -> list[TaskEvent]:
        events = self._events if task_id is None else self._events_by_task.get(task_id, [])
        return events_in_order(events, since, types, limit)

    async def purge_events(self, *, before: float, task_ids: Collection[str] | None = None) -> int:
        n = len(self._events)
        if task_ids is None:
            self._events = [e for e in self._events if e.timestamp >= before]
        else:
            ids = set(task_ids)
            self._events = [e for e in self._events if e.timestamp >= before or e.task_id not in ids]
        by_task: dict[str, list[TaskEvent]] = {}
        for e in self._events:
            by_task.setdefault(e.task_id, []).append(e)
        self._events_by_task = by_task
        return n - len(self._events)


class MemoryBackend(TaskQueue, MemoryResults, MemoryEvents):
    """Everything in this process's memory; lost when it exits.

    ``memory://`` gives a private instance per ``open_backends`` call; ``memory://name`` is
    shared by every caller in the process that uses the same name (see ``storage.urls``).
    """

    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self.url = url
        self._entries: dict[str, _Entry] = {}
        self._seq = itertools.count()
        self._ready: dict[str, list[tuple[int, int, str]]] = {}  # queue -> (-priority, seq, id)
        self._delayed: list[tuple[float, int, str]] = []  # (eta, seq, id): PENDING, not blocked
        self._expiring: list[tuple[float, int, str]] = []  # (expires_at, seq, id)
        self._running: set[str] = set()
        self._dependents: dict[str, list[str]] = {}  # dependency id -> waiting task ids
        self._counts: dict[str, Counter[TaskStatus]] = {}
        self._keys: dict[str, str] = {}  # idempotency key -> the latest task stored with it
        self._key_lock = threading.Lock()
        self._schedules: dict[str, Schedule] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._results: dict[str, TaskResult] = {}
        self._events: list[TaskEvent] = []
        self._events_by_task: dict[str, list[TaskEvent]] = {}
        self._blobs: dict[str, tuple[bytes, float]] = {}  # digest -> (bytes, created_at)
        self._blob_owners: dict[str, dict[str, float]] = {}  # digest -> {owner: recorded_at}
        # One wake-up per event loop: a named backend is shared by OmniQ instances, each on its
        # own loop, and an asyncio.Event can only be awaited on the loop it first waited on.
        self._wakeups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Event] = (
            weakref.WeakKeyDictionary()
        )
        self._wakeups_lock = threading.Lock()

    async def _open(self) -> None:
        """Nothing to open; data outlives close() so a named backend can be reopened."""

    async def _close(self) -> None:
        """Nothing to release."""

    # --- internal state changes ---------------------------------------------------------------
    def _set_status(self, entry: _Entry, status: TaskStatus) -> None:
        counts = self._counts[entry.task.queue]
        counts[entry.task.status] -= 1
        counts[status] += 1
        entry.task.status = status

    def _push_ready(self, entry: _Entry) -> None:
        t = entry.task
        heap = self._ready.get(t.queue)
        if heap is None:
            heap = self._ready[t.queue] = []
        heapq.heappush(heap, (-t.priority, entry.seq, t.id))

    def _make_ready(self, entry: _Entry, now: float) -> None:
        """QUEUED, or PENDING until a future eta."""
        eta = entry.task.eta
        if eta is not None and ready_status(eta, now) is PENDING:
            self._set_status(entry, PENDING)
            heapq.heappush(self._delayed, (eta, entry.seq, entry.task.id))
        else:
            self._set_status(entry, QUEUED)
            self._push_ready(entry)

    def _end(self, entry: _Entry, status: TaskStatus, now: float) -> None:
        self._set_status(entry, status)
        entry.finished_at = now
        entry.task.lease_until = None
        entry.waiting = _NO_WAIT
        self._running.discard(entry.task.id)

    def _unlease(self, entry: _Entry) -> Task:
        """Take a running task off its worker and its lease; where it goes next is the caller's."""
        t = entry.task
        self._running.discard(t.id)
        t.worker = None
        t.lease_until = None
        return t

    def _resolve(self, ids: Sequence[str], now: float) -> Finished:
        """Release or cancel (transitively) the dependents of tasks that just became final."""
        out = Finished()
        stack = list(ids)
        while stack:
            dep_id = stack.pop()
            children = self._dependents.pop(dep_id, None)
            dep = self._entries.get(dep_id)
            if not children or dep is None:
                continue
            dep_status = dep.task.status
            for child_id in children:
                child = self._entries.get(child_id)
                if child is None or child.task.status is not PENDING or not child.waiting:
                    continue
                left = child.waiting - {dep_id}
                fate = on_dependency_end(dep_status, others_left=bool(left))
                if fate is Cascade.CANCEL:
                    self._end(child, CANCELLED, now)
                    out.cancelled.append((copy(child.task), dep_id))
                    stack.append(child_id)
                elif dep_status is TaskStatus.SUCCEEDED:
                    child.waiting = left
                    if fate is Cascade.RELEASE:
                        self._make_ready(child, now)
                        out.released.append(copy(child.task))
        if out.released:
            self.notify()
        return out

    def _insert(self, tasks: Sequence[Task]) -> None:
        """Store a validated batch atomically (all checks happen before the first change)."""
        entries = self._entries
        known: dict[str, TaskStatus] = {}
        has_deps = False
        for t in tasks:
            if t.id in entries:
                raise ConfigError(f"task id {t.id!r} already exists")
            if t.depends_on:
                has_deps = True
                for d in t.depends_on:
                    if (e := entries.get(d)) is not None:
                        known[d] = e.task.status
        if has_deps:
            plans = plan_enqueue(tasks, known)
        else:  # the common case, without the dependency planning
            plans = [(QUEUED if t.eta is None else t.status, []) for t in tasks]
        now = time.time()
        ready = False
        seq = self._seq
        all_counts = self._counts
        for given, (status, waiting) in zip(tasks, plans, strict=True):
            t = copy(given)
            t.status = status
            entry = _Entry(t, next(seq))
            entries[t.id] = entry
            counts = all_counts.get(t.queue)
            if counts is None:
                counts = all_counts[t.queue] = Counter()
            counts[status] += 1
            if status is QUEUED:
                self._push_ready(entry)
                ready = True
            elif status is CANCELLED:
                entry.finished_at = now
                continue
            elif waiting:
                entry.waiting = set(waiting)
                for d in waiting:
                    self._dependents.setdefault(d, []).append(t.id)
            else:
                heapq.heappush(self._delayed, (t.eta or 0.0, entry.seq, t.id))
                ready = True  # wake waiters so they time their sleep to this eta
            if t.expires_at is not None:
                heapq.heappush(self._expiring, (t.expires_at, entry.seq, t.id))
        if ready:
            self.notify()

    def _held(self, worker: str, task_id: str) -> _Entry | None:
        entry = self._entries.get(task_id)
        if entry is None or entry.task.status is not RUNNING or entry.task.worker != worker:
            return None
        return entry

    # --- tasks ----------------------------------------------------------------------------------
    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        keys = keyed(tasks)
        if not keys:
            self._insert(tasks)
            return {}
        with self._key_lock:  # a named backend is shared by instances on other threads' loops
            holders = self._holders(keys)
            gone = [h for h in holders.values() if h not in self._entries]
            store, dups = plan_keys(tasks, holders, gone)
            if store:
                self._insert(store)  # raises before any change; then the keys change with it
            for t in store:
                if t.key is not None:
                    self._keys[t.key] = t.id
        return dups

    def _holders(self, keys: Sequence[str]) -> dict[str, str]:
        """Key -> holder id, for the keys held now (see ``TaskQueue.enqueue``)."""
        out: dict[str, str] = {}
        for k in keys:
            hid = self._keys.get(k)
            if hid is None:
                continue
            entry = self._entries.get(hid)
            r = self._results.get(hid)
            ok = r is not None and r.status is TaskStatus.SUCCEEDED
            held = holds_key(entry.task.status if entry is not None else None, ok, self.results_here)
            if held:
                out[k] = hid
        return out

    async def _claim(
        self, worker: str, names: list[str] | None, limit: int, lease: float, now: float
    ) -> list[Task]:
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, task_id = heapq.heappop(delayed)
            entry = self._entries.get(task_id)
            if entry is None:
                continue
            t = entry.task
            if t.status is PENDING and t.eta is not None and claimable(
                t.status, eta=t.eta, expires_at=None, waiting=bool(entry.waiting), now=now
            ):  # due (an expired one is QUEUED here and left in its heap below, for expire())
                self._set_status(entry, QUEUED)
                self._push_ready(entry)
        if names is None:
            heaps = [h for h in self._ready.values() if h]
        else:
            heaps = [h for q in names if (h := self._ready.get(q))]
        claimed: list[Task] = []
        lapsed: list[tuple[list[tuple[int, int, str]], tuple[int, int, str]]] = []
        lease_until = now + lease
        entries = self._entries
        while heaps and len(claimed) < limit:
            heap = heaps[0] if len(heaps) == 1 else min(heaps, key=lambda h: h[0])
            item = heapq.heappop(heap)
            if not heap:
                heaps.remove(heap)
            entry = entries.get(item[2])
            if entry is None or entry.task.status is not QUEUED:
                continue  # stale heap item: the task was cancelled, expired or purged
            t = entry.task
            if is_expired(t.expires_at, now):
                lapsed.append((heap, item))  # expire() will end it; keep it for other clocks
                continue
            self._set_status(entry, RUNNING)
            t.worker = worker
            t.lease_until = lease_until
            t.deliveries += 1
            self._running.add(t.id)
            claimed.append(copy(t))
        for heap, item in lapsed:
            heapq.heappush(heap, item)
        return claimed

    async def _finish(self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], now: float) -> Finished:
        done: list[str] = []
        for task_id, status in outcomes:
            entry = self._held(worker, task_id)
            if entry is not None:
                self._end(entry, status, now)
                done.append(task_id)
        return self._resolve(done, now) if self._dependents else Finished()

    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        entry = self._held(worker, task_id)
        if entry is None:
            return
        t = self._unlease(entry)
        t.attempts = attempts
        t.eta = eta
        if ready_status(eta, time.time()) is QUEUED:  # no ``now``: the wall clock, as in SQL
            self._set_status(entry, QUEUED)
            self._push_ready(entry)
        else:
            self._set_status(entry, PENDING)
            heapq.heappush(self._delayed, (eta, entry.seq, task_id))
        self.notify()  # ready now, or waiters re-time their sleep to this eta

    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        released = False
        for task_id in task_ids:
            entry = self._held(worker, task_id)
            if entry is None:
                continue
            t = self._unlease(entry)
            t.deliveries = max(t.deliveries - 1, 0)
            self._set_status(entry, QUEUED)
            self._push_ready(entry)
            released = True
        if released:
            self.notify()

    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        for task_id in task_ids:
            entry = self._held(worker, task_id)
            if entry is not None:
                entry.task.lease_until = lease_until

    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        lapsed = [
            Overrun(task_id=t.id, queue=t.queue, worker=t.worker, lease_until=t.lease_until)
            for i in self._running
            if (t := self._entries[i].task).lease_until is not None and lease_lapsed(t.lease_until, now)
        ]
        return sorted(lapsed, key=lambda o: o.lease_until)[:limit]

    async def reap(self, *, now: float) -> Reaped:
        out = Reaped(requeued=[], dead=[])
        ended: list[str] = []
        for task_id in list(self._running):
            entry = self._entries[task_id]
            t = entry.task
            if not lease_lapsed(t.lease_until, now):
                continue
            fate = on_lapse(cancel_requested=t.cancel_requested, deliveries=t.deliveries,
                            max_deliveries=t.max_deliveries)  # fmt: skip
            if fate is CANCELLED:
                self._end(entry, CANCELLED, now)
                out.cancelled.append((copy(t), t.id))
                ended.append(t.id)
            elif fate is QUEUED:
                self._unlease(entry)
                self._set_status(entry, QUEUED)
                self._push_ready(entry)
                out.requeued.append(copy(t))
            else:
                self._end(entry, TaskStatus.FAILED, now)
                out.dead.append(copy(t))
                ended.append(t.id)
        if ended and self._dependents:
            out.cancelled.extend(self._resolve(ended, now).cancelled)
        if out.requeued:
            self.notify()
        return out

    async def expire(self, *, now: float) -> list[Task]:
        expired: list[Task] = []
        heap = self._expiring
        while heap and heap[0][0] <= now:
            _, _, task_id = heapq.heappop(heap)
            entry = self._entries.get(task_id)
            if entry is None or not expires(entry.task.status, entry.task.expires_at, now):
                continue
            self._end(entry, TaskStatus.EXPIRED, now)
            expired.append(copy(entry.task))
        if expired and self._dependents:
            cascade = self._resolve([t.id for t in expired], now)
            expired.extend(t for t, _ in cascade.cancelled)
        return expired

    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        before: dict[str, TaskStatus] = {}
        ended: list[str] = []
        for task_id in task_ids:
            entry = self._entries.get(task_id)
            if entry is None or task_id in before:
                continue
            status = before[task_id] = entry.task.status
            if status in (QUEUED, PENDING):
                self._end(entry, CANCELLED, now)
                ended.append(task_id)
            elif status is RUNNING:
                entry.task.cancel_requested = True
        if ended and self._dependents:
            for t, _ in self._resolve(ended, now).cancelled:
                before[t.id] = PENDING
        return before

    async def get_task(self, task_id: str) -> Task | None:
        entry = self._entries.get(task_id)
        return None if entry is None else copy(entry.task)

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        entries = self._entries
        return {i: e.task.status for i in task_ids if (e := entries.get(i)) is not None}

    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        entries = self._entries
        return [
            i
            for i in task_ids
            if (e := entries.get(i)) is not None
            and e.task.cancel_requested
            and e.task.status is RUNNING
        ]

    async def counts(self) -> dict[str, dict[str, int]]:
        return {
            q: {s.value: n for s, n in c.items() if n > 0}
            for q, c in self._counts.items()
            if any(n > 0 for n in c.values())
        }

    async def oldest_queued(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for q, heap in self._ready.items():
            times = [
                e.task.created_at
                for _, _, i in heap
                if (e := self._entries.get(i)) is not None and e.task.status is QUEUED
            ]
            if times:
                out[q] = min(times)
        return out

    async def purge_tasks(
        self, *, before: float, statuses: Collection[TaskStatus] | None = None
    ) -> list[str]:
        gone = [
            e
            for e in self._entries.values()
            if e.finished_at is not None and e.finished_at < before and e.task.status.is_final
            and (statuses is None or e.task.status in statuses)
        ]
        for e in gone:
            del self._entries[e.task.id]
            self._counts[e.task.queue][e.task.status] -= 1
            k = e.task.key
            if k is not None and self._keys.get(k) == e.task.id and not self._holders([k]):
                del self._keys[k]  # (a SUCCEEDED result of it still holds the key)
        return [e.task.id for e in gone]

    async def _list_tasks(
        self, statuses: Collection[TaskStatus] | None, queue: str | None, name: str | None, limit: int,
        before: str | None,
    ) -> list[Task]:
        """Newest first by walking the tasks backwards in the order they were stored (ids of
        one process are increasing): a page costs the tasks it skips, this backend's one
        exception to the page-sized cost, acceptable in one process's memory."""
        page: list[Task] = []
        for entry in reversed(self._entries.values()):
            if in_page(entry.task, statuses, queue, name, before):
                page.append(copy(entry.task))
                if len(page) >= limit:
                    break
        page.sort(key=_task_id, reverse=True)
        return page

    async def requeue(self, task_id: str, *, now: float, attempts: int) -> TaskStatus | None:
        entry = self._entries.get(task_id)
        if entry is None:
            return None
        t = entry.task
        before = t.status
        if before not in REQUEUABLE:
            return before
        t.worker = t.lease_until = t.expires_at = None
        t.cancel_requested = False
        t.deliveries = 0
        t.attempts = attempts
        entry.finished_at = None
        entry.waiting = _NO_WAIT
        self._set_status(entry, QUEUED)
        self._push_ready(entry)
        self.notify()
        return before

    # --- schedules --------------------------------------------------------------------------------
    async def add_schedule(self, schedule: Schedule) -> None:
        self._schedules[schedule.id] = copy(schedule)

    async def get_schedules(self) -> list[Schedule]:
        return [copy(s) for s in self._schedules.values()]

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_run: float | None
    ) -> bool:
        s = self._schedules.get(schedule_id)
        if s is None:
            return False
        s.paused = paused
        if not paused or next_run is not None:
            s.next_run = next_run
        return True

    async def delete_schedule(self, schedule_id: str) -> bool:
        return self._schedules.pop(schedule_id, None) is not None

    async def _fire_schedule(
        self, schedule_id: str, expected_next_run: float, next_run: float | None, now: float, task: Task
    ) -> bool:
        s = self._schedules.get(schedule_id)
        if s is None or not slot_fires(s, expected_next_run):
            return False
        self._insert([task])  # raises before the schedule changes
        self._schedules[schedule_id] = fired(s, next_run=next_run, now=now, task_id=task.id)
        return True

    # --- workers ----------------------------------------------------------------------------------
    async def heartbeat(self, info: WorkerInfo) -> None:
        self._workers[info.id] = copy(info)

    async def remove_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def workers(self) -> list[WorkerInfo]:
        return [copy(w) for w in self._workers.values()]

    def notify(self) -> None:
        """Wake the waiters of every loop that uses this backend."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        with self._wakeups_lock:
            waiting = list(self._wakeups.items())
        for loop, ev in waiting:
            if loop is here:
                ev.set()
            else:
                with contextlib.suppress(RuntimeError):  # that loop has closed
                    loop.call_soon_threadsafe(ev.set)

    async def wait_for_tasks(self, timeout: float) -> None:
        """Wake on ``notify`` (from any loop), or when the earliest delayed task falls due."""
        if self._delayed:
            timeout = min(timeout, max(self._delayed[0][0] - time.time(), 0.0))
        loop = asyncio.get_running_loop()
        with self._wakeups_lock:
            ev = self._wakeups.get(loop)
            if ev is None:  # a loop's first wait returns at once: it may have missed a notify
                ev = self._wakeups[loop] = asyncio.Event()
                ev.set()
        if not ev.is_set():
            with anyio.move_on_after(timeout):
                await ev.wait()
        ev.clear()

    # --- blobs ------------------------------------------------------------------------------------
    def _own(self, digests: Sequence[str], owner: str, now: float) -> None:
        owners = self._blob_owners
        for d in digests:
            rows = owners.get(d)
            if rows is None:
                owners[d] = {owner: now}
            elif rows.get(owner, now) <= now:
                rows[owner] = now

    async def _put_blobs(self, given: dict[str, Blob], owner: str, now: float) -> int:
        self._own(list(given), owner, now)
        written = 0
        for d, data in given.items():
            if d not in self._blobs:
                self._blobs[d] = (as_bytes(data), now)
                written += nbytes(data)
        return written

    async def _add_blob_owners(self, owners: dict[str, list[str]], now: float) -> None:
        for owner, digests in owners.items():
            self._own(digests, owner, now)

    async def _get_blobs(self, ds: list[str]) -> dict[str, bytes]:
        blobs = self._blobs
        return {d: got[0] for d in ds if (got := blobs.get(d)) is not None}

    async def _missing_blobs(self, ds: list[str]) -> set[str]:
        return {d for d in ds if d not in self._blobs}

    async def sweep_blobs(self, *, older_than: float) -> int:
        entries, results = self._entries, self._results
        live = LIVE_TASK_STATUSES

        def alive(owner: str) -> bool:
            if (tid := task_owner(owner)) is not None:
                e = entries.get(tid)
                return e is not None and e.task.status.value in live
            return (rid := result_owner(owner)) is not None and rid in results

        for d, rows in list(self._blob_owners.items()):
            for owner in [o for o, at in rows.items() if at < older_than and not alive(o)]:
                del rows[owner]
            if not rows:
                del self._blob_owners[d]
        doomed = [
            d for d, (_, created) in self._blobs.items()
            if created < older_than and d not in self._blob_owners
        ]  # fmt: skip
        for d in doomed:
            del self._blobs[d]
        return len(doomed)


def _task_id(t: Task) -> str:
    return t.id


def _key(r: TaskResult) -> str:
    return r.key or ""


__all__ = ["MemoryBackend"]
