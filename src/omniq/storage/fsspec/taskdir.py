"""The file:// task queue's files: one file per task, whose directory is its status and whose
name carries the fields that change (``TaskDir``)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection, Sequence

import msgspec

from ...errors import ConfigError
from ...ids import new_id, new_ids
from ...lifecycle import (
    Cascade,
    claim_order,
    claimable,
    expires,
    fired,
    lease_lapsed,
    on_dependency_end,
    on_lapse,
    ready_status,
    slot_fires,
)
from ...logs import get_logger
from ...models import Schedule, Task, TaskStatus
from .._codec import encode
from ..base import UNSUCCESSFUL, Finished, Overrun, Reaped, WorkerInfo, readable_workers
from ..enqueue import keyed, plan_enqueue, plan_keys
from ..rows import stand_in_task
from .files import (
    read_file,
    write_atomic,
)
from .keys import KeyMarks
from .layout import (
    decode_name,
    encode_name,
)
from .schedules import ScheduleFiles
from .taskfiles import (
    FINALS,
    Slot,
    TaskFiles,
    TaskLoc,
    TaskRecord,
    listdir,
    rmtree,
    touch,
    unlink,
)

log = get_logger("omniq.storage.fsspec")

_MAX_TASK_NAME = 100  # encoded task id characters in a file:// queue (names stay < 255 bytes)


class TaskDir(TaskFiles):
    """The task queue's files under ``<root>/tasks`` (synchronous; the backend runs each call
    in a worker thread). Layout::

        queued/<queue>/<slot>.msgpack        QUEUED; claim renames into running/<worker>/
        pending/<queue>/<slot>.msgpack       PENDING (eta, dependencies); claim promotes when due
        running/<worker>/<slot>.msgpack      RUNNING; the lease is in the name (extend renames)
        done/<status>/<task id>.msgpack      final, finish time in the mtime; one stat finds it
        deps/<dependency id>/<task id>       who waits on whom, resolved when the dependency ends
        cancel/<task id>                     a cancel request for a running task
        staged/<schedule>@<task id>.msgpack  a schedule's task between its compare-and-set and
                                             its enqueue (reap finishes the job after a crash)
        schedules/<schedule id>/v<N>.msgpack versions; compare-and-set = os.link of v<N+1>
        keys/<key>/v<N>                      idempotency key markers: msgpack [task id, time];
                                             the newest names the key's latest task; a new
                                             version is made with O_EXCL (compare-and-set)
        workers/<worker>.msgpack             heartbeats

    Every status change is ``os.rename`` of the one file that is the task, so two processes can
    never both claim, cancel or reap it: the loser's rename finds no source. No locks, so it
    works on NFS too. Writes are temp file + rename, so a crash leaves no partial file.
    """

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.key_marks = KeyMarks(self.keys, self)
        self.schedules = ScheduleFiles(self.scheds)

    # --- enqueue ------------------------------------------------------------------------------------
    def enqueue(self, tasks: Sequence[Task]) -> tuple[bool, dict[str, str]]:
        """Store a checked batch: (some task is ready to claim at once, {duplicate id: holder
        id} for tasks whose key another task holds, which are not stored)."""
        now = time.time()
        for t in tasks:
            if len(encode_name(t.id)) > _MAX_TASK_NAME:
                raise ConfigError(
                    f"task id {t.id[:40]!r}... is too long for a file:// queue "
                    f"(at most {_MAX_TASK_NAME} characters once percent-encoded)"
                )
        existing = self._existing({t.id for t in tasks})
        taken = [t.id for t in tasks if t.id in existing]
        if taken:
            raise ConfigError(f"task id {taken[0]!r} already exists")
        dups: dict[str, str] = {}
        if keyed(tasks):
            holders, gone = self.key_marks.claim(tasks, now)
            tasks, dups = plan_keys(tasks, holders, gone)
            if not tasks:
                return False, dups
        batch = {t.id for t in tasks}
        outside = {d for t in tasks for d in t.depends_on} - batch
        found = self.locate(outside)
        plans = plan_enqueue(tasks, {d: found[d].status for d in outside if d in found})
        ready = False
        recheck: list[tuple[str, Task]] = []
        for task, seq, (status, waiting) in zip(tasks, new_ids(len(tasks)), plans, strict=True):
            rec = TaskRecord(seq, task)
            self._queue_of[task.id] = task.queue
            for d in waiting:  # before the task file: see _cascade
                touch(os.path.join(self.deps, encode_name(d), encode_name(task.id)))
            if status is TaskStatus.CANCELLED:
                self._write_final(self._done_path(status, task.id), rec, now, status=status)
                continue
            if waiting:
                self._deps_of[task.id] = tuple(waiting)
            slot = Slot(
                task.priority,
                seq,
                task.deliveries,
                task.attempts,
                task.created_at,
                task.expires_at,
                task.eta,
                None,
                len(waiting),
                task.id,
            )
            path = self._slot_path(status, task.queue, slot)
            self._write_rec(path, rec)
            ready = ready or status is TaskStatus.QUEUED
            if any(d in outside for d in waiting):
                recheck.append((path, task))
        # A dependency that ended badly between our look and our write may not have seen this
        # task's deps/ entry; enqueue cancels such a task itself (as for a known failure).
        for path, task in recheck:
            if any(self._final_status(d) in UNSUCCESSFUL for d in task.depends_on):
                stored = self._read_rec(path)
                if stored is not None:
                    self._end(
                        TaskLoc(TaskStatus.PENDING, path, None), stored, TaskStatus.CANCELLED, now
                    )
        return ready, dups

    # --- claim ----------------------------------------------------------------------------------------
    def _deps_done(self, loc: TaskLoc) -> bool:
        assert loc.slot is not None
        tid = loc.slot.task_id
        deps = self._deps_of.get(tid)
        if deps is None:
            rec = self._read_rec(loc.path)
            if rec is None:
                return False
            deps = self._deps_of[tid] = tuple(rec.task.depends_on)
        return all(os.path.exists(self._done_path(TaskStatus.SUCCEEDED, d)) for d in deps)

    def _claimable(self, loc: TaskLoc, now: float) -> bool:
        """The lifecycle's claim rule for a QUEUED or PENDING file (dependencies are looked up
        only for a PENDING task that could otherwise run)."""
        s = loc.slot
        assert s is not None
        if not claimable(loc.status, eta=s.eta, expires_at=s.expires_at, waiting=False, now=now):
            return False
        return loc.status is TaskStatus.QUEUED or not s.ndeps or self._deps_done(loc)

    def _promote(self, queues: Sequence[str] | None, now: float) -> None:
        """PENDING tasks whose eta came and whose dependencies succeeded become QUEUED."""
        for tid, loc in self._scan(TaskStatus.PENDING, queues).items():
            s = loc.slot
            assert s is not None
            if not self._claimable(loc, now):
                continue
            queue = self._queue_of.get(tid) or decode_name(
                os.path.basename(os.path.dirname(loc.path))
            )
            self._move(loc.path, self._slot_path(TaskStatus.QUEUED, queue, s._replace(ndeps=0)))

    def claimable(self, queues: Sequence[str] | None, now: float) -> bool:
        """Whether ``claim`` would find something (for polling across processes)."""
        return any(
            self._claimable(loc, now)
            for status in (TaskStatus.QUEUED, TaskStatus.PENDING)
            for loc in self._scan(status, queues).values()
        )

    def claim(
        self, worker: str, queues: Sequence[str] | None, limit: int, lease: float, now: float
    ) -> list[Task]:
        self._promote(queues, now)
        cands = sorted(
            (
                (claim_order(loc.slot.priority, loc.slot.seq), loc)
                for loc in self._scan(TaskStatus.QUEUED, queues).values()
                if loc.slot is not None and self._claimable(loc, now)
            ),
            key=lambda c: c[0],
        )
        wdir = os.path.join(self.running, encode_name(worker))
        out: list[Task] = []
        for _, loc in cands:
            if len(out) >= limit:
                break
            assert loc.slot is not None
            new = loc.slot._replace(deliveries=loc.slot.deliveries + 1, lease_until=now + lease)
            dst = os.path.join(wdir, new.render())
            if not self._move(loc.path, dst):
                continue  # another worker won it
            held = TaskLoc(TaskStatus.RUNNING, dst, new, worker)
            errors: list[Exception] = []
            rec = self._read_rec(dst, errors)
            if rec is None and errors:
                # unreadable (logged): a stand-in that fails when run, saying why, so the task
                # ends with a TaskResult and the rest of the batch goes on
                queue = decode_name(os.path.basename(os.path.dirname(loc.path)))
                task = stand_in_task(
                    new.task_id, errors[0], queue=queue, priority=new.priority,
                    created_at=new.created_at,
                )
                rec = TaskRecord(new.seq, task)
                self._write_rec(dst, rec)
            if rec is None:  # gone under us: fail it rather than meet it again forever
                self._move(dst, self._done_path(TaskStatus.FAILED, new.task_id))
                continue
            out.append(self._task(held, rec))
        return out

    # --- ends of a lease and their consequences -------------------------------------------------------
    def finish(
        self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], now: float
    ) -> Finished:
        held = self._held(worker)
        ended: list[tuple[str, TaskStatus]] = []
        for tid, status in outcomes:
            loc = held.get(tid)
            rec = self._read_rec(loc.path) if loc is not None else None
            if loc is None or rec is None:
                continue  # not (or no longer) this worker's
            if self._end(loc, rec, status, now, worker=worker) is not None:
                unlink(self._cancel_path(tid))
                ended.append((tid, status))
        return self._cascade(ended, now)

    def _cascade(self, ended: Sequence[tuple[str, TaskStatus]], now: float) -> Finished:
        """Release or cancel (transitively) the tasks waiting on tasks that just ended."""
        fin = Finished()
        todo = list(ended)
        pending: dict[str, TaskLoc] | None = None
        while todo:
            dep, dep_status = todo.pop(0)
            ddir = os.path.join(self.deps, encode_name(dep))
            names = listdir(ddir)
            if names and pending is None:
                pending = self._scan(TaskStatus.PENDING)
            for name in names:
                assert pending is not None
                did = decode_name(name)
                loc = pending.get(did)
                rec = self._read_rec(loc.path) if loc is not None else None
                if loc is None or loc.slot is None or rec is None:
                    continue  # not waiting (any more); an enqueue in flight checks for itself
                others_left = dep_status is TaskStatus.SUCCEEDED and not self._deps_done(loc)
                fate = on_dependency_end(dep_status, others_left=others_left)
                if fate is Cascade.CANCEL:
                    task = self._end(loc, rec, TaskStatus.CANCELLED, now)
                    if task is not None:
                        del pending[did]
                        fin.cancelled.append((task, dep))
                        todo.append((did, TaskStatus.CANCELLED))
                    continue
                if fate is not Cascade.RELEASE:
                    continue
                s = loc.slot._replace(ndeps=0)
                status = ready_status(s.eta, now)
                dst = self._slot_path(status, rec.task.queue, s)
                if self._move(loc.path, dst):
                    del pending[did]
                    fin.released.append(self._task(TaskLoc(status, dst, s), rec))
            rmtree(ddir)
        return fin

    def retry(self, worker: str, task_id: str, eta: float, attempts: int) -> bool:
        """True when the task is QUEUED again at once (``retry`` has no ``now``: the wall clock
        decides, as in the other backends)."""
        loc = self._held(worker).get(task_id)
        rec = self._read_rec(loc.path) if loc is not None else None
        if loc is None or loc.slot is None or rec is None:
            return False
        slot = loc.slot._replace(attempts=attempts, eta=eta, lease_until=None, ndeps=0)
        status = ready_status(eta, time.time())
        moved = self._move(loc.path, self._slot_path(status, rec.task.queue, slot))
        return moved and status is TaskStatus.QUEUED

    def release(self, worker: str, task_ids: Sequence[str]) -> bool:
        held = self._held(worker)
        moved = False
        for tid in task_ids:
            loc = held.get(tid)
            rec = self._read_rec(loc.path) if loc is not None else None
            if loc is None or loc.slot is None or rec is None:
                continue
            slot = loc.slot._replace(deliveries=max(0, loc.slot.deliveries - 1), lease_until=None)
            moved |= self._move(loc.path, self._slot_path(TaskStatus.QUEUED, rec.task.queue, slot))
        return moved

    def extend(self, worker: str, task_ids: Sequence[str], lease_until: float) -> None:
        held = self._held(worker)
        for tid in task_ids:
            loc = held.get(tid)
            if loc is None or loc.slot is None:
                continue
            new = loc.slot._replace(lease_until=lease_until)
            self._move(loc.path, os.path.join(os.path.dirname(loc.path), new.render()))

    def overrun(self, now: float, limit: int) -> list[Overrun]:
        lapsed = sorted(
            (loc for loc in self._scan(TaskStatus.RUNNING).values()
             if loc.slot is not None and lease_lapsed(loc.slot.lease_until, now)),
            key=lambda loc: loc.slot.lease_until if loc.slot and loc.slot.lease_until else 0.0,
        )[:limit]
        return [
            Overrun(task_id=loc.slot.task_id, queue=self._queue(loc.slot.task_id, loc.path) or "default",
                    worker=loc.worker, lease_until=loc.slot.lease_until or 0.0)
            for loc in lapsed if loc.slot is not None
        ]

    def reap(self, now: float) -> Reaped:
        out = Reaped(requeued=[], dead=[], cancelled=[])
        ended: list[tuple[str, TaskStatus]] = []
        lapsed = sorted(
            (
                loc
                for loc in self._scan(TaskStatus.RUNNING).values()
                if loc.slot is not None and lease_lapsed(loc.slot.lease_until, now)
            ),
            key=lambda loc: loc.slot.seq if loc.slot else "",
        )
        for loc in lapsed:
            s = loc.slot
            rec = self._read_rec(loc.path)
            if s is None or rec is None:
                continue
            tid = s.task_id
            fate = on_lapse(
                cancel_requested=os.path.exists(self._cancel_path(tid)),
                deliveries=s.deliveries,
                max_deliveries=rec.task.max_deliveries,
            )
            if fate is TaskStatus.CANCELLED:
                task = self._end(loc, rec, TaskStatus.CANCELLED, now, worker=loc.worker)
                if task is not None:
                    unlink(self._cancel_path(tid))
                    out.cancelled.append((task, tid))
                    ended.append((tid, TaskStatus.CANCELLED))
            elif fate is TaskStatus.QUEUED:
                slot = s._replace(lease_until=None)
                dst = self._slot_path(TaskStatus.QUEUED, rec.task.queue, slot)
                if self._move(loc.path, dst):
                    out.requeued.append(self._task(TaskLoc(TaskStatus.QUEUED, dst, slot), rec))
            else:
                task = self._end(loc, rec, TaskStatus.FAILED, now, worker=loc.worker)
                if task is not None:
                    out.dead.append(task)
                    ended.append((tid, TaskStatus.FAILED))
        out.cancelled.extend(self._cascade(ended, now).cancelled)
        self._recover_staged(now)
        return out

    def expire(self, now: float) -> list[Task]:
        found = [
            loc
            for st in (TaskStatus.QUEUED, TaskStatus.PENDING)
            for loc in self._scan(st).values()
            if loc.slot is not None and expires(st, loc.slot.expires_at, now)
        ]
        found.sort(key=lambda loc: loc.slot.seq if loc.slot else "")
        out: list[Task] = []
        for loc in found:
            rec = self._read_rec(loc.path)
            task = self._end(loc, rec, TaskStatus.EXPIRED, now) if rec is not None else None
            if task is not None:
                out.append(task)
        cascade = self._cascade([(t.id, TaskStatus.EXPIRED) for t in out], now)
        return out + [t for t, _ in cascade.cancelled]

    def cancel(self, task_ids: Sequence[str], now: float) -> dict[str, TaskStatus]:
        out: dict[str, TaskStatus] = {}
        ended: list[tuple[str, TaskStatus]] = []
        todo = list(dict.fromkeys(task_ids))
        for _ in range(5):  # a task claimed under our feet is looked up again
            if not todo:
                break
            locs = self.locate(todo)
            todo = []
            for tid, loc in locs.items():
                if loc.status in (TaskStatus.QUEUED, TaskStatus.PENDING):
                    rec = self._read_rec(loc.path)
                    task = self._end(loc, rec, TaskStatus.CANCELLED, now) if rec else None
                    if task is None:
                        todo.append(tid)
                        continue
                    ended.append((tid, TaskStatus.CANCELLED))
                elif loc.status is TaskStatus.RUNNING:
                    touch(self._cancel_path(tid))
                out.setdefault(tid, loc.status)
        for t, _ in self._cascade(ended, now).cancelled:
            out[t.id] = TaskStatus.PENDING
        return out

    # --- reads ----------------------------------------------------------------------------------------
    def get_task(self, task_id: str) -> Task | None:
        for _ in range(3):
            loc = self.locate([task_id]).get(task_id)
            if loc is None:
                return None
            rec = self._read_rec(loc.path)
            if rec is not None:
                return self._task(loc, rec)
        return None

    def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        return {tid: loc.status for tid, loc in self.locate(task_ids).items()}

    def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        running = self._scan(TaskStatus.RUNNING)
        return [t for t in task_ids if t in running and os.path.exists(self._cancel_path(t))]

    def _queue(self, task_id: str, path: str) -> str | None:
        q = self._queue_of.get(task_id)
        if q is None:
            rec = self._read_rec(path)
            q = rec.task.queue if rec is not None else None
        return q

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}

        def add(queue: str | None, status: TaskStatus, n: int = 1) -> None:
            if queue is not None and n:
                per = out.setdefault(queue, {})
                per[status.value] = per.get(status.value, 0) + n

        for st, area in ((TaskStatus.QUEUED, self.queued), (TaskStatus.PENDING, self.pending)):
            for q in listdir(area):
                n = sum(1 for name in listdir(os.path.join(area, q)) if Slot.parse(name))
                add(decode_name(q), st, n)
        for tid, loc in self._scan(TaskStatus.RUNNING).items():
            add(self._queue(tid, loc.path), TaskStatus.RUNNING)
        for st in FINALS:
            sdir = os.path.join(self.done, st.value)
            for name in listdir(sdir):
                if name.endswith(".msgpack"):
                    tid = decode_name(name[: -len(".msgpack")])
                    add(self._queue(tid, os.path.join(sdir, name)), st)
        return out

    def oldest_queued(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for q in listdir(self.queued):
            slots = [s for n in listdir(os.path.join(self.queued, q)) if (s := Slot.parse(n))]
            if slots:
                out[decode_name(q)] = min(s.created_at for s in slots)
        return out

    def requeue(self, task_id: str, attempts: int) -> TaskStatus | None:
        """A final unsuccessful task back to ``queued/`` under its id. Its done file is first
        renamed to a hidden name (one of racing callers wins), rewritten without its spent
        ttl (not sealed), then renamed into the queue with a fresh slot."""
        st = self._final_status(task_id)
        if st is None:
            loc = self.locate([task_id]).get(task_id)
            return None if loc is None else loc.status
        if st not in UNSUCCESSFUL:
            return st
        src = self._done_path(st, task_id)
        hidden = os.path.join(os.path.dirname(src), "." + os.path.basename(src) + ".requeue")
        if not self._move(src, hidden):
            return self.statuses([task_id]).get(task_id)  # someone else moved it first
        rec = self._read_rec(hidden)
        if rec is None:  # unreadable: put it back as it was
            self._move(hidden, src)
            return st
        t = msgspec.structs.replace(rec.task, status=TaskStatus.QUEUED, expires_at=None, eta=None,
                                    worker=None, lease_until=None, cancel_requested=False,
                                    deliveries=0, attempts=attempts)
        self._write_rec(hidden, TaskRecord(rec.seq, t))
        unlink(self._cancel_path(task_id))
        slot = Slot(t.priority, rec.seq, 0, attempts, t.created_at, None, None, None, 0, task_id)
        self._move(hidden, self._slot_path(TaskStatus.QUEUED, t.queue, slot))
        return st

    def purge(self, before: float, statuses: Collection[TaskStatus] | None = None) -> list[str]:
        gone: list[str] = []
        for st in FINALS:
            if statuses is not None and st not in statuses:
                continue
            try:
                entries = list(os.scandir(os.path.join(self.done, st.value)))
            except FileNotFoundError:
                continue
            for e in entries:
                if e.name.startswith(".") or not e.name.endswith(".msgpack"):
                    continue
                try:
                    if e.stat().st_mtime >= before:
                        continue
                except FileNotFoundError:
                    continue
                rec = self._read_rec(e.path)
                if unlink(e.path):
                    tid = decode_name(e.name[: -len(".msgpack")])
                    gone.append(tid)
                    if rec is not None and rec.task.key is not None:
                        self.key_marks.forget(rec.task.key, tid, st, time.time())
                    unlink(self._cancel_path(tid))
                    rmtree(os.path.join(self.deps, encode_name(tid)))
                    self._queue_of.pop(tid, None)
                    self._deps_of.pop(tid, None)
        return gone

    # --- schedules ------------------------------------------------------------------------------------
    def add_schedule(self, schedule: Schedule) -> None:
        self.schedules.add(schedule)

    def get_schedules(self) -> list[Schedule]:
        return self.schedules.all()

    def set_schedule_paused(self, schedule_id: str, paused: bool, next_run: float | None) -> bool:
        return self.schedules.set_paused(schedule_id, paused, next_run)

    def delete_schedule(self, schedule_id: str) -> bool:
        return self.schedules.delete(schedule_id)

    def fire_schedule(
        self,
        schedule_id: str,
        expected_next_run: float,
        next_run: float | None,
        now: float,
        task: Task,
    ) -> tuple[bool, bool]:
        """(won the slot, the task is ready to claim)."""
        sdir = self.schedules.dir(schedule_id)
        cur = self.schedules.current(sdir)
        if cur is None:
            return False, False
        v, s = cur
        if not slot_fires(s, expected_next_run):
            return False, False
        if self._existing({task.id}):
            raise ConfigError(f"task id {task.id!r} already exists")
        # The task is staged first, so a crash between winning the slot and enqueueing loses
        # nothing: reap finds the staged file and finishes the job.
        staged = os.path.join(
            self.staged, f"{encode_name(schedule_id)}@{encode_name(task.id)}.msgpack"
        )
        rec = TaskRecord(new_id(), task)
        self._write_rec(staged, rec)
        new = fired(s, next_run=next_run, now=now, task_id=task.id)
        if not self.schedules.cas(sdir, v, new):
            unlink(staged)
            return False, False
        return True, self._commit_staged(staged, rec)

    def _commit_staged(self, staged: str, rec: TaskRecord) -> bool:
        t = rec.task
        self._queue_of[t.id] = t.queue
        [(status, _)] = plan_enqueue([msgspec.structs.replace(t, depends_on=())], {})
        slot = Slot(
            t.priority,
            rec.seq,
            t.deliveries,
            t.attempts,
            t.created_at,
            t.expires_at,
            t.eta,
            None,
            0,
            t.id,
        )
        return self._move(staged, self._slot_path(status, t.queue, slot)) and (
            status is TaskStatus.QUEUED
        )

    def _recover_staged(self, now: float) -> None:
        for name in listdir(self.staged):
            path = os.path.join(self.staged, name)
            try:
                if os.stat(path).st_mtime > time.time() - 300:
                    continue  # its firing may still be under way
            except FileNotFoundError:
                continue
            sid = name.rpartition("@")[0]
            rec = self._read_rec(path)
            cur = self.schedules.current(self.schedules.dir(decode_name(sid))) if sid else None
            if rec is not None and cur is not None and cur[1].last_task_id == rec.task.id:
                log.warning("enqueueing task %s of schedule %s after a crash", rec.task.id, sid)
                self._commit_staged(path, rec)
            else:
                unlink(path)

    # --- workers --------------------------------------------------------------------------------------
    def heartbeat(self, info: WorkerInfo) -> None:
        path = os.path.join(self.workers_dir, encode_name(info.id) + ".msgpack")
        write_atomic(path, encode(info), fsync=False)

    def remove_worker(self, worker_id: str) -> None:
        unlink(os.path.join(self.workers_dir, encode_name(worker_id) + ".msgpack"))
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(self.running, encode_name(worker_id)))

    def workers(self) -> list[WorkerInfo]:
        found = [(n, read_file(os.path.join(self.workers_dir, n))) for n in listdir(self.workers_dir)]
        return readable_workers([(n, data) for n, data in found if data is not None], log)
