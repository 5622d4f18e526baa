"""``SQLiteBackend``: task queue, result store and event store in one SQLite file (or in memory),
driving the connection thread."""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Sequence
from typing import Any

import anyio
import anyio.to_thread

from ...errors import ConfigError, StorageError
from ...models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from .._codec import encode
from ..base import EventStore, Finished, Overrun, Reaped, ResultStore, TaskQueue, WorkerInfo, masked
from ..blobs import Blob, nbytes
from ..checks import check_new_tasks, check_owner, watched_after
from ..rows import event_from_row, events_sql, read_task_row
from .connection import (
    STATUS,
    SqliteConnection,
    T,
    ThreadConnection,
    decode_result,
    decode_schedule,
    decode_worker,
    in_transaction,
    json_ids,
    parse_url,
    prefix_end,
    returning,
    setup_connection,
    storage_error,
    tasks_in_order,
)
from .operations import (
    EXTERNAL_BLOB,
    claim_many,
    create_private,
    data_version,
    enqueue_tasks,
    execute,
    executemany,
    fetchall,
    fetchone,
    insert_tasks,
    list_page,
    purge_task_rows,
    put_blob_rows,
    read_file,
    requeue_task,
    resolve_if_deps,
    sweep_blob_files,
    sweep_blob_rows,
    write_blob_files,
)
from .queries import (
    APPEND_EVENT,
    CANCEL_LAPSED,
    CANCEL_REQUESTS,
    CANCEL_WAITING,
    CLAIM_MANY_FROM,
    CLAIMABLE,
    CLAIMABLE_IN,
    COUNTS,
    DELETE_RESULTS,
    DELETE_SCHEDULE,
    DELETE_WORKER,
    EXPIRE,
    EXPIRING,
    EXTEND,
    FAIL_LAPSED,
    FIND_RESULTS,
    FIND_RESULTS_FROM,
    FINISH,
    GET_BLOBS,
    GET_RESULT,
    GET_RESULTS,
    GET_SCHEDULE,
    GET_SCHEDULES,
    GET_TASK,
    GET_WORKERS,
    IDS,
    LAPSED_LEASES,
    NEXT_DUE,
    OLDEST_QUEUED,
    OVERRUN,
    PROMOTE_DUE,
    PURGE_EVENTS,
    PURGE_RESULTS,
    PURGE_TASK_EVENTS,
    PUT_BLOB_OWNER,
    PUT_RESULT,
    QUERY_EVENTS,
    RELEASE,
    REQUEST_CANCEL,
    REQUEUE_LAPSED,
    RETRY,
    STORED_BLOBS,
    TASK_STATUSES,
    UPSERT_SCHEDULE,
    UPSERT_WORKER,
    claim_sql,
    pick_many_sql,
)

#: how often a live subscription in another process looks for new events (see wait_for_events)
EVENT_POLL = 0.1

class SQLiteBackend(TaskQueue, ResultStore, EventStore):
    """Task queue, result store and event store sharing one SQLite connection and schema."""

    def __init__(self, url: str = "sqlite://:memory:") -> None:
        super().__init__()
        self.url = url
        self.path = parse_url(url)
        self.in_memory = self.path == ":memory:"
        self.cross_process_wakeups = not self.in_memory
        self._conn: SqliteConnection | None = None
        self._seen_version: int | None = None  # PRAGMA data_version at the last look
        self._events_seen: int | None = None  # ... at the last query_events
        self._next_due: float | None = None  # earliest eta of a delayed task, last we looked
        self._watched: set[str] | None = set()  # queues claimed from (None: all)
        self.blocking_enqueue = not self.in_memory  # ":memory:" is one database per connection
        # enqueue_blocking: a connection per calling thread (closed when the thread ends or at
        # close()), and a gate so close() never closes one in use
        self._local = threading.local()
        self._holders: weakref.WeakSet[ThreadConnection] = weakref.WeakSet()
        self._blocking = threading.Condition()
        self._blocking_open = False
        self._blocking_busy = 0
        # large blobs live as files beside the database: written once, outside the write lock,
        # no WAL copy, and local readers map them in place
        self.blob_dir = None if self.in_memory else os.path.abspath(self.path) + "-blobs"

    # --- lifecycle ----------------------------------------------------------------------------------
    async def _open(self) -> None:
        if not self.in_memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            try:
                os.makedirs(parent, exist_ok=True)
                create_private(self.path)
            except OSError as e:
                raise StorageError(f"cannot create {parent!r} for {masked(self.url)}: {e}") from e
            check_owner(self.path, self.url)
        self._conn = SqliteConnection(self.path, name=f"omniq-sqlite:{os.path.basename(self.path)}")
        try:
            await self._call(setup_connection, not self.in_memory)
        except BaseException:
            conn, self._conn = self._conn, None
            await conn.close()
            raise
        with self._blocking:
            self._blocking_open = True

    async def _close(self) -> None:
        with self._blocking:  # no new enqueue_blocking; wait for those in progress
            self._blocking_open = False
            busy = self._blocking_busy
        if busy:
            await anyio.to_thread.run_sync(self._blocking_idle)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        holders, self._holders = list(self._holders), weakref.WeakSet()
        self._local = threading.local()
        for h in holders:
            h.close()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(sqlite3_connection, *args)`` in the connection thread; errors become ours."""
        conn = self._conn
        if conn is None:
            raise StorageError(f"{masked(self.url)} is not connected: call connect() first")
        try:
            return await conn.call(fn, *args)
        except sqlite3.Error as e:
            raise storage_error(self.url, self.path, e) from e

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` as one ``BEGIN IMMEDIATE`` transaction in the connection thread."""
        return await self._call(in_transaction, fn, *args)

    # --- tasks ----------------------------------------------------------------------------------------
    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        if not tasks:
            return {}
        ready, dups = await self._write(enqueue_tasks, tasks, time.time(), self.results_here)
        if ready:
            self.notify()
        for t in tasks:
            if t.eta is not None and t.id not in dups:
                self._due_at(t.eta)
        return dups

    def enqueue_blocking(self, tasks: Sequence[Task]) -> bool | None:
        """One transaction on a connection of the calling thread's own (WAL lets it write
        beside the connection thread's): a durable single enqueue costs a commit, not two
        thread hops. None once ``close`` has begun (``close`` waits for calls in progress)."""
        check_new_tasks(tasks)
        if any(t.key is not None for t in tasks):
            return None  # duplicates need an answer this call does not give: use enqueue()
        with self._blocking:
            if not self._blocking_open:
                return None
            self._blocking_busy += 1
        try:
            holder = getattr(self._local, "holder", None)
            if holder is None:
                holder = ThreadConnection(
                    sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                )
                self._local.holder = holder
                self._holders.add(holder)
                holder.conn.execute("PRAGMA busy_timeout = 30000")
                holder.conn.execute("PRAGMA synchronous = NORMAL")
            return in_transaction(holder.conn, insert_tasks, tasks, time.time())
        except sqlite3.Error as e:
            raise storage_error(self.url, self.path, e) from e
        finally:
            with self._blocking:
                self._blocking_busy -= 1
                self._blocking.notify_all()

    def _blocking_idle(self, timeout: float = 60.0) -> None:
        with self._blocking:
            self._blocking.wait_for(lambda: self._blocking_busy == 0, timeout)

    def after_blocking_enqueue(self, tasks: Sequence[Task], ready: bool) -> None:
        if ready:
            self.notify()
        for t in tasks:
            if t.eta is not None:
                self._due_at(t.eta)

    async def _claim(
        self, worker: str, names: list[str] | None, limit: int, lease: float, now: float
    ) -> list[Task]:
        self._watched = watched_after(self._watched, names)
        check_params: tuple[Any, ...]
        if names is None:
            params: tuple[Any, ...] = (worker, now + lease, now, limit)
            check, check_params = CLAIMABLE, (now,)
        else:
            params = (worker, now + lease, now, limit, *names)
            check, check_params = CLAIMABLE_IN, (now, json_ids(names))
        n = 0 if names is None else len(names)
        many = limit >= CLAIM_MANY_FROM  # (see operations.claim_many)
        sql = pick_many_sql(n) if many else claim_sql(n)
        rows = await self._call(self._claim_rows, sql, many, params, check, check_params, now)
        claimed = [(read_task_row(r), r[0]) for r in rows]
        claimed.sort(key=lambda ts: (-ts[0].priority, ts[1]))  # RETURNING has no order
        return [t for t, _ in claimed]

    def _claim_rows(
        self,
        conn: sqlite3.Connection,
        sql: str,
        many: bool,
        params: tuple[Any, ...],
        check: str,
        check_params: tuple[Any, ...],
        now: float,
    ) -> list[Any]:
        self._seen_version = conn.execute("PRAGMA data_version").fetchone()[0]
        ready, next_due = conn.execute(check, check_params).fetchone()
        if next_due is not None and next_due <= now:
            conn.execute(PROMOTE_DUE, (now,))  # one statement: atomic without BEGIN
            next_due = conn.execute(NEXT_DUE).fetchone()[0]
            ready = True
        self._next_due = next_due
        if not ready:
            return []
        return claim_many(conn, sql, params) if many else returning(conn, sql, params)

    async def _finish(self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], now: float) -> Finished:
        out = await self._write(self._finish_rows, worker, outcomes, now)
        if out.released:
            self.notify()
        return out

    @staticmethod
    def _finish_rows(
        conn: sqlite3.Connection,
        worker: str,
        outcomes: Sequence[tuple[str, TaskStatus]],
        now: float,
    ) -> Finished:
        by_status: dict[str, list[str]] = {}
        for i, s in outcomes:
            by_status.setdefault(s.value, []).append(i)
        for status, ids in by_status.items():
            conn.execute(FINISH, (status, now, json_ids(ids), worker))
        return resolve_if_deps(conn, [i for i, _ in outcomes], now)

    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        now = time.time()  # retry has no ``now``: the wall clock decides QUEUED or PENDING
        if await self._call(execute, RETRY, (eta, attempts, task_id, worker, now)):
            if eta <= now:
                self.notify()
            else:
                self._due_at(eta)

    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        changed: int = await self._call(execute, RELEASE, (json_ids(task_ids), worker))
        if changed:
            self.notify()

    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        if task_ids:
            await self._call(execute, EXTEND, (lease_until, json_ids(task_ids), worker))

    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        rows = await self._call(fetchall, OVERRUN, (now, limit))
        return [Overrun(task_id=r[0], queue=r[1], worker=r[2], lease_until=r[3]) for r in rows]

    async def reap(self, *, now: float) -> Reaped:
        out = await self._call(self._reap, now)
        if out.requeued:
            self.notify()
        return out

    @staticmethod
    def _reap(conn: sqlite3.Connection, now: float) -> Reaped:
        if not conn.execute(LAPSED_LEASES, (now,)).fetchone()[0]:
            return Reaped(requeued=[], dead=[])

        def tx(conn: sqlite3.Connection) -> Reaped:
            cancelled = tasks_in_order(returning(conn, CANCEL_LAPSED, (now,)))
            dead = tasks_in_order(returning(conn, FAIL_LAPSED, (now,)))
            requeued = tasks_in_order(returning(conn, REQUEUE_LAPSED, (now,)))
            out = Reaped(requeued=requeued, dead=dead, cancelled=[(t, t.id) for t in cancelled])
            ended = [t.id for t in cancelled] + [t.id for t in dead]
            out.cancelled.extend(resolve_if_deps(conn, ended, now).cancelled)
            return out

        return in_transaction(conn, tx)

    async def expire(self, *, now: float) -> list[Task]:
        return await self._call(self._expire, now)

    @staticmethod
    def _expire(conn: sqlite3.Connection, now: float) -> list[Task]:
        if not conn.execute(EXPIRING, (now,)).fetchone()[0]:
            return []

        def tx(conn: sqlite3.Connection) -> list[Task]:
            expired = tasks_in_order(returning(conn, EXPIRE, (now,)))
            cascade = resolve_if_deps(conn, [t.id for t in expired], now)
            return expired + [t for t, _ in cascade.cancelled]

        return in_transaction(conn, tx)

    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        return await self._write(self._cancel, list(dict.fromkeys(task_ids)), now)

    @staticmethod
    def _cancel(conn: sqlite3.Connection, task_ids: list[str], now: float) -> dict[str, TaskStatus]:
        ids = json_ids(task_ids)
        found = dict(conn.execute(TASK_STATUSES, (ids,)).fetchall())
        before = {i: STATUS[found[i]] for i in task_ids if i in found}
        ended = [r[0] for r in returning(conn, CANCEL_WAITING, (now, ids))]
        conn.execute(REQUEST_CANCEL, (ids,))
        for t, _ in resolve_if_deps(conn, ended, now).cancelled:
            before[t.id] = TaskStatus.PENDING
        return before

    async def get_task(self, task_id: str) -> Task | None:
        row = await self._call(fetchone, GET_TASK, (task_id,))
        return None if row is None else read_task_row(row)

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        rows = await self._call(fetchall, TASK_STATUSES, (json_ids(task_ids),))
        return {i: STATUS[s] for i, s in rows}

    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        if not task_ids:
            return []
        rows = await self._call(fetchall, CANCEL_REQUESTS, (json_ids(task_ids),))
        return [r[0] for r in rows]

    async def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue, status, n in await self._call(fetchall, COUNTS, ()):
            out.setdefault(queue, {})[status] = n
        return out

    async def oldest_queued(self) -> dict[str, float]:
        return dict(await self._call(fetchall, OLDEST_QUEUED, ()))

    async def purge_tasks(
        self, *, before: float, statuses: Collection[TaskStatus] | None = None
    ) -> list[str]:
        return await self._write(purge_task_rows, before, None if statuses is None else list(statuses))

    async def _list_tasks(
        self, statuses: Collection[TaskStatus] | None, queue: str | None, name: str | None, limit: int,
        before: str | None,
    ) -> list[Task]:
        return await self._call(list_page, None if statuses is None else list(statuses), queue, name,
                                limit, before)

    async def requeue(self, task_id: str, *, now: float, attempts: int) -> TaskStatus | None:
        before = await self._write(requeue_task, task_id, attempts)
        if before is None:
            return None
        if before in ("failed", "cancelled", "expired"):
            self.notify()
        return STATUS[before]

    # --- schedules ----------------------------------------------------------------------------------
    async def add_schedule(self, schedule: Schedule) -> None:
        row = (schedule.id, schedule.next_run, int(schedule.paused), encode(schedule))
        await self._call(execute, UPSERT_SCHEDULE, row)

    async def get_schedules(self) -> list[Schedule]:
        return [decode_schedule(r[0]) for r in await self._call(fetchall, GET_SCHEDULES, ())]

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_run: float | None
    ) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            row = conn.execute(GET_SCHEDULE, (schedule_id,)).fetchone()
            if row is None:
                return False
            s = decode_schedule(row[0])
            s.paused = paused
            if not paused or next_run is not None:
                s.next_run = next_run
            conn.execute(UPSERT_SCHEDULE, (s.id, s.next_run, int(s.paused), encode(s)))
            return True

        return await self._write(tx)

    async def delete_schedule(self, schedule_id: str) -> bool:
        return bool(await self._call(execute, DELETE_SCHEDULE, (schedule_id,)))

    async def _fire_schedule(
        self, schedule_id: str, expected_next_run: float, next_run: float | None, now: float, task: Task
    ) -> bool:
        def tx(conn: sqlite3.Connection) -> tuple[bool, bool]:
            row = conn.execute(GET_SCHEDULE, (schedule_id,)).fetchone()
            if row is None:
                return False, False
            s = decode_schedule(row[0])
            if s.paused or s.next_run != expected_next_run:
                return False, False
            ready = insert_tasks(conn, [task], now)
            s.next_run, s.last_run, s.last_task_id = next_run, now, task.id
            conn.execute(UPSERT_SCHEDULE, (s.id, s.next_run, int(s.paused), encode(s)))
            return True, ready

        fired, ready = await self._write(tx)
        if ready:
            self.notify()
        return fired

    # --- workers ------------------------------------------------------------------------------------
    async def heartbeat(self, info: WorkerInfo) -> None:
        await self._call(execute, UPSERT_WORKER, (info.id, info.last_heartbeat, encode(info)))

    async def remove_worker(self, worker_id: str) -> None:
        await self._call(execute, DELETE_WORKER, (worker_id,))

    async def workers(self) -> list[WorkerInfo]:
        return [decode_worker(r[0]) for r in await self._call(fetchall, GET_WORKERS, ())]

    # --- wake-ups -----------------------------------------------------------------------------------
    async def wait_for_tasks(self, timeout: float) -> None:
        """Return on ``notify``, when a delayed task falls due, or when another process committed
        and something looks claimable; poll ``PRAGMA data_version`` every 2 ms backing off to 50 ms."""
        deadline = anyio.current_time() + timeout
        delay = 0.002
        while not self._wakeup.is_set():
            left = self._wait_left(deadline)
            if left <= 0:
                break
            with anyio.move_on_after(min(delay, left) if self.cross_process_wakeups else left):
                await self._wakeup.wait()
            if self._wakeup.is_set() or self._conn is None:
                break
            if self.cross_process_wakeups and await self._call(self._poll):
                break
            delay = min(delay * 2, 0.05)
        self._wakeup = anyio.Event()

    def _poll(self, conn: sqlite3.Connection) -> bool:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._seen_version:
            return False
        self._seen_version = version
        now = time.time()
        if self._watched is None:
            ready, next_due = conn.execute(CLAIMABLE, (now,)).fetchone()
        elif self._watched:
            ready, next_due = conn.execute(
                CLAIMABLE_IN, (now, json_ids(sorted(self._watched)))
            ).fetchone()
        else:
            return True  # nobody claimed yet: we do not know which queues matter
        self._next_due = next_due
        return bool(ready) or (next_due is not None and next_due <= now)

    # --- results ------------------------------------------------------------------------------------
    async def _put_results(self, results: Sequence[TaskResult]) -> None:
        rows = [(r.task_id, r.status.value, r.key, r.expires_at, r.finished_at, encode(r)) for r in results]
        await self._write(executemany, PUT_RESULT, rows)

    async def get_result(self, task_id: str) -> TaskResult | None:
        row = await self._call(fetchone, GET_RESULT, (task_id,))
        return None if row is None else decode_result(row[0])

    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        if not task_ids:
            return {}
        rows = await self._call(fetchall, GET_RESULTS, (json_ids(task_ids),))
        found = {r.task_id: r for r in (decode_result(row[0]) for row in rows)}
        return {i: found[i] for i in task_ids if i in found}

    async def find_results(self, *, key_prefix: str) -> list[TaskResult]:
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        end = prefix_end(key_prefix)
        if end is None:
            rows = await self._call(fetchall, FIND_RESULTS_FROM, (key_prefix,))
        else:
            rows = await self._call(fetchall, FIND_RESULTS, (key_prefix, end))
        out = [decode_result(r[0]) for r in rows]
        return [r for r in out if r.key is not None and r.key.startswith(key_prefix)]

    async def delete_results(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0
        return await self._call(execute, DELETE_RESULTS, (json_ids(task_ids),))

    async def purge_results(self, *, now: float) -> int:
        return await self._call(execute, PURGE_RESULTS, (now,))

    # --- events -------------------------------------------------------------------------------------
    async def _append_events(self, events: Sequence[TaskEvent]) -> None:
        rows = [(e.task_id, str(e.type), e.timestamp, e.worker, e.queue, e.detail) for e in events]
        await self._write(executemany, APPEND_EVENT, rows)

    async def _query_events(
        self, task_id: str | None, since: float | None, types: list[str] | None, limit: int | None
    ) -> list[TaskEvent]:
        sql, params = events_sql(
            QUERY_EVENTS, task_id, since, types, limit,
            mark=lambda n: "?", type_in="type IN " + IDS.replace("?", "{}"), type_list=json_ids,
        )  # fmt: skip
        return [event_from_row(r) for r in await self._call(self._read_events, sql, tuple(params))]

    def _read_events(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
        # the version first: a commit after it wakes wait_for_events, even one this read saw
        self._events_seen = conn.execute("PRAGMA data_version").fetchone()[0]
        return conn.execute(sql, params).fetchall()

    async def wait_for_events(self, timeout: float) -> None:
        """Return once another connection has committed since the last ``query_events``
        (``PRAGMA data_version`` moved: events may have been appended), looking every
        ``EVENT_POLL`` seconds, or after ``timeout``: a live subscription in another process
        sees an event within about that, not after the processor's back-off (up to 1 s)."""
        if not self.cross_process_wakeups or self._events_seen is None:
            await anyio.sleep(timeout)
            return
        deadline = anyio.current_time() + timeout
        while (left := deadline - anyio.current_time()) > 0:
            await anyio.sleep(min(EVENT_POLL, left))
            if self._conn is None or await self._call(data_version) != self._events_seen:
                return

    async def purge_events(self, *, before: float, task_ids: Collection[str] | None = None) -> int:
        if task_ids is None:
            return await self._call(execute, PURGE_EVENTS, (before,))
        return await self._call(execute, PURGE_TASK_EVENTS, (before, json_ids(list(task_ids))))

    # --- blobs --------------------------------------------------------------------------------------
    async def _put_blobs(self, given: dict[str, Blob], owner: str, now: float) -> int:
        files: set[str] = set()
        if self.blob_dir is not None:
            big = [d for d, b in given.items() if nbytes(b) >= EXTERNAL_BLOB]
            if big:
                missing = await self.missing_blobs(big)
                files = {d for d in big if d in missing or self.blob_path(d) is None}
                if files:  # whole files before their rows; a file without a row is swept later
                    await anyio.to_thread.run_sync(write_blob_files, self.blob_dir, {d: given[d] for d in files})
        return await self._write(put_blob_rows, given, owner, now, files)

    async def _add_blob_owners(self, owners: dict[str, list[str]], now: float) -> None:
        rows = [(d, o, now) for o, ds in owners.items() for d in ds]
        await self._write(executemany, PUT_BLOB_OWNER, rows)

    async def _get_blobs(self, ds: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for d, data, size in await self._call(fetchall, GET_BLOBS, (json_ids(ds),)):
            if len(data) == size:
                out[d] = data
            else:  # a file beside the database
                path = self.blob_path(d)
                if path is not None:
                    out[d] = await anyio.to_thread.run_sync(read_file, path)
        return out

    def blob_path(self, digest: str) -> str | None:
        if self.blob_dir is None:
            return None
        path = os.path.join(self.blob_dir, digest[:2], digest)
        return path if os.path.exists(path) else None

    async def _missing_blobs(self, ds: list[str]) -> set[str]:
        rows = await self._call(fetchall, STORED_BLOBS, (json_ids(ds),))
        return set(ds).difference(r[0] for r in rows)

    async def sweep_blobs(self, *, older_than: float) -> int:
        removed, files = await self._write(sweep_blob_rows, older_than)
        if self.blob_dir is not None:
            await anyio.to_thread.run_sync(sweep_blob_files, self.blob_dir, files, older_than,
                                           functools.partial(self._has_rows))
        return int(removed)

    def _has_rows(self, digests: list[str]) -> set[str]:
        """Which of these digests have a row (for the sweep of files left by a crash)."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=30.0)) as c:
            return {r[0] for r in c.execute(STORED_BLOBS, (json_ids(digests),))}
