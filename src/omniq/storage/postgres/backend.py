"""``PostgresBackend``: tasks, schedules, workers, results, events and blobs as statements on
the ``PgConnection``."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Collection, Sequence
from typing import Any

from ...errors import ConfigError
from ...models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from .._codec import decoder, encode
from ..base import EventStore, Finished, Overrun, Reaped, ResultStore, WorkerInfo
from ..blobs import Blob, nbytes
from ..checks import check_new_tasks
from ..enqueue import holds_key, keyed, plan_enqueue, plan_keys
from ..rows import event_from_row, events_sql, read_task_row
from .connection import (
    EVENTS_PAYLOAD,
    MISSING,
    STATUS_OF,
    PgConnection,
    asyncpg,  # None without the extra (PgConnection refuses to start then)
    decode_finished,
    decode_reaped,
    decode_result,
    decode_schedule,
    decode_statuses,
    decode_tasks,
    decode_worker,
    escape_like,
    key_bucket,
    key_space,
    rowcount,
    tasks_in_order,
)
from .queries import (
    APPEND_EVENTS,
    CANCEL_DEPENDENTS,
    CANCEL_LAPSED,
    CANCEL_REQUESTS,
    CANCEL_WAITING,
    CLAIM,
    CLAIM_IN,
    CLAIMED_WITH_TOKEN,
    COUNTS,
    DELETE_RESULTS,
    DELETE_SCHEDULE,
    DELETE_UNOWNED_BLOBS,
    DELETE_WORKER,
    DEPENDENTS,
    EXPIRE,
    EXPIRING,
    EXTEND,
    FAIL_LAPSED,
    FIND_RESULTS,
    FINISH,
    GET_BLOBS,
    GET_RESULT,
    GET_RESULTS,
    GET_SCHEDULE,
    GET_SCHEDULES,
    GET_TASK,
    GET_WORKERS,
    INSERT_BLOB,
    INSERT_DEPS,
    INSERT_TASKS,
    INSERT_TASKS_NOTIFY,
    KEY_BUCKETS,
    KEY_HOLDERS,
    LAPSED_LEASES,
    LOCK_DEPENDENCIES,
    LOCK_FOR_CANCEL,
    LOCK_KEYS,
    LOCK_SCHEDULE,
    LOCK_STORED_BLOBS,
    LOCK_TASKS,
    LOCK_UNOWNED_BLOBS,
    NOTIFY,
    OLDEST_QUEUED,
    OVERRUN,
    PAGE_BELOW,
    PROMOTE_DUE,
    PURGE_EVENTS,
    PURGE_KEYS,
    PURGE_RESULTS,
    PURGE_TASK_EVENTS,
    PURGE_TASKS,
    PUT_BLOB_OWNERS,
    PUT_KEYS,
    PUT_RESULTS,
    QUERY_EVENTS,
    RELEASE,
    RELEASE_DEPENDENTS,
    REQUEST_CANCEL,
    REQUEUE,
    REQUEUE_DEPS,
    REQUEUE_LAPSED,
    REQUEUE_READ,
    RETRY,
    STORED_BLOBS,
    STORED_TASKS,
    SWEEP_BLOB_OWNERS,
    TASK_STATUSES,
    UPSERT_SCHEDULE,
    UPSERT_WORKER,
    page_sql,
)


class PostgresBackend(PgConnection, ResultStore, EventStore):
    """Task queue, result store and event store sharing one asyncpg pool and one schema."""

    # --- tasks ----------------------------------------------------------------------------------------
    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        if not tasks:
            return {}
        blobs = {t.id: encode(t) for t in tasks}
        now = time.time()
        keys = keyed(tasks)

        async def recover(conn: Any) -> Any:
            stored = {r[0]: r[1] for r in await conn.fetch(STORED_TASKS, list(blobs))}
            if not keys:
                # all there, byte for byte: committed
                return (True, {}) if stored == blobs else MISSING
            # a keyed batch is one transaction: anything of it stored means it committed, and
            # what is missing was a duplicate of the key's holder (nothing stored: run again)
            if not stored or any(blobs[i] != b for i, b in stored.items()):
                return MISSING
            missing = [t for t in tasks if t.id not in stored]
            holders = {k: tid for k, tid, _, _ in await conn.fetch(
                KEY_HOLDERS, [t.key for t in missing if t.key is not None])}
            return True, {t.id: holders[t.key] for t in missing if t.key in holders}

        ready, dups = await self._run(lambda c: self._insert(c, tasks, blobs, now, keys),
                                      recover=recover)
        if ready:
            self.notify()
        for t in tasks:
            if t.eta is not None and t.id not in dups:
                self._due_at(t.eta)
        return dups

    async def _insert(
        self, conn: Any, tasks: Sequence[Task], blobs: dict[str, bytes], now: float,
        keys: list[str],
    ) -> tuple[bool, dict[str, str]]:
        """Insert a validated batch, with its NOTIFY; True when some task is ready at once,
        and the duplicates of held keys (see ``TaskQueue.enqueue``)."""
        try:
            if keys:
                async with conn.transaction():
                    buckets = sorted({key_bucket(k) for k in keys})
                    await conn.execute(LOCK_KEYS, key_space(self.schema), buckets)
                    holders: dict[str, str] = {}
                    gone: list[str] = []  # holders known only by their stored success
                    for k, tid, st, rst in await conn.fetch(KEY_HOLDERS, keys):
                        status = STATUS_OF[st] if st is not None else None
                        if holds_key(status, rst == "succeeded", self.results_here):
                            holders[k] = tid
                            if st is None:
                                gone.append(tid)
                    store, dups = plan_keys(tasks, holders, gone)
                    ready = False
                    if store:
                        ready = await _insert_tasks(conn, self.channel, store, blobs, now)
                        kept = [t for t in store if t.key is not None]
                        await conn.execute(PUT_KEYS, [t.key for t in kept], [t.id for t in kept])
                    return ready, dups
            if any(t.depends_on for t in tasks):
                async with conn.transaction():
                    return await _insert_tasks(conn, self.channel, tasks, blobs, now), {}
            return await _insert_tasks(conn, self.channel, tasks, blobs, now), {}
        except asyncpg.UniqueViolationError:
            taken = [r[0] for r in await conn.fetch(TASK_STATUSES, list(blobs))]
            if taken:
                raise ConfigError(f"task id {taken[0]!r} already exists") from None
            raise

    async def _claim(
        self, worker: str, names: list[str] | None, limit: int, lease: float, now: float
    ) -> list[Task]:
        lease_until = now + lease
        token = os.urandom(8).hex()
        params: tuple[Any, ...]
        if names is None:
            sql, params = CLAIM, (worker, lease_until, token, now, limit)
        else:
            sql, params = CLAIM_IN, (worker, lease_until, token, now, limit, names)

        async def recover(conn: Any) -> Any:
            rows = await conn.fetch(CLAIMED_WITH_TOKEN, lease_until, token, worker)
            return rows or MISSING

        rows = await self._run(lambda c: c.fetch(sql, *params), recover=recover)
        if self._next_due is not None and self._next_due <= now:
            # what fell due is claimable already; promote the rest so idle workers of other
            # queues do not spin on a past eta, and learn the next one
            self._next_due = await self._run(lambda c: c.fetchval(PROMOTE_DUE, now))
        claimed = [(read_task_row(r), int(r[0])) for r in rows]
        claimed.sort(key=lambda ts: (-ts[0].priority, ts[1]))  # RETURNING has no order
        return [t for t, _ in claimed]

    async def _finish(self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], now: float) -> Finished:
        ids = [i for i, _ in outcomes]
        statuses = [s.value for _, s in outcomes]

        async def tx(conn: Any, op_id: str) -> Finished:
            async with conn.transaction():
                ended = [r[0] for r in await conn.fetch(FINISH, ids, statuses, now, worker)]
                out = await self._resolve(conn, ended, now)
                if out.released or out.cancelled:
                    await self._record(conn, op_id, out)
                return out

        out = await self._run_op(tx, decode_finished)
        if out.released:
            self.notify()
        return out

    async def _resolve(self, conn: Any, ids: Sequence[str], now: float) -> Finished:
        """Release or cancel (transitively) the dependents of tasks that just became final.

        Runs inside the caller's transaction. Dependents are locked before their dependencies
        are checked, in a later statement, so concurrent finishes of two dependencies of one
        task serialize on it and the second sees the first (see the module docstring)."""
        out = Finished()
        frontier = list(ids)
        while frontier:
            rows = await conn.fetch(DEPENDENTS, frontier)
            frontier = []
            cause: dict[str, str] = {}
            check: dict[str, None] = {}
            for child, dep, dep_status in rows:
                if dep_status == "succeeded":
                    check[child] = None
                elif dep_status in ("failed", "cancelled", "expired"):
                    cause.setdefault(child, dep)
            if cause:
                cancelled = tasks_in_order(await conn.fetch(CANCEL_DEPENDENTS, now, list(cause)))
                out.cancelled.extend((t, cause[t.id]) for t in cancelled)
                frontier = [t.id for t in cancelled]
            release = [c for c in check if c not in cause]
            if release:
                await conn.execute(LOCK_TASKS, release)
                out.released.extend(tasks_in_order(await conn.fetch(RELEASE_DEPENDENTS, now, release)))
        if out.released:
            await conn.execute(NOTIFY, self.channel, _notify_payload(out.released, now))
        return out

    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        now = time.time()  # retry has no ``now``: the wall clock decides QUEUED or PENDING
        payload = "" if eta <= now else repr(eta)
        params = (eta, attempts, task_id, worker, now, self.channel, payload)
        if await self._run(lambda c: c.fetch(RETRY, *params)):
            if eta <= now:
                self.notify()
            else:
                self._due_at(eta)

    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        ids = list(task_ids)
        if await self._run(lambda c: c.fetch(RELEASE, ids, worker, self.channel)):
            self.notify()

    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        if task_ids:
            ids = list(task_ids)
            await self._run(lambda c: c.execute(EXTEND, lease_until, ids, worker))

    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        rows = await self._run(lambda c: c.fetch(OVERRUN, now, limit))
        return [Overrun(task_id=r[0], queue=r[1], worker=r[2], lease_until=r[3]) for r in rows]

    async def reap(self, *, now: float) -> Reaped:
        if not await self._run(lambda c: c.fetchval(LAPSED_LEASES, now)):
            return Reaped(requeued=[], dead=[])

        async def tx(conn: Any, op_id: str) -> Reaped:
            async with conn.transaction():
                cancelled = tasks_in_order(await conn.fetch(CANCEL_LAPSED, now))
                dead = tasks_in_order(await conn.fetch(FAIL_LAPSED, now))
                requeued = tasks_in_order(await conn.fetch(REQUEUE_LAPSED, now))
                out = Reaped(requeued=requeued, dead=dead, cancelled=[(t, t.id) for t in cancelled])
                ended = [t.id for t in cancelled] + [t.id for t in dead]
                out.cancelled.extend((await self._resolve(conn, ended, now)).cancelled)
                if requeued:
                    await conn.execute(NOTIFY, self.channel, "")
                if out.requeued or out.dead or out.cancelled:
                    await self._record(conn, op_id, out)
                return out

        out = await self._run_op(tx, decode_reaped)
        if out.requeued:
            self.notify()
        return out

    async def expire(self, *, now: float) -> list[Task]:
        if not await self._run(lambda c: c.fetchval(EXPIRING, now)):
            return []

        async def tx(conn: Any, op_id: str) -> list[Task]:
            async with conn.transaction():
                expired = tasks_in_order(await conn.fetch(EXPIRE, now))
                cascade = await self._resolve(conn, [t.id for t in expired], now)
                out = expired + [t for t, _ in cascade.cancelled]
                if out:
                    await self._record(conn, op_id, out)
                return out

        return await self._run_op(tx, decode_tasks)

    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        ids = list(dict.fromkeys(task_ids))

        async def tx(conn: Any, op_id: str) -> dict[str, TaskStatus]:
            async with conn.transaction():
                found = dict(await conn.fetch(LOCK_FOR_CANCEL, ids))  # claimers skip them now
                before = {i: STATUS_OF[found[i]] for i in ids if i in found}
                ended = [r[0] for r in await conn.fetch(CANCEL_WAITING, now, ids)]
                await conn.execute(REQUEST_CANCEL, ids)
                for t, _ in (await self._resolve(conn, ended, now)).cancelled:
                    before[t.id] = TaskStatus.PENDING
                if before:
                    await self._record(conn, op_id, before)
                return before

        return await self._run_op(tx, decode_statuses)

    async def get_task(self, task_id: str) -> Task | None:
        row = await self._run(lambda c: c.fetchrow(GET_TASK, task_id))
        return None if row is None else read_task_row(row)

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        ids = list(task_ids)
        rows = await self._run(lambda c: c.fetch(TASK_STATUSES, ids))
        return {i: STATUS_OF[s] for i, s in rows}

    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        if not task_ids:
            return []
        ids = list(task_ids)
        found = {r[0] for r in await self._run(lambda c: c.fetch(CANCEL_REQUESTS, ids))}
        return [i for i in dict.fromkeys(ids) if i in found]

    async def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue, status, n in await self._run(lambda c: c.fetch(COUNTS)):
            out.setdefault(queue, {})[status] = n
        return out

    async def oldest_queued(self) -> dict[str, float]:
        return {q: t for q, t in await self._run(lambda c: c.fetch(OLDEST_QUEUED))}

    async def purge_tasks(
        self, *, before: float, statuses: Collection[TaskStatus] | None = None
    ) -> list[str]:
        wanted = None if statuses is None else [st.value for st in statuses]
        gone = [r[0] for r in await self._run(lambda c: c.fetch(PURGE_TASKS, before, wanted))]
        if gone:

            async def keys(conn: Any) -> None:
                async with conn.transaction():  # under every key lock: no enqueue re-keys meanwhile
                    await conn.execute(LOCK_KEYS, key_space(self.schema), list(range(KEY_BUCKETS)))
                    await conn.execute(PURGE_KEYS)

            await self._run(keys)
        return gone

    async def _list_tasks(
        self, statuses: Collection[TaskStatus] | None, queue: str | None, name: str | None, limit: int,
        before: str | None,
    ) -> list[Task]:
        """Newest first in the order stored (``seq``), after ``before``'s place: index ranges
        read backwards (``page_sql``); a ``name`` is matched on the records, reading on in
        batches until the page is full."""
        wanted = None if statuses is None else tuple(sorted(st.value for st in statuses))
        sql = page_sql(wanted, queue is not None)
        want = limit if name is None else max(4 * limit, 256)
        page: list[Task] = []
        below = PAGE_TOP if before is None else int(await self._run(lambda c: c.fetchval(PAGE_BELOW, before)))
        while len(page) < limit:
            params = [below, want, *([queue] if queue is not None else [])]
            rows = await self._run(functools.partial(_fetch, sql, params))
            page.extend(t for t in map(read_task_row, rows) if name is None or t.name == name)
            if len(rows) < want:
                break
            below = rows[-1][0]  # the batch's oldest seq
        return page[:limit]

    async def requeue(self, task_id: str, *, now: float, attempts: int) -> TaskStatus | None:
        async def tx(conn: Any) -> str | None:
            async with conn.transaction():
                row = await conn.fetchrow(REQUEUE_READ, task_id)
                if row is None:
                    return None
                if row[0] in ("failed", "cancelled", "expired"):
                    t = _decode_task(row[1])
                    t.expires_at = None  # (not sealed)
                    await conn.execute(REQUEUE, task_id, attempts, encode(t))
                    await conn.execute(REQUEUE_DEPS, task_id)
                    await conn.execute(NOTIFY, self.channel, "")
                return str(row[0])

        before = await self._run(tx)
        if before in ("failed", "cancelled", "expired"):
            self.notify()
        return None if before is None else STATUS_OF[before]

    # --- schedules ----------------------------------------------------------------------------------
    async def add_schedule(self, schedule: Schedule) -> None:
        row = (schedule.id, schedule.next_run, bool(schedule.paused), encode(schedule))
        await self._run(lambda c: c.execute(UPSERT_SCHEDULE, *row))

    async def get_schedules(self) -> list[Schedule]:
        rows = await self._run(lambda c: c.fetch(GET_SCHEDULES))
        return [decode_schedule(r[0]) for r in rows]

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_run: float | None
    ) -> bool:
        async def tx(conn: Any) -> bool:
            async with conn.transaction():
                row = await conn.fetchrow(LOCK_SCHEDULE, schedule_id)
                if row is None:
                    return False
                s = decode_schedule(row[0])
                s.paused = paused
                if not paused or next_run is not None:
                    s.next_run = next_run
                await conn.execute(UPSERT_SCHEDULE, s.id, s.next_run, s.paused, encode(s))
                return True

        return await self._run(tx)

    async def delete_schedule(self, schedule_id: str) -> bool:
        status = await self._run(lambda c: c.execute(DELETE_SCHEDULE, schedule_id))
        return rowcount(status) > 0

    async def _fire_schedule(
        self, schedule_id: str, expected_next_run: float, next_run: float | None, now: float, task: Task
    ) -> bool:
        blobs = {task.id: encode(task)}

        async def tx(conn: Any) -> tuple[bool, bool]:
            try:
                async with conn.transaction():
                    row = await conn.fetchrow(LOCK_SCHEDULE, schedule_id)  # the compare-and-set
                    if row is None:
                        return False, False
                    s = decode_schedule(row[0])
                    if s.paused or s.next_run != expected_next_run:
                        return False, False
                    ready = await _insert_tasks(conn, self.channel, [task], blobs, now)
                    s.next_run, s.last_run, s.last_task_id = next_run, now, task.id
                    await conn.execute(UPSERT_SCHEDULE, s.id, s.next_run, s.paused, encode(s))
                    return True, ready
            except asyncpg.UniqueViolationError:
                raise ConfigError(f"task id {task.id!r} already exists") from None

        async def recover(conn: Any) -> Any:
            row = await conn.fetchrow(GET_SCHEDULE, schedule_id)
            won = row is not None and decode_schedule(row[0]).last_task_id == task.id
            return (True, task.status is TaskStatus.QUEUED) if won else MISSING

        fired, ready = await self._run(tx, recover=recover)
        if ready:
            self.notify()
        elif fired and task.eta is not None:
            self._due_at(task.eta)
        return fired

    # --- workers ------------------------------------------------------------------------------------
    async def heartbeat(self, info: WorkerInfo) -> None:
        row = (info.id, info.last_heartbeat, encode(info))
        await self._run(lambda c: c.execute(UPSERT_WORKER, *row))

    async def remove_worker(self, worker_id: str) -> None:
        await self._run(lambda c: c.execute(DELETE_WORKER, worker_id))

    async def workers(self) -> list[WorkerInfo]:
        rows = await self._run(lambda c: c.fetch(GET_WORKERS))
        return [decode_worker(r[0]) for r in rows]

    # --- results ------------------------------------------------------------------------------------
    async def _put_results(self, results: Sequence[TaskResult]) -> None:
        latest: dict[str, TaskResult] = {}
        for r in results:
            latest[r.task_id] = r  # the last one wins, as a second put would
        rs = [latest[k] for k in sorted(latest)]  # one lock order: no deadlocks between batches
        cols = (
            [r.task_id for r in rs],
            [r.status.value for r in rs],
            [r.key for r in rs],
            [r.expires_at for r in rs],
            [r.finished_at for r in rs],
            [encode(r) for r in rs],
        )
        await self._run(lambda c: c.execute(PUT_RESULTS, *cols))

    async def get_result(self, task_id: str) -> TaskResult | None:
        row = await self._run(lambda c: c.fetchrow(GET_RESULT, task_id))
        return None if row is None else decode_result(row[0])

    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        if not task_ids:
            return {}
        ids = list(task_ids)
        rows = await self._run(lambda c: c.fetch(GET_RESULTS, ids))
        found = {r.task_id: r for r in (decode_result(row[0]) for row in rows)}
        return {i: found[i] for i in ids if i in found}

    async def find_results(self, *, key_prefix: str) -> list[TaskResult]:
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        pattern = escape_like(key_prefix)
        rows = await self._run(lambda c: c.fetch(FIND_RESULTS, pattern))
        return [decode_result(r[0]) for r in rows]

    async def delete_results(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0
        ids = list(task_ids)
        return rowcount(await self._run(lambda c: c.execute(DELETE_RESULTS, ids)))

    async def purge_results(self, *, now: float) -> int:
        return rowcount(await self._run(lambda c: c.execute(PURGE_RESULTS, now)))

    # --- events -------------------------------------------------------------------------------------
    async def _append_events(self, events: Sequence[TaskEvent]) -> None:
        cols = (
            [e.task_id for e in events],
            [str(e.type) for e in events],
            [e.timestamp for e in events],
            [e.worker for e in events],
            [e.queue for e in events],
            [e.detail for e in events],
        )

        async def append(conn: Any, op_id: str) -> None:
            await conn.execute(APPEND_EVENTS, *cols, op_id)  # records op_id in the same statement
            await conn.execute(NOTIFY, self.channel, EVENTS_PAYLOAD)  # subscribers elsewhere

        await self._run_op(append, lambda _: None)

    async def wait_for_events(self, timeout: float) -> None:
        """Return on the NOTIFY another process's ``append_events`` sends, or at ``timeout``."""
        await self._events_appended.wait(timeout)

    async def _query_events(
        self, task_id: str | None, since: float | None, types: list[str] | None, limit: int | None
    ) -> list[TaskEvent]:
        sql, params = events_sql(
            QUERY_EVENTS, task_id, since, types, limit,
            mark=lambda n: f"${n}", type_in="type = ANY({}::text[])", type_list=list,
        )  # fmt: skip
        return [event_from_row(r) for r in await self._run(lambda c: c.fetch(sql, *params))]

    async def purge_events(self, *, before: float, task_ids: Collection[str] | None = None) -> int:
        if task_ids is None:
            return rowcount(await self._run(lambda c: c.execute(PURGE_EVENTS, before)))
        ids = list(task_ids)
        return rowcount(await self._run(lambda c: c.execute(PURGE_TASK_EVENTS, before, ids)))

    # --- blobs --------------------------------------------------------------------------------------
    async def _put_blobs(self, given: dict[str, Blob], owner: str, now: float) -> int:
        """One transaction: owners, then which blobs are stored (locked FOR SHARE against a
        sweep), then the others, in digest order (two puts never wait on each other in a
        cycle). Only the missing blobs' bytes are sent."""
        ds = sorted(given)

        async def put(conn: Any) -> int:
            async with conn.transaction():
                await conn.execute(PUT_BLOB_OWNERS, ds, [owner] * len(ds), [now] * len(ds))
                stored = {r[0] for r in await conn.fetch(LOCK_STORED_BLOBS, ds)}
                written = 0
                for d in ds:
                    if d not in stored:
                        data = given[d]
                        size = await conn.fetchval(INSERT_BLOB, d, now, nbytes(data), data)
                        written += size or 0  # None: another put stored it first
                return written

        return await self._run(put)

    async def _add_blob_owners(self, owners: dict[str, list[str]], now: float) -> None:
        rows = sorted({(d, o) for o, ds in owners.items() for d in ds})
        cols = ([d for d, _ in rows], [o for _, o in rows], [now] * len(rows))
        await self._run(lambda c: c.execute(PUT_BLOB_OWNERS, *cols))

    async def _get_blobs(self, ds: list[str]) -> dict[str, bytes]:
        return dict(await self._run(lambda c: c.fetch(GET_BLOBS, ds)))

    async def _missing_blobs(self, ds: list[str]) -> set[str]:
        rows = await self._run(lambda c: c.fetch(STORED_BLOBS, ds))
        return set(ds).difference(r[0] for r in rows)

    async def sweep_blobs(self, *, older_than: float) -> int:
        async def sweep(conn: Any) -> int:
            async with conn.transaction():
                await conn.execute(SWEEP_BLOB_OWNERS, older_than)
                doomed = [r[0] for r in await conn.fetch(LOCK_UNOWNED_BLOBS, older_than)]
                if not doomed:
                    return 0
                # a new statement, a new snapshot: owners a put committed meanwhile count
                return rowcount(await conn.execute(DELETE_UNOWNED_BLOBS, doomed))

        return await self._run(sweep)


# --- helpers run on a connection -----------------------------------------------------------------


_decode_task = decoder(Task).decode
PAGE_TOP = 2**63 - 1  # above every seq (bigserial)


async def _fetch(sql: str, params: Sequence[Any], conn: Any) -> Any:
    return await conn.fetch(sql, *params)


def _notify_payload(tasks: Sequence[Task], now: float) -> str:
    """NOTIFY payload: empty when a task is ready now, else the earliest eta (a float)."""
    etas = [t.eta for t in tasks if t.status is TaskStatus.PENDING and t.eta is not None]
    if any(t.status is TaskStatus.QUEUED for t in tasks) or not etas:
        return ""
    return repr(min(etas)) if min(etas) > now else ""


async def _insert_tasks(
    conn: Any, channel: str, tasks: Sequence[Task], blobs: dict[str, bytes], now: float
) -> bool:
    """Insert a validated batch (in the caller's transaction when it has dependencies) and NOTIFY
    when something is ready or delayed; True when some task is ready to claim at once."""
    deps = list({d for t in tasks for d in t.depends_on})
    known: dict[str, TaskStatus] = {}
    if deps:  # FOR SHARE: a dependency cannot finish unseen while its dependents go in
        known = {i: STATUS_OF[s] for i, s in await conn.fetch(LOCK_DEPENDENCIES, deps)}
    plans = plan_enqueue(tasks, known)
    ready = False
    delayed: list[float] = []
    dep_children: list[str] = []
    dep_parents: list[str] = []
    cols: tuple[list[Any], ...] = tuple([] for _ in range(13))
    for t, (status, waiting) in zip(tasks, plans, strict=True):
        row = (
            t.id, t.queue, t.priority, status.value, bool(waiting), t.eta, t.expires_at,
            t.max_deliveries, t.deliveries, t.attempts, t.created_at,
            now if status is TaskStatus.CANCELLED else None, blobs[t.id],
        )  # fmt: skip
        for col, value in zip(cols, row):
            col.append(value)
        if waiting:
            dep_children.extend(t.id for _ in waiting)
            dep_parents.extend(waiting)
        elif status is TaskStatus.QUEUED:
            ready = True
        elif status is TaskStatus.PENDING and t.eta is not None:
            delayed.append(t.eta)
    if ready or delayed:
        payload = "" if ready else repr(min(delayed))
        await conn.execute(INSERT_TASKS_NOTIFY, *cols, channel, payload)
    else:
        await conn.execute(INSERT_TASKS, *cols)
    if dep_children:
        await conn.execute(INSERT_DEPS, dep_children, dep_parents)
    return ready
