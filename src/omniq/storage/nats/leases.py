"""Leases: claim, finish, retry, release, extend, and what ends a lease without its worker
(reap, expire, cancel), each a compare-and-set on the task record."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from copy import copy

import nats.errors
import nats.js.errors
import nats.js.object_store

from ...lifecycle import (
    CANCELLED,
    PENDING,
    QUEUED,
    RUNNING,
    expires,
    lease_lapsed,
    ready_status,
)
from ...logs import get_logger
from ...models import Task, TaskStatus
from ..base import (
    Finished,
    Overrun,
    Reaped,
    masked,
)
from .connection import (
    StoredMsg,
)
from .guard import (
    ATTEMPT,
    gather,
    guarded,
    plain_error,
)
from .records import (
    DUE_STEP,
    UNREADABLE,
    Rec,
    due_verdict,
    end_record,
    held_by,
    lapse_fate,
    leased_by_lost_claim,
    ready_verdict,
    still_lapsed,
    token,
    unchanged,
    untoken,
)
from .tasks import (
    NatsTaskRecords,
)

log = get_logger("omniq.storage.nats")

class NatsLeases(NatsTaskRecords):
    """The lease side of the task queue."""

    @guarded
    async def _claim(
        self, worker: str, names: list[str] | None, limit: int, lease: float, now: float
    ) -> list[Task]:
        subjects = await self._subjects(self.index_stream, f"{self._p}.ix.q.>")
        levels: dict[int, list[str]] = {}  # priority -> its ready subjects (named queues only)
        due: list[int] = []
        wanted = None if names is None else {token(q) for q in names}
        for subject in subjects:
            parts = subject.split(".")
            if parts[4] == "r":
                if wanted is None or parts[6] in wanted:
                    levels.setdefault(int(parts[5]), []).append(subject)
            elif parts[4] == "d":
                due.append(int(parts[5]))
        if due and min(due) / DUE_STEP <= now:
            for subject in await self._promote(sorted(b for b in due if b / DUE_STEP <= now), now):
                parts = subject.split(".")
                if wanted is None or parts[6] in wanted:
                    levels.setdefault(int(parts[5]), [])
                    if subject not in levels[int(parts[5])]:
                        levels[int(parts[5])].append(subject)
            due = [b for b in due if b / DUE_STEP > now]
        found = (min(due) + 1) / DUE_STEP if due else None
        # keep a due time a wake-up message told us of that this read does not show yet
        known = self._next_due if self._next_due is not None and self._next_due > now else None
        self._next_due = min((x for x in (found, known) if x is not None), default=None)
        claimed: list[Task] = []
        try:
            for priority in sorted(levels, reverse=True):
                if len(claimed) >= limit:
                    break
                # every queue: one wildcard walk gives stream order across all of them
                filters = [f"{self._p}.ix.q.r.{priority}.*"] if names is None else levels[priority]
                await self._claim_level(filters, worker, limit, lease, now, claimed)
        except (nats.errors.Error, asyncio.TimeoutError) as e:
            if not claimed:
                raise
            log.warning(
                "NATS %s: claim cut short (%s); keeping the %d tasks leased so far",
                masked(self.url), plain_error(e), len(claimed),
                exc_info=log.isEnabledFor(logging.DEBUG),
            )  # fmt: skip
        return claimed

    async def _claim_level(
        self,
        filters: list[str],
        worker: str,
        limit: int,
        lease: float,
        now: float,
        claimed: list[Task],
    ) -> None:
        """Claim from one priority level: merge its subjects by stream sequence (FIFO)."""
        heads = await gather(self._next_index(f, 1) for f in filters)
        while len(claimed) < limit:
            batch: list[StoredMsg] = []
            while len(batch) < limit - len(claimed):  # the next messages in stream order
                live = [i for i, h in enumerate(heads) if h is not None]
                if not live:
                    break
                i = min(live, key=lambda j: heads[j].seq)  # type: ignore[union-attr]
                head = heads[i]
                assert head is not None
                batch.append(head)
                heads[i] = await self._next_index(filters[i], head.seq + 1)
            if not batch:
                return
            recs = await self._get_recs(m.data.decode() for m in batch)
            stale: list[int] = []
            ready: list[tuple[tuple[int, Rec], str, int]] = []
            retry = ATTEMPT.get() > 0
            for m in batch:
                got = recs.get(m.data.decode())
                if got is not None and got[1].index_seq == UNREADABLE:
                    got[1].index_seq = m.seq  # an unreadable record: its stand-in is claimed
                if retry and got is not None and leased_by_lost_claim(m.seq, got[1], worker, now):
                    # an earlier attempt of this claim leased it, then lost the reply: ours
                    task_id = m.data.decode()
                    lease_subject = self._lease_subject(task_id, got[1].claim_no)
                    await self._publish_ok([(lease_subject, b"", None)])
                    self._remember(task_id, got)
                    claimed.append(copy(got[1].task))
                    stale.append(m.seq)
                    continue
                verdict = ready_verdict(m.seq, got, now)
                if verdict == "stale":
                    stale.append(m.seq)
                elif verdict == "claim":
                    assert got is not None
                    ready.append((got, m.data.decode(), m.seq))
            taken = await gather(self._take(g, i, s, worker, lease, now) for g, i, s in ready)
            for (_, _, seq), task in zip(ready, taken, strict=True):
                if task is not None:
                    claimed.append(task)
                    stale.append(seq)
            await self._delete_index(stale)

    async def _take(
        self, got: tuple[int, Rec], task_id: str, seq: int, worker: str, lease: float, now: float
    ) -> Task | None:
        """Lease one ready task by compare-and-set; the lease index is published alongside."""

        def change(rec: Rec) -> str | None:
            if rec.task.status is not QUEUED or rec.index_seq != seq:
                return None
            if rec.task.expires_at is not None and rec.task.expires_at <= now:
                return None
            t = rec.task
            t.status, t.worker, t.lease_until = RUNNING, worker, now + lease
            t.deliveries += 1
            rec.claim_no += 1
            return ""

        # the lease subject is written with the record (a reaper ignores a claim number ahead of
        # the record's, so it may land first)
        lease_subject = self._lease_subject(task_id, got[1].claim_no + 1)
        published, done = await asyncio.gather(
            self._publish_ok([(lease_subject, b"", None)]),
            self._transition(task_id, change, cached=got),
            return_exceptions=True,
        )
        if isinstance(done, BaseException):
            if not isinstance(published, BaseException):
                await self._unlease(lease_subject)
            raise done
        if isinstance(published, BaseException) and done is not None:
            await self._publish_ok([(lease_subject, b"", None)])  # once more, or fail the claim
        if done is None:
            await self._unlease(lease_subject)
            return None
        if done[1].claim_no != got[1].claim_no + 1:  # claimed after a retry with a newer record
            await self._publish_ok([(self._lease_subject(task_id, done[1].claim_no), b"", None)])
        self._remember(task_id, done)
        return copy(done[1].task)

    def _lease_subject(self, task_id: str, claim_no: int) -> str:
        return f"{self._p}.ix.l.{token(task_id)}.{claim_no}"

    def _remember(self, task_id: str, got: tuple[int, Rec]) -> None:
        if len(self._held) > 10_000:
            self._held.clear()  # a worker that never reports back: start over
        self._held[task_id] = got

    async def _promote(self, buckets: list[int], now: float) -> list[str]:
        """Delayed tasks whose eta passed become QUEUED; returns their ready subjects."""
        subjects: list[str] = []
        for b in buckets:
            msgs = await self._read_index(f"{self._p}.ix.q.d.{b}")
            recs = await self._get_recs(m.data.decode() for m in msgs)
            done: list[int] = []
            for m in msgs:
                task_id = m.data.decode()
                got = recs.get(task_id)
                verdict = due_verdict(m.seq, got, now)
                if verdict == "stale":
                    done.append(m.seq)
                elif verdict == "promote":

                    def change(rec: Rec, seq: int = m.seq) -> str | None:
                        if due_verdict(seq, (0, rec), now) != "promote":
                            return None
                        rec.task.status = QUEUED
                        return "ready"

                    moved = await self._transition(task_id, change, cached=got)
                    done.append(m.seq)
                    if moved is not None:
                        subjects.append(self._index_item(moved[1], "ready")[0])
            await self._delete_index(done)
        return subjects

    @guarded
    async def _finish(self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], now: float) -> Finished:
        retry = ATTEMPT.get() > 0

        async def one(task_id: str, status: TaskStatus) -> Rec | None:
            ended_before: list[Rec] = []

            def change(rec: Rec) -> str | None:
                ended_before.clear()
                if rec.task.status is not RUNNING or rec.task.worker != worker:
                    if retry and rec.task.status is status and rec.task.worker == worker:
                        ended_before.append(rec)  # our lost attempt ended it
                    return None
                end_record(rec, status, now)
                return ""

            got = await self._transition(task_id, change, cached=self._held.pop(task_id, None))
            if got is None:
                if ended_before:
                    await self._unlease(self._lease_subject(task_id, ended_before[0].claim_no))
                    return ended_before[0]
                return None
            await self._unlease(self._lease_subject(task_id, got[1].claim_no))
            return got[1]

        ended = [r for r in await gather(one(i, s) for i, s in outcomes) if r is not None]
        if not any(r.dependents for r in ended):
            return Finished()
        return await self._resolve(ended, now)

    async def _requeue(
        self,
        task_id: str,
        allowed: Callable[[Rec], bool],
        edit: Callable[[Task], None],
        cached: tuple[int, Rec] | None = None,
        *,
        eta: float | None = None,
    ) -> Rec | None:
        """End a lease and put the task back: QUEUED, or PENDING until ``eta`` (wall clock)."""

        def change(rec: Rec) -> str | None:
            t = rec.task
            if t.status is not RUNNING or not allowed(rec):
                return None
            edit(t)
            t.worker = None
            t.lease_until = None
            if eta is not None and ready_status(eta, time.time()) is PENDING:
                t.status = PENDING
                return "due"
            t.status = QUEUED
            return "ready"

        got = await self._transition(task_id, change, cached=cached)
        if got is None:
            return None
        await self._unlease(self._lease_subject(task_id, got[1].claim_no))
        t = got[1].task
        if t.status is QUEUED:
            self._wake()
        elif t.eta is not None:
            self._wake(t.eta)
        return got[1]

    @guarded
    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        def edit(t: Task) -> None:
            t.attempts = attempts
            t.eta = eta

        # retry has no ``now``: the wall clock decides QUEUED or PENDING, as in the other backends
        await self._requeue(task_id, held_by(worker), edit, self._held.pop(task_id, None), eta=eta)

    @guarded
    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        def edit(t: Task) -> None:
            t.deliveries = max(t.deliveries - 1, 0)

        for task_id in task_ids:  # in order: they go back to the line in this order
            await self._requeue(task_id, held_by(worker), edit, self._held.pop(task_id, None))

    @guarded
    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        async def one(task_id: str) -> None:
            def change(rec: Rec) -> str | None:
                if rec.task.status is not RUNNING or rec.task.worker != worker:
                    return None
                rec.task.lease_until = lease_until
                return ""

            got = await self._transition(task_id, change, cached=self._held.get(task_id))
            if got is not None:
                self._remember(task_id, got)
            else:
                self._held.pop(task_id, None)

        await gather(one(i) for i in task_ids)

    @guarded
    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        ids = [untoken(subject.split(".")[4])
               for subject in await self._subjects(self.index_stream, f"{self._p}.ix.l.>")]
        recs = await self._get_recs(dict.fromkeys(ids))
        lapsed = [
            Overrun(task_id=t.id, queue=t.queue, worker=t.worker, lease_until=t.lease_until)
            for _, rec in recs.values()
            if (t := rec.task).status is RUNNING and t.lease_until is not None
            and lease_lapsed(t.lease_until, now)
        ]
        return sorted(lapsed, key=lambda o: o.lease_until)[:limit]

    @guarded
    async def reap(self, *, now: float) -> Reaped:
        out = Reaped(requeued=[], dead=[])
        leases: list[tuple[str, int, str]] = []  # (task id, claim number, subject)
        for subject in await self._subjects(self.index_stream, f"{self._p}.ix.l.>"):
            parts = subject.split(".")
            leases.append((untoken(parts[4]), int(parts[5]), subject))
        if not leases:
            return out
        recs = await self._get_recs(i for i, _, _ in leases)
        ended: list[Rec] = []
        for task_id, claim_no, subject in leases:
            got = recs.get(task_id)
            if got is None or got[1].task.status.is_final or got[1].claim_no > claim_no:
                await self._unlease(subject)  # that claim is over for good
                continue
            t = got[1].task
            if got[1].claim_no < claim_no or t.status is not RUNNING:
                continue  # a claim in progress, or a lease already given back
            if not lease_lapsed(t.lease_until, now):
                continue
            final = lapse_fate(t)
            if final is not QUEUED:

                def change(rec: Rec, n: int = claim_no, final: TaskStatus = final) -> str | None:
                    x = rec.task
                    if x.status is not RUNNING or rec.claim_no != n:
                        return None
                    if not lease_lapsed(x.lease_until, now):
                        return None
                    end_record(rec, final, now)
                    return ""

                done = await self._transition(task_id, change, cached=got)
                if done is not None:
                    await self._unlease(subject)
                    ended.append(done[1])
                    if final is CANCELLED:
                        out.cancelled.append((copy(done[1].task), task_id))
                    else:
                        out.dead.append(copy(done[1].task))
            else:
                lapsed = await self._requeue(
                    task_id, still_lapsed(claim_no, now), unchanged, cached=got
                )
                if lapsed is not None:
                    out.requeued.append(copy(lapsed.task))
        if ended:
            out.cancelled.extend((await self._resolve(ended, now)).cancelled)
        return out

    @guarded
    async def expire(self, *, now: float) -> list[Task]:
        expired: list[Rec] = []
        for subject in await self._subjects(self.index_stream, f"{self._p}.ix.x.>"):
            if int(subject.split(".")[-1]) > now:
                continue
            msgs = await self._read_index(subject)
            recs = await self._get_recs(m.data.decode() for m in msgs)
            done: list[int] = []
            for m in msgs:
                got = recs.get(m.data.decode())
                if got is None or got[1].task.status.is_final:
                    done.append(m.seq)
                    continue

                def change(rec: Rec) -> str | None:
                    if not expires(rec.task.status, rec.task.expires_at, now):
                        return None
                    end_record(rec, TaskStatus.EXPIRED, now)
                    return ""

                ended = await self._transition(m.data.decode(), change, cached=got)
                if ended is not None:
                    expired.append(ended[1])
                    done.append(m.seq)
            await self._delete_index(done)
        out = [copy(r.task) for r in expired]
        if any(r.dependents for r in expired):
            out.extend(t for t, _ in (await self._resolve(expired, now)).cancelled)
        return out

    @guarded
    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        before: dict[str, TaskStatus] = {}
        ended: list[Rec] = []
        for task_id in dict.fromkeys(task_ids):
            seen: list[TaskStatus] = []

            def change(rec: Rec, seen: list[TaskStatus] = seen) -> str | None:
                seen[:] = [rec.task.status]
                if rec.task.status in (QUEUED, PENDING):
                    end_record(rec, CANCELLED, now)
                    return ""
                if rec.task.status is RUNNING and not rec.task.cancel_requested:
                    rec.task.cancel_requested = True
                    return ""
                return None

            got = await self._transition(task_id, change)
            if seen:
                before[task_id] = seen[0]
            if got is not None and got[1].task.status is CANCELLED:
                ended.append(got[1])
        if any(r.dependents for r in ended):
            for t, _ in (await self._resolve(ended, now)).cancelled:
                before[t.id] = PENDING
        return before
