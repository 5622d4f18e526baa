"""``BucketQueueBackend``: a task queue (and results, events, blobs) in an object-store bucket,
every racy change a conditional write. The layout and the reasons are in the package docstring."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import msgspec

from ...ids import new_ids
from ...lifecycle import (
    Cascade,
    claim_order,
    expires,
    fired,
    lease_lapsed,
    ready_status,
    slot_fires,
)
from ...logs import get_logger
from ...models import Schedule, Task, TaskResult, TaskStatus
from .._codec import decoder, encode
from ..base import Finished, Overrun, Reaped, TaskQueue, WorkerInfo, readable_workers
from ..checks import check_new_tasks, watched_after
from ..enqueue import keyed, plan_enqueue, plan_keys
from . import shards as sh
from .admin import OperatorOps
from .state import (
    ARCHIVE_AGE,
    ARCHIVE_KEEP,
    CANCEL_SETTLE,
    IDLE_MAX,
    IDLE_MIN,
    SETTLE,
    split_shards,
)

log = get_logger("omniq.storage.bucket")
_row_dec = decoder(sh.Row)


class BucketQueueBackend(OperatorOps, TaskQueue):
    """Tasks, results, events and blobs under one ``s3://``, ``gs://`` or ``abfs://`` prefix."""

    # --- enqueue --------------------------------------------------------------------------------
    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        if not tasks:
            return {}
        now = time.time()
        dups: dict[str, str] = {}
        if keyed(tasks):
            self.keys.results_here = self.results_here
            holders, gone = await self._io("claim keys in", self.keys.claim(tasks, now))
            tasks, dups = plan_keys(tasks, holders, gone)
            if not tasks:
                return dups
        batch = {t.id for t in tasks}
        outside = {d for t in tasks for d in t.depends_on} - batch
        known = await self._lookup_statuses(outside) if outside else {}
        plan_enqueue(tasks, known)  # unknown dependencies and cycles: refused before any write
        await self._put_bodies(tasks)
        seqs = dict(zip((t.id for t in tasks), new_ids(len(tasks)), strict=True))
        by_shard: dict[int, list[Task]] = {}
        for t in tasks:
            by_shard.setdefault(self._shard(t.id), []).append(t)
        ready = False
        done: set[int] = set()
        try:
            for i, group in by_shard.items():

                def insert(shard: sh.Shard, group: list[Task] = group) -> tuple[bool, bool]:
                    return self._insert(shard, group, tasks, known, seqs, now)

                ready |= await self._update(i, insert)
                done.add(i)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._unstore({i: g for i, g in by_shard.items() if i not in done}, seqs)
            raise
        if ready:
            self.notify()
        await self._link(tasks, batch, known, now)
        return dups

    async def _register(self, dep_id: str, child_id: str) -> TaskStatus:
        """Add ``child_id`` to the dependents of ``dep_id`` (in its own shard); its status."""

        def fn(shard: sh.Shard) -> tuple[TaskStatus | None, bool]:
            r = shard.rows.get(dep_id)
            if r is None:
                return None, False
            if r.status.is_final or child_id in r.dependents:
                return r.status, False
            r.dependents.append(child_id)
            return r.status, True

        status = await self._update(self._shard(dep_id), fn)
        if status is None:  # archived meanwhile: final
            status = (await self._lookup_statuses([dep_id])).get(dep_id, TaskStatus.CANCELLED)
        return status

    async def _link(
        self, tasks: Sequence[Task], batch: set[str], known: dict[str, TaskStatus], now: float
    ) -> None:
        """A dependency in another shard learns of its dependent now, and one that ended while
        the dependent was being stored (it may not have seen it) is applied here, as ``file://``
        does."""
        ext: list[sh.External] = []
        for t in tasks:
            for d in dict.fromkeys(t.depends_on):
                if self._shard(d) != self._shard(t.id):
                    status: TaskStatus | None = await self._register(d, t.id)
                elif d not in batch and not known[d].is_final:
                    status = (await self._lookup_statuses([d])).get(d)
                else:
                    continue
                if status is not None and status.is_final:
                    ext.append((t.id, d, status))
        if ext:
            await self._external(ext, now)

    async def _external(self, ext: list[sh.External], now: float) -> tuple[list[Task], list[tuple[Task, str]]]:
        """Dependency ends whose dependents live in other shards, applied there (transitively)."""
        released: list[sh.Row] = []
        cancelled: list[tuple[sh.Row, str]] = []
        while ext:
            by_shard: dict[int, list[sh.External]] = {}
            for e in ext:
                by_shard.setdefault(self._shard(e[0]), []).append(e)
            ext = []
            for i, items in by_shard.items():

                def fn(shard: sh.Shard, items: list[sh.External] = items) -> tuple[Any, bool]:
                    rel: list[sh.Row] = []
                    can: list[tuple[sh.Row, str]] = []
                    ended: list[tuple[str, TaskStatus]] = []
                    touched = False
                    for child_id, dep_id, dep_status in items:
                        child = shard.rows.get(child_id)
                        fate = sh.dependency_ended(child, dep_id, dep_status, now) if child else None
                        touched |= fate is not None  # (WAIT: one dependency fewer to wait for)
                        if fate is Cascade.CANCEL and child is not None:
                            can.append((child, dep_id))
                            ended.append((child_id, TaskStatus.CANCELLED))
                        elif fate is Cascade.RELEASE and child is not None:
                            rel.append(child)
                    r2, c2, more = sh.cascade(shard, ended, now)
                    changed = touched or bool(r2 or c2)
                    return (rel + r2, can + c2, more), changed

                rel, can, more = await self._update(i, fn)
                released += rel
                cancelled += can
                ext += more
        out = await self._rows_tasks(released, cancelled)
        if released:
            self.notify()
        return out

    async def _rows_tasks(
        self, released: list[sh.Row], cancelled: list[tuple[sh.Row, str]]
    ) -> tuple[list[Task], list[tuple[Task, str]]]:
        """The tasks of released rows and of cancelled (row, cause) pairs, read in one go; rows
        whose task is gone meanwhile are left out."""
        by_id = {t.id: t for t in await self._tasks(released + [r for r, _ in cancelled])}
        return ([by_id[r.id] for r in released if r.id in by_id],
                [(by_id[r.id], c) for r, c in cancelled if r.id in by_id])  # fmt: skip

    # --- claim and the ends of a lease ---------------------------------------------------------
    async def _claim(
        self, worker: str, names: list[str] | None, limit: int, lease: float, now: float
    ) -> list[Task]:
        self._watched = watched_after(self._watched, names)
        settle = self._gap if self._idle else 0.0  # an idle worker's poll: see wait_for_tasks
        self._idle = False
        rows: list[sh.Row] = []
        for i, quota in (await self._quotas(names, limit, now, settle)).items():

            def fn(shard: sh.Shard, quota: int = quota) -> tuple[list[sh.Row], bool]:
                got = sh.claim(shard, worker, names, quota, lease, now)
                return got, bool(got)

            rows += await self._update(i, fn, settle=settle)
        self._gap = IDLE_MIN if rows else min(self._gap * 2, IDLE_MAX)
        rows.sort(key=lambda r: claim_order(r.priority, r.seq))
        if not rows:
            return []
        bodies = await self._get_bodies(rows)
        out: list[Task] = []
        lost: list[sh.Row] = []
        for r in rows:
            body = bodies.get(r.id)
            if body is None:
                lost.append(r)
                continue
            out.append(sh.as_task(body, r))
        if lost:  # a row without a body (removed by hand): fail it rather than meet it forever
            log.error("tasks without a stored body: %s", ", ".join(r.id for r in lost))
            await self.finish(worker, [(r.id, TaskStatus.FAILED) for r in lost], now=now)
        return out

    async def _quotas(
        self, names: list[str] | None, limit: int, now: float, settle: float
    ) -> dict[int, int]:
        """How many tasks to claim from each shard: the shard's share of the ``limit`` best
        claimable tasks across all shards (read now, or as seen within ``settle`` seconds), so
        priority and enqueue order hold across shards. One shard: all of ``limit``, from it
        (the claim itself reads it when the view here shows nothing)."""
        if self.shards == 1:
            busy = not settle or not self._quiet(0, settle, lambda s: bool(sh.candidates(s, names, now)))
            return {0: limit} if busy else {}
        ranked: list[tuple[tuple[int, object], int]] = []
        for i in range(self.shards):
            if settle and self._quiet(i, settle, lambda s: bool(sh.candidates(s, names, now))):
                continue
            view = await self._view(i)
            ranked += [(claim_order(r.priority, r.seq), i) for r in sh.candidates(view.shard, names, now)[:limit]]
        ranked.sort(key=lambda c: c[0])
        quotas: dict[int, int] = {}
        for _, i in ranked[:limit]:
            quotas[i] = quotas.get(i, 0) + 1
        return quotas

    async def _finish(self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], now: float) -> Finished:
        wanted = dict(outcomes)
        released: list[sh.Row] = []
        cancelled: list[tuple[sh.Row, str]] = []
        ext: list[sh.External] = []
        for i, ids in self._group(wanted).items():

            def fn(shard: sh.Shard, ids: list[str] = ids) -> tuple[Any, bool]:
                ended = []
                for tid in ids:
                    r = sh.held(shard, worker, tid)
                    if r is not None:
                        sh.end(r, wanted[tid], now)
                        ended.append((tid, wanted[tid]))
                rel, can, more = sh.cascade(shard, ended, now)
                return (rel, can, more), bool(ended)

            rel, can, more = await self._update(i, fn)
            released += rel
            cancelled += can
            ext += more
        tasks_released, tasks_cancelled = await self._rows_tasks(released, cancelled)
        fin = Finished(released=tasks_released, cancelled=tasks_cancelled)
        if ext:
            rel2, can2 = await self._external(ext, now)
            fin.released += rel2
            fin.cancelled += can2
        if fin.released:
            self.notify()
        return fin

    async def _on_held(self, worker: str, task_ids: Sequence[str], change: Callable[[sh.Row], None]) -> bool:
        """Apply ``change`` to the rows of these tasks that ``worker`` holds; True if any."""
        done = False
        for i, ids in self._group(task_ids).items():

            def fn(shard: sh.Shard, ids: list[str] = ids) -> tuple[bool, bool]:
                rows = [r for t in ids if (r := sh.held(shard, worker, t)) is not None]
                for r in rows:
                    change(r)
                return bool(rows), bool(rows)

            done |= await self._update(i, fn)
        return done

    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        def change(r: sh.Row) -> None:
            r.attempts, r.eta, r.worker, r.lease_until = attempts, eta, None, None
            r.status = ready_status(eta, time.time())  # no ``now``: the wall clock, as in SQL

        if await self._on_held(worker, [task_id], change):
            self.notify()

    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        def change(r: sh.Row) -> None:
            r.status, r.worker, r.lease_until = TaskStatus.QUEUED, None, None
            r.deliveries = max(0, r.deliveries - 1)

        if task_ids and await self._on_held(worker, task_ids, change):
            self.notify()

    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        def change(r: sh.Row) -> None:
            r.lease_until = lease_until

        if task_ids:
            await self._on_held(worker, task_ids, change)

    async def reap(self, *, now: float) -> Reaped:
        out = Reaped(requeued=[], dead=[], cancelled=[])
        ext: list[sh.External] = []
        cancelled: list[tuple[sh.Row, str]] = []
        requeued: list[sh.Row] = []
        dead: list[sh.Row] = []
        for i in range(self.shards):

            def fn(shard: sh.Shard) -> tuple[Any, bool]:
                req, dd, can = sh.lapse(shard, now)
                ended = [(r.id, r.status) for r in dd + can]
                _, casc, more = sh.cascade(shard, ended, now)
                return (req, dd, [(r, r.id) for r in can] + casc, more), bool(req or dd or can)

            if self._quiet(i, SETTLE, lambda s: sh.due_work(s, now)):
                continue
            req, dd, can, more = await self._update(i, fn, settle=SETTLE)
            requeued += req
            dead += dd
            cancelled += can
            ext += more
        if requeued or dead or cancelled:
            by_id = {t.id: t for t in await self._tasks(requeued + dead + [r for r, _ in cancelled])}
            out.requeued = [by_id[r.id] for r in requeued if r.id in by_id]
            out.dead = [by_id[r.id] for r in dead if r.id in by_id]
            out.cancelled = [(by_id[r.id], c) for r, c in cancelled if r.id in by_id]
        if ext:
            out.cancelled += (await self._external(ext, now))[1]
        if out.requeued:
            self.notify()
        await self._archive(now)
        await self._recover_fired()
        return out

    async def _archive(self, now: float) -> None:
        """Move final rows out of their shards into ``done/`` objects: written first, then
        removed from the shard (a crash in between leaves the row, archived again later)."""
        for i, view in list(self._views.items()):
            rows = sh.archivable(view.shard, now, ARCHIVE_AGE, ARCHIVE_KEEP)
            if not rows:
                continue
            chains = [[(self._done_path(r.id), encode(r))] for r in rows]
            await self._io("archive tasks in", self.files.put_chains(chains))
            stamps = {r.id: r.finished_at for r in rows}

            def fn(shard: sh.Shard, stamps: dict[str, float | None] = stamps) -> tuple[None, bool]:
                moved = False
                for tid, at in stamps.items():
                    r = shard.rows.get(tid)
                    if r is not None and r.status.is_final and r.finished_at == at:
                        del shard.rows[tid]
                        sh.add_final(shard, r.queue, r.status, 1)
                        moved = True
                return None, moved

            await self._update(i, fn, settle=SETTLE)

    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        shards = await self._all()
        lapsed = sorted(
            (r for s in shards.values() for r in s.rows.values()
             if r.status is TaskStatus.RUNNING and lease_lapsed(r.lease_until, now)),
            key=lambda r: r.lease_until or 0.0,
        )[:limit]  # fmt: skip
        return [Overrun(task_id=r.id, queue=r.queue, worker=r.worker, lease_until=r.lease_until or 0.0)
                for r in lapsed]  # fmt: skip

    async def expire(self, *, now: float) -> list[Task]:
        expired: list[sh.Row] = []
        cancelled: list[sh.Row] = []
        ext: list[sh.External] = []
        for i in range(self.shards):

            def fn(shard: sh.Shard) -> tuple[Any, bool]:
                rows = sorted((r for r in shard.rows.values() if expires(r.status, r.expires_at, now)),
                              key=lambda r: r.seq)  # fmt: skip
                for r in rows:
                    sh.end(r, TaskStatus.EXPIRED, now)
                _, can, more = sh.cascade(shard, [(r.id, r.status) for r in rows], now)
                return (rows, [r for r, _ in can], more), bool(rows)

            if self._quiet(i, SETTLE, lambda s: sh.due_work(s, now)):
                continue
            rows, can, more = await self._update(i, fn, settle=SETTLE)
            expired += rows
            cancelled += can
            ext += more
        out = await self._tasks(expired + cancelled)
        if ext:
            out += [t for t, _ in (await self._external(ext, now))[1]]
        return out

    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        before: dict[str, TaskStatus] = {}
        ext: list[sh.External] = []
        for i, ids in self._group(task_ids).items():

            def fn(shard: sh.Shard, ids: list[str] = ids) -> tuple[Any, bool]:
                seen: dict[str, TaskStatus] = {}
                ended: list[tuple[str, TaskStatus]] = []
                changed = False
                for tid in ids:
                    r = shard.rows.get(tid)
                    if r is None:
                        continue
                    seen[tid] = r.status
                    if r.status in (TaskStatus.QUEUED, TaskStatus.PENDING):
                        sh.end(r, TaskStatus.CANCELLED, now)
                        ended.append((tid, TaskStatus.CANCELLED))
                        changed = True
                    elif r.status is TaskStatus.RUNNING and not r.cancel_requested:
                        r.cancel_requested = changed = True
                _, can, more = sh.cascade(shard, ended, now)
                for r, _ in can:
                    seen[r.id] = TaskStatus.PENDING
                return (seen, more), changed

            seen, more = await self._update(i, fn)
            before.update(seen)
            ext += more
        missing = [t for t in dict.fromkeys(task_ids) if t not in before]
        before.update({t: r.status for t, r in (await self._done_rows(missing)).items()})
        if ext:
            for t, _ in (await self._external(ext, now))[1]:
                before[t.id] = TaskStatus.PENDING
        return before

    # --- reads ----------------------------------------------------------------------------------
    async def get_task(self, task_id: str) -> Task | None:
        r = (await self._rows([task_id])).get(task_id)
        if r is None:
            return None
        got = await self._tasks([r])
        return got[0] if got else None

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        found = await self._lookup_statuses(task_ids)
        return {t: found[t] for t in task_ids if t in found}

    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        groups = self._group(task_ids)
        shards = await self._all(CANCEL_SETTLE, groups)
        return [t for i, g in groups.items() for t in g
                if (r := shards[i].rows.get(t)) is not None
                and r.status is TaskStatus.RUNNING and r.cancel_requested]  # fmt: skip

    async def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for s in (await self._all()).values():
            for q, per in s.finals.items():
                mine = out.setdefault(q, {})
                for st, n in per.items():
                    mine[st] = mine.get(st, 0) + n
            for r in s.rows.values():
                mine = out.setdefault(r.queue, {})
                mine[r.status.value] = mine.get(r.status.value, 0) + 1
        return {q: {st: n for st, n in per.items() if n > 0} for q, per in out.items() if any(per.values())}

    async def oldest_queued(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in (await self._all()).values():
            for r in s.rows.values():
                if r.status is TaskStatus.QUEUED and (r.queue not in out or r.created_at < out[r.queue]):
                    out[r.queue] = r.created_at
        return out

    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        """As ``FsspecBackend`` (one GET per result), except that tasks whose row says they are
        still pending, queued or running are not looked for: a client waiting on 500 tasks
        run elsewhere reads its shard once a poll, not 500 objects."""
        ids = list(dict.fromkeys(task_ids))
        if len(ids) <= self.shards:
            return await super().get_results(ids)
        groups = self._group(ids)
        shards = await self._all(which=groups)
        active = {t for i, g in groups.items() for t in g
                  if (r := shards[i].rows.get(t)) is not None and r.status in sh.ACTIVE}  # fmt: skip
        return await super().get_results([t for t in ids if t not in active])

    # --- schedules (in shard 0) ------------------------------------------------------------------
    async def add_schedule(self, schedule: Schedule) -> None:
        def fn(shard: sh.Shard) -> tuple[None, bool]:
            shard.schedules[schedule.id] = schedule
            return None, True

        await self._update(0, fn)

    async def get_schedules(self) -> list[Schedule]:
        view = await self._view(0, SETTLE)
        return [msgspec.structs.replace(s) for s in view.shard.schedules.values()]

    async def set_schedule_paused(self, schedule_id: str, paused: bool, next_run: float | None) -> bool:
        def fn(shard: sh.Shard) -> tuple[bool, bool]:
            s = shard.schedules.get(schedule_id)
            if s is None:
                return False, False
            s.paused = paused
            if not paused or next_run is not None:
                s.next_run = next_run
            return True, True

        return await self._update(0, fn)

    async def delete_schedule(self, schedule_id: str) -> bool:
        def fn(shard: sh.Shard) -> tuple[bool, bool]:
            found = shard.schedules.pop(schedule_id, None) is not None
            return found, found

        return await self._update(0, fn)

    async def _fire_schedule(
        self, schedule_id: str, expected_next_run: float, next_run: float | None, now: float, task: Task
    ) -> bool:
        await self._put_bodies([task])
        [seq] = new_ids(1)
        bare = msgspec.structs.replace(task, depends_on=())
        together = self._shard(task.id) == 0  # one compare-and-set fires the slot and stores it

        def fn(shard: sh.Shard) -> tuple[bool, bool]:
            s = shard.schedules.get(schedule_id)
            if not slot_fires(s, expected_next_run):
                return False, False
            assert s is not None
            shard.schedules[schedule_id] = fired(s, next_run=next_run, now=now, task_id=task.id)
            if together:
                self._insert(shard, [bare], [bare], {}, {task.id: seq}, now)
            return True, True

        won = await self._update(0, fn)
        if not won:
            await self._io("store tasks in", self.cas.delete(self._body_path(task.id)))
            return False
        if not together:
            await self._update(self._shard(task.id),
                               lambda s: self._insert(s, [bare], [bare], {}, {task.id: seq}, now))  # fmt: skip
        self.notify()
        return True

    # --- workers --------------------------------------------------------------------------------
    async def heartbeat(self, info: WorkerInfo) -> None:
        await self._io("write a heartbeat to", self.files.put(self._worker_path(info.id), encode(info)))

    async def remove_worker(self, worker_id: str) -> None:
        await self._io("remove a worker from", self.files.delete([self._worker_path(worker_id)]))

    async def workers(self) -> list[WorkerInfo]:
        paths = await self._io("list workers in", self.files.find(f"{self._q}/workers"))
        got = await self._io("read workers from", self.files.get_many(paths))
        return readable_workers(got.items(), log)

    # --- waiting ---------------------------------------------------------------------------------
    def notify(self) -> None:
        self._gap = IDLE_MIN
        super().notify()

    async def wait_for_tasks(self, timeout: float) -> None:
        """Return on ``notify`` (work enqueued here), when a delayed task this process knows of
        falls due, or after ``timeout``. After a timeout the next ``claim`` answers from a shard
        read younger than the idle gap (0.05 s after work, doubling to ``IDLE_MAX``) without
        asking the store again: an idle worker reads its shard at most every ``IDLE_MAX``
        seconds, however often its loop looks."""
        dues = [d for v in self._views.values() if (d := sh.next_due(v.shard)) is not None]
        due = min(dues) if dues else None
        if due is not None:
            timeout = min(timeout, max(due - time.time(), 0.0))
        if not self._wakeup.is_set():
            with anyio.move_on_after(timeout):
                await self._wakeup.wait()
        woke = self._wakeup.is_set()
        self._wakeup = anyio.Event()
        self._idle = not woke and (due is None or due > time.time())


__all__ = ["BucketQueueBackend", "split_shards"]
