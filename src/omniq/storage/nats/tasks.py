"""Task records: reading and compare-and-set writing them, their indexes, wake-ups, enqueue
(idempotency keys included), the dependency cascade and the read-only queries."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from copy import copy

import nats.errors
import nats.js.errors
import nats.js.object_store
from nats.aio.msg import Msg
from nats.js import api

from ...errors import ConfigError
from ...lifecycle import (
    CANCELLED,
    PENDING,
    QUEUED,
    RUNNING,
    Cascade,
    on_dependency_end,
    ready_status,
)
from ...logs import get_logger
from ...models import Task, TaskStatus
from .._codec import encode
from ..base import Finished, TaskQueue
from ..checks import REQUEUABLE, check_new_tasks, in_page
from ..enqueue import (
    KeyMark,
    KeyVerdict,
    first_of_keys,
    key_marker_needs_result,
    key_marker_verdict,
    keyed,
    plan_enqueue,
    plan_keys,
)
from ..rows import stand_in_task
from .connection import (
    JetStream,
)
from .guard import (
    ATTEMPT,
    TRANSIENT,
    gather,
    guarded,
    publish_quietly,
)
from .records import (
    EXPECT_LAST,
    KV_OPERATION,
    UNREADABLE,
    WRONG_LAST_SEQUENCE,
    Rec,
    decode_keymark,
    decode_rec,
    due_bucket,
    end_record,
    index_kind,
    lost_cas,
    token,
    whole_second,
)

log = get_logger("omniq.storage.nats")

class NatsTaskRecords(JetStream, TaskQueue):
    """Task records on the connection: everything but leases (``leases.py``)."""

    cross_process_wakeups = True

    # --- task records -----------------------------------------------------------------------------------
    async def _get_rec(self, task_id: str) -> tuple[int, Rec] | None:
        m = await self._get_last(f"KV_{self.tasks_bucket}", self._task_subject(task_id))
        if m is None:
            return None
        try:
            return m.seq, decode_rec(m.data)
        except Exception as exc:  # any: a record nested too deep raises RecursionError
            log.error("unreadable task record %s (%d bytes): %s", task_id, len(m.data),
                      type(exc).__name__)
            # a stand-in that fails when run, saying why; a claimer points it at its index
            # message (index_seq), so it is claimed, written over and ends with a TaskResult
            return m.seq, Rec(task=stand_in_task(task_id, exc), index_seq=UNREADABLE)

    async def _get_recs(self, task_ids: Iterable[str]) -> dict[str, tuple[int, Rec]]:
        ids = list(dict.fromkeys(task_ids))
        got = await gather(self._get_rec(i) for i in ids)
        return {i: g for i, g in zip(ids, got, strict=True) if g is not None}

    def _index_item(self, rec: Rec, kind: str) -> tuple[str, bytes, None]:
        t = rec.task
        if kind == "ready":
            subject = f"{self._p}.ix.q.r.{t.priority}.{token(t.queue)}"
        else:
            subject = f"{self._p}.ix.q.d.{due_bucket(t.eta or 0.0)}"
        return subject, t.id.encode(), None

    async def _transition(
        self,
        task_id: str,
        change: Callable[[Rec], str | None],
        cached: tuple[int, Rec] | None = None,
    ) -> tuple[int, Rec] | None:
        """Read-modify-write one record by compare-and-set, retried until it holds.

        ``change`` edits the record and says what to write: None (nothing), ``""`` (just the
        record), ``"ready"``/``"due"`` (the record, pointed at a new index message published
        first). It may run more than once, on fresh copies. Returns the written revision+record.
        """
        while True:
            got = cached if cached is not None else await self._get_rec(task_id)
            cached = None
            if got is None:
                return None
            rev, rec = got
            rec = decode_rec(encode(rec))  # a private copy: a retry starts from stored state
            need = change(rec)
            if need is None:
                return None
            seq = 0
            if need:
                [seq] = await self._publish_ok([self._index_item(rec, need)])
                rec.index_seq = seq
            new_rev = await self._cas(self._task_subject(task_id), encode(rec), rev)
            if new_rev is not None:
                return new_rev, rec
            if seq:
                await self._delete_index([seq])  # an orphan now: the record never pointed at it

    # --- wake-ups ---------------------------------------------------------------------------------------
    def _wake(self, eta: float | None = None) -> None:
        """Tell every connected backend (this one too) that work may be ready (at ``eta``)."""
        if eta is None:
            self.notify()
        else:
            self._due_at(eta)
        nc = self._nc
        if nc is None:
            return
        data = b"" if eta is None else repr(eta).encode()
        job = asyncio.ensure_future(publish_quietly(nc, f"{self._p}.wake", data))
        self._jobs.add(job)  # keep a reference until done (the loop holds only weak ones)
        job.add_done_callback(self._jobs.discard)

    async def _on_wake(self, msg: Msg) -> None:
        if msg.data:
            try:
                self._due_at(float(msg.data))
            except ValueError:
                self._wakeup.set()
        else:
            self._wakeup.set()

    def _due_at(self, eta: float) -> None:
        """Waiters here wake for any eta (re-timing their sleep), not only the earliest."""
        self._note_due(eta)
        self._wakeup.set()

    # --- tasks ------------------------------------------------------------------------------------------
    @guarded
    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        if not tasks:
            return {}
        return await self._insert(tasks, time.time())

    def _key_subject(self, key: str) -> str:
        tok = token(key)
        if len(tok) > 200:  # a long key: its digest (the marker names the task, not the key)
            tok = "~" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"$KV.{self.meta_bucket}.k.{tok}"

    async def _claim_keys(
        self, tasks: Sequence[Task], now: float
    ) -> tuple[dict[str, str], list[str], dict[str, int]]:
        """Point each key of the batch at its first task by compare-and-set on its marker,
        unless another task holds it: (key -> holder, for keys held; holders known only by a
        stored success; key -> revision of the markers written here).

        What a marker found means is ``enqueue.key_marker_verdict``'s to say (a marker is written
        before its task's record, so one without a record may be a write in progress)."""
        first = first_of_keys(tasks)
        holders: dict[str, str] = {}
        gone: list[str] = []
        written: dict[str, int] = {}
        stream = f"KV_{self.meta_bucket}"

        async def one(key: str, tid: str) -> None:
            subject = self._key_subject(key)
            delay = 0.005
            while True:
                m = await self._get_last(stream, subject)
                rev = 0 if m is None else m.seq
                if m is not None:
                    mark = decode_keymark(m.data)
                    status: TaskStatus | None = None
                    if mark.task and mark.task != tid:
                        got = await self._get_rec(mark.task)
                        status = None if got is None else got[1].task.status
                    stored = False
                    if key_marker_needs_result(mark, status, self.results_here):
                        r = await self._get_result(mark.task)
                        stored = r is not None and r.status is TaskStatus.SUCCEEDED
                    verdict = key_marker_verdict(
                        mark, mark.at, mine=tid, status=status, succeeded_result=stored,
                        results_here=self.results_here, now=time.time(),
                    )
                    if verdict is KeyVerdict.OURS:
                        written[key] = m.seq  # ours (an earlier attempt of this call)
                        return
                    if verdict is KeyVerdict.HELD or verdict is KeyVerdict.HELD_GONE:
                        holders[key] = mark.task
                        if verdict is KeyVerdict.HELD_GONE:
                            gone.append(mark.task)
                        return
                    if verdict is KeyVerdict.WAIT:
                        await asyncio.sleep(delay)  # its task may be being stored
                        delay = min(delay * 2, 0.1)
                        continue
                seq = await self._cas(subject, encode(KeyMark(tid, now)), rev)
                if seq is not None:
                    written[key] = seq
                    return

        await gather(one(k, tid) for k, tid in first.items())
        return holders, gone, written

    async def _free_keys(self, written: Mapping[str, int], now: float) -> None:
        """Best effort, after a failed enqueue: markers written here point at no task; free them
        (a marker someone replaced meanwhile is left alone)."""
        with contextlib.suppress(Exception):
            await gather(
                self._cas(self._key_subject(k), encode(KeyMark("", now)), seq)
                for k, seq in written.items()
            )

    async def _forget_keys(self, recs: Sequence[Rec], now: float) -> None:
        """``purge`` removed these records: mark their keys free (or held while a stored success
        lasts), unless someone re-keyed them meanwhile."""
        stream = f"KV_{self.meta_bucket}"

        async def one(rec: Rec) -> None:
            assert rec.task.key is not None
            subject = self._key_subject(rec.task.key)
            m = await self._get_last(stream, subject)
            if m is None or decode_keymark(m.data).task != rec.task.id:
                return
            ok = rec.task.status is TaskStatus.SUCCEEDED
            mark = KeyMark(rec.task.id if ok else "", now, purged=ok)
            await self._cas(subject, encode(mark), m.seq)

        await gather(one(r) for r in recs if r.task.key is not None)

    async def _insert(self, tasks: Sequence[Task], now: float) -> dict[str, str]:
        """Store a validated batch: key markers, index messages, then records created only if
        absent. Returns the duplicates of held keys (see ``TaskQueue.enqueue``)."""
        dups: dict[str, str] = {}
        written: dict[str, int] = {}
        if keyed(tasks):
            holders, gone, written = await self._claim_keys(tasks, now)
            tasks, dups = plan_keys(tasks, holders, gone)
            if not tasks:
                return dups
        try:
            await self._insert_records(tasks, now)
        except BaseException as e:
            if written and not isinstance(e, TRANSIENT):  # (a transient one runs again)
                await self._free_keys(written, now)
            raise
        return dups

    async def _insert_records(self, tasks: Sequence[Task], now: float) -> None:
        """Store a validated batch: index messages first, then records created only if absent."""
        batch = {t.id for t in tasks}
        outside = {d for t in tasks for d in t.depends_on if d not in batch}
        known = {i: r.task.status for i, (_, r) in (await self._get_recs(outside)).items()}
        plans = plan_enqueue(tasks, known)
        recs: list[Rec] = []
        for given, (status, waiting) in zip(tasks, plans, strict=True):
            t = copy(given)
            t.status = status
            recs.append(
                Rec(
                    task=t, waiting=list(waiting), finished_at=now if status is CANCELLED else None
                )
            )
        indexed = [(r, k) for r in recs if (k := index_kind(r))]
        seqs = await self._publish_ok([self._index_item(r, k) for r, k in indexed])
        for (r, _), seq in zip(indexed, seqs, strict=True):
            r.index_seq = seq
        acks: list[api.PubAck | BaseException | None] = list(
            await self._publish(
                [(self._task_subject(r.task.id), encode(r), {EXPECT_LAST: "0"}) for r in recs]
            )
        )
        failed = [(r, a) for r, a in zip(recs, acks, strict=True) if isinstance(a, BaseException)]
        if failed and ATTEMPT.get() > 0:
            mine = await self._stored_before([r for r, a in failed if lost_cas(a)])
            failed = [(r, a) for r, a in failed if r.task.id not in mine]
            acks = [a if r.task.id not in mine else None for r, a in zip(recs, acks, strict=True)]
        if failed:
            lost = next((a for _, a in failed if isinstance(a, TRANSIENT)), None)
            if lost is not None:  # the call runs again, and takes what was stored as its own:
                raise lost  # so leave it all in place (a record may exist without its ack)
            created = [
                r
                for r, a in zip(recs, acks, strict=True)
                if a is not None and not isinstance(a, BaseException)
            ]
            await gather(
                self._purge(f"KV_{self.tasks_bucket}", self._task_subject(r.task.id))
                for r in created
            )
            await self._delete_index(seqs)
            rec, error = failed[0]
            if isinstance(error, nats.js.errors.APIError) and error.err_code in WRONG_LAST_SEQUENCE:
                raise ConfigError(f"task id {rec.task.id!r} already exists")
            raise error
        expiring = [
            (f"{self._p}.ix.x.{whole_second(r.task.expires_at)}", r.task.id.encode(), None)
            for r in recs
            if r.task.expires_at is not None and not r.task.status.is_final
        ]
        await self._publish_ok(expiring)
        await self._register_dependents(recs, now)
        if any(k == "ready" for _, k in indexed):
            self._wake()
        etas = [r.task.eta for r, k in indexed if k == "due" and r.task.eta is not None]
        if etas:
            self._wake(min(etas))

    async def _stored_before(self, recs: Sequence[Rec]) -> set[str]:
        """Ids of ``recs`` already stored as these very tasks (same payload and creation time):
        an earlier attempt of this enqueue wrote them, then lost its reply."""
        stored = await self._get_recs(r.task.id for r in recs)
        return {
            r.task.id
            for r in recs
            if (got := stored.get(r.task.id)) is not None
            and got[1].task.payload == r.task.payload
            and got[1].task.created_at == r.task.created_at
        }

    async def _register_dependents(self, recs: Sequence[Rec], now: float) -> None:
        """Link waiting tasks to their dependencies; settle them if a dependency ended first."""
        children: dict[str, list[str]] = {}
        for r in recs:
            for d in r.waiting:
                children.setdefault(d, []).append(r.task.id)
        if not children:
            return

        async def link(dep: str, kids: list[str]) -> None:
            ended: list[TaskStatus] = []

            def add(rec: Rec) -> str | None:
                if rec.task.status.is_final:
                    ended.append(rec.task.status)
                    return None
                rec.dependents.extend(k for k in kids if k not in rec.dependents)
                return ""

            await self._transition(dep, add)
            if ended:  # it ended between our look and the link: settle the children ourselves
                for kid in kids:
                    if ended[-1] is TaskStatus.SUCCEEDED:
                        await self._dep_succeeded(kid, dep, now)
                    else:
                        got = await self._dep_failed(kid, dep, now)
                        if got is not None:
                            await self._resolve([got], now)

        await gather(link(d, kids) for d, kids in children.items())

    async def _dep_succeeded(self, child: str, dep: str, now: float) -> Task | None:
        """``dep`` succeeded: the child waits for one fewer; returns it if it waits no more."""
        released: list[bool] = []

        def change(rec: Rec) -> str | None:
            released.clear()
            if rec.task.status is not PENDING or dep not in rec.waiting:
                return None
            rec.waiting.remove(dep)
            fate = on_dependency_end(TaskStatus.SUCCEEDED, others_left=bool(rec.waiting))
            if fate is not Cascade.RELEASE:
                return ""
            released.append(True)
            if ready_status(rec.task.eta, now) is QUEUED:
                rec.task.status = QUEUED
                return "ready"
            return "due"

        got = await self._transition(child, change)
        if got is None or not released:
            return None
        t = got[1].task
        if t.status is QUEUED:
            self._wake()
        elif t.eta is not None:
            self._wake(t.eta)
        return copy(t)

    async def _dep_failed(self, child: str, dep: str, now: float) -> Rec | None:
        """``dep`` failed, was cancelled or expired: a child still waiting is cancelled."""

        def change(rec: Rec) -> str | None:
            if rec.task.status is not PENDING or not rec.waiting:
                return None
            end_record(rec, CANCELLED, now)
            return ""

        got = await self._transition(child, change)
        return None if got is None else got[1]

    async def _resolve(self, ended: Sequence[Rec], now: float) -> Finished:
        """Release or cancel (transitively) the dependents of records that just became final."""
        out = Finished()
        stack = list(ended)
        while stack:
            rec = stack.pop()
            dep, status = rec.task.id, rec.task.status
            for child in rec.dependents:
                # RELEASE or WAIT is the child's to tell (its record knows what else it waits for)
                if on_dependency_end(status, others_left=True) is Cascade.CANCEL:
                    cancelled = await self._dep_failed(child, dep, now)
                    if cancelled is not None:
                        out.cancelled.append((copy(cancelled.task), dep))
                        stack.append(cancelled)
                elif status is TaskStatus.SUCCEEDED:
                    released = await self._dep_succeeded(child, dep, now)
                    if released is not None:
                        out.released.append(released)
        return out

    @guarded
    async def get_task(self, task_id: str) -> Task | None:
        got = await self._get_rec(task_id)
        return None if got is None else got[1].task

    @guarded
    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        return {i: r.task.status for i, (_, r) in (await self._get_recs(task_ids)).items()}

    @guarded
    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        recs = await self._get_recs(task_ids)
        return [
            i
            for i in task_ids
            if (g := recs.get(i)) is not None
            and g[1].task.cancel_requested
            and g[1].task.status is RUNNING
        ]

    async def _all_recs(self) -> list[tuple[str, Rec]]:
        msgs = await self._scan(
            f"KV_{self.tasks_bucket}", f"$KV.{self.tasks_bucket}.>", last_per_subject=True
        )
        out = []
        for m in msgs:
            if m.headers and m.headers.get(KV_OPERATION) in ("DEL", "PURGE"):
                continue
            try:
                out.append((m.subject, decode_rec(m.data)))
            except Exception as exc:  # counted once a claim has written its stand-in over it
                log.warning("ignoring unreadable task record %s: %s", m.subject, type(exc).__name__)
        return out

    @guarded
    async def counts(self) -> dict[str, dict[str, int]]:
        """A scan of every task record: for ``health()``, not for a hot loop."""
        out: dict[str, dict[str, int]] = {}
        for _, rec in await self._all_recs():
            by_status = out.setdefault(rec.task.queue, {})
            by_status[rec.task.status.value] = by_status.get(rec.task.status.value, 0) + 1
        return out

    @guarded
    async def oldest_queued(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for _, rec in await self._all_recs():
            t = rec.task
            if t.status is QUEUED and (t.queue not in out or t.created_at < out[t.queue]):
                out[t.queue] = t.created_at
        return out

    @guarded
    async def purge_tasks(
        self, *, before: float, statuses: Collection[TaskStatus] | None = None
    ) -> list[str]:
        gone = [
            (subject, rec)
            for subject, rec in await self._all_recs()
            if rec.task.status.is_final and rec.finished_at is not None and rec.finished_at < before
            and (statuses is None or rec.task.status in statuses)
        ]
        await gather(self._purge(f"KV_{self.tasks_bucket}", s) for s, _ in gone)
        await self._forget_keys([r for _, r in gone], time.time())
        return [r.task.id for _, r in gone]

    @guarded
    async def _list_tasks(
        self, statuses: Collection[TaskStatus] | None, queue: str | None, name: str | None, limit: int,
        before: str | None,
    ) -> list[Task]:
        """A scan of every task record, as ``counts``: NATS keeps no index of records by id
        (a page costs one pass over the bucket; fine for an operator's look, not for a loop)."""
        found = [rec.task for _, rec in await self._all_recs()
                 if in_page(rec.task, statuses, queue, name, before)]
        return heapq.nlargest(limit, found, key=_task_id)

    @guarded
    async def requeue(self, task_id: str, *, now: float, attempts: int) -> TaskStatus | None:
        seen: list[TaskStatus] = []

        def change(rec: Rec) -> str | None:
            t = rec.task
            seen.append(t.status)
            if t.status not in REQUEUABLE:
                return None
            t.status, t.worker, t.lease_until, t.cancel_requested = QUEUED, None, None, False
            t.deliveries, t.attempts, t.expires_at, t.eta = 0, attempts, None, None
            rec.finished_at = None
            rec.waiting = []
            return "ready"

        done = await self._transition(task_id, change)
        if done is not None:
            self._wake()
        return seen[-1] if seen else None


def _task_id(t: Task) -> str:
    return t.id
