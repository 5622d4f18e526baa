"""The storage contract: every backend URL in conftest.py must pass all of this.

Times come from a fake clock (``T0``): backends take ``now`` from the caller.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from omniq.errors import ConfigError
from omniq.ids import new_id
from omniq.models import ErrorInfo, Schedule, Task, TaskStatus
from omniq.storage.base import EventStore, ResultStore, TaskQueue, WorkerInfo
from omniq.storage.urls import open_backends

from .conftest import shares_storage
from .records import T0, claim, event, result, task

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]

S = TaskStatus


async def status(q: TaskQueue, task_id: str) -> TaskStatus:
    return (await q.statuses([task_id]))[task_id]


# --- task queue -------------------------------------------------------------------------------------


class TestTaskQueue:
    async def test_a_large_payload_comes_back_whole_through_its_life(self, queue: TaskQueue) -> None:
        """Large payloads may be kept apart from the task's record (SQLite): every read of the
        task gives them back, a lapse, a release and a retry keep them, a purge removes them."""
        big, small = random.Random(7).randbytes(100_000), b"small"
        a, b, c = task(payload=big), task(payload=big[::-1]), task(payload=small)
        await queue.enqueue([a, b, c])
        assert (await queue.get_task(a.id)).payload == big  # type: ignore[union-attr]
        got = {t.id: t.payload for t in await claim(queue, lease=10.0)}
        assert got == {a.id: big, b.id: big[::-1], c.id: small}
        await queue.release("w1", [b.id])
        await queue.reap(now=T0 + 60)  # a's and c's leases lapsed: queued again
        got = {t.id: t.payload for t in await claim(queue, now=T0 + 61, worker="w2")}
        assert got == {a.id: big, b.id: big[::-1], c.id: small}
        await queue.retry("w2", a.id, eta=T0 + 62, attempts=1)
        [again] = await claim(queue, now=T0 + 63, worker="w2")
        assert (again.id, again.payload, again.attempts) == (a.id, big, 1)
        await queue.finish("w2", [(t, S.SUCCEEDED) for t in (a.id, b.id, c.id)], now=T0 + 64)
        assert await queue.purge(before=T0 + 65) == 3
        assert await queue.get_task(a.id) is None
        d = task(payload=big)  # a payload stored after a purge: no leftovers in its way
        await queue.enqueue([d])
        assert [t.payload for t in await claim(queue, now=T0 + 66)] == [big]

    async def test_enqueue_claim_round_trip(self, queue: TaskQueue) -> None:
        payload = bytes(range(256)) + b"\x00\x00end"
        t = task(
            payload=payload,
            name="mod.fn",
            queue="q1",
            priority=3,
            timeout=5.0,
            retries=2,
            key="sweep/a=1",
            metadata={"a": [1, 2], "b": None},
            on_success=b"\x00cb",
        )
        await queue.enqueue([t])
        assert await status(queue, t.id) is S.QUEUED
        [got] = await claim(queue, lease=10.0)
        assert got.id == t.id
        assert got.payload == payload
        assert (got.name, got.queue, got.priority, got.timeout, got.retries) == (
            "mod.fn", "q1", 3, 5.0, 2,
        )  # fmt: skip
        assert (got.key, got.metadata, got.on_success) == (
            "sweep/a=1",
            {"a": [1, 2], "b": None},
            b"\x00cb",
        )
        assert got.status is S.RUNNING
        assert (got.worker, got.lease_until, got.deliveries) == ("w1", T0 + 10.0, 1)
        stored = await queue.get_task(t.id)
        assert stored is not None and stored.status is S.RUNNING and stored.worker == "w1"
        assert await claim(queue) == []
        assert await queue.get_task("nope") is None

    async def test_random_payload_bytes_round_trip(self, queue: TaskQueue) -> None:
        rnd = random.Random(7)
        payloads = [bytes(rnd.randrange(256) for _ in range(n)) for n in (0, 1, 7, 1000, 70_000)]
        payloads.append(b"\x00" * 100)
        tasks = [task(payload=p) for p in payloads]
        await queue.enqueue(tasks)
        got = {t.id: t.payload for t in await claim(queue)}
        assert got == {t.id: t.payload for t in tasks}

    async def test_returned_tasks_are_copies(self, queue: TaskQueue) -> None:
        t = task()
        await queue.enqueue([t])
        t.queue = "changed-after-enqueue"
        [got] = await claim(queue)
        assert got.queue == "default"
        got.status = S.SUCCEEDED
        assert await status(queue, t.id) is S.RUNNING

    async def test_priority_then_fifo(self, queue: TaskQueue) -> None:
        rnd = random.Random(1)
        expected: list[tuple[int, int, str]] = []
        n = 0
        for _ in range(6):  # interleaved batches of mixed priorities
            batch = [
                task(priority=rnd.choice([-2, 0, 0, 1, 5])) for _ in range(rnd.randrange(1, 40))
            ]
            await queue.enqueue(batch)
            for t in batch:
                expected.append((-t.priority, n, t.id))
                n += 1
        await queue.enqueue([task(priority=0) for _ in range(0)])  # an empty batch is fine
        got: list[str] = []
        while batch := await claim(queue, 7):
            got.extend(t.id for t in batch)
        assert got == [i for _, _, i in sorted(expected)]

    async def test_claim_returns_highest_priority_first_within_a_batch(
        self, queue: TaskQueue
    ) -> None:
        low, high = task(priority=0), task(priority=9)
        await queue.enqueue([low])
        await queue.enqueue([high])
        got = await claim(queue, 2)
        assert [t.id for t in got] == [high.id, low.id]

    async def test_named_queues(self, queue: TaskQueue) -> None:
        a = [task(queue="a", priority=i % 2) for i in range(4)]
        b = [task(queue="b", priority=1)]
        c = [task(queue="c", priority=5), task(queue="c")]
        await queue.enqueue(a + b + c)
        assert {t.id for t in await claim(queue, queues=["zzz"])} == set()
        got_a = await claim(queue, queues=["a"])
        assert [t.id for t in got_a] == [a[1].id, a[3].id, a[0].id, a[2].id]
        got_bc = await claim(queue, queues=["b", "c"])
        assert [t.id for t in got_bc] == [c[0].id, b[0].id, c[1].id]
        assert await claim(queue) == []

    async def test_queues_across_and_all(self, queue: TaskQueue) -> None:
        ts = [task(queue=q, priority=p) for q, p in [("x", 0), ("y", 2), ("x", 2), ("z", 1)]]
        await queue.enqueue(ts)
        got = await claim(queue, 3, queues=None)
        assert [t.id for t in got] == [ts[1].id, ts[2].id, ts[3].id]

    async def test_limit(self, queue: TaskQueue) -> None:
        ts = [task() for _ in range(10)]
        await queue.enqueue(ts)
        assert await claim(queue, 0) == []
        assert [t.id for t in await claim(queue, 3)] == [t.id for t in ts[:3]]
        assert [t.id for t in await claim(queue, 3, queues=["default"])] == [t.id for t in ts[3:6]]
        assert len(await claim(queue, 100)) == 4

    async def test_bad_claim_arguments(self, queue: TaskQueue) -> None:
        with pytest.raises(ConfigError, match="queues"):
            await claim(queue, queues="default")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="limit"):
            await claim(queue, -1)
        with pytest.raises(ConfigError, match="lease"):
            await claim(queue, lease=0)

    async def test_bad_enqueue_input(self, queue: TaskQueue) -> None:
        t = task()
        with pytest.raises(ConfigError, match="tasks"):
            await queue.enqueue(t)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="status"):
            await queue.enqueue([task(status=S.RUNNING)])
        with pytest.raises(ConfigError, match="payload"):
            await queue.enqueue([task(payload="text")])
        with pytest.raises(ConfigError, match="twice"):
            await queue.enqueue([t, t])
        await queue.enqueue([t])
        other = task()
        with pytest.raises(ConfigError, match="already exists"):
            await queue.enqueue([other, task(id=t.id)])
        assert await queue.get_task(other.id) is None  # the batch is all or nothing

    async def test_lease_reap_requeue_then_dead(self, queue: TaskQueue) -> None:
        t = task(max_deliveries=2)
        await queue.enqueue([t])
        assert len(await claim(queue, lease=10.0, worker="w1")) == 1
        assert (await queue.reap(now=T0 + 5)).requeued == []
        reaped = await queue.reap(now=T0 + 11)
        assert [x.id for x in reaped.requeued] == [t.id] and reaped.dead == []
        assert reaped.requeued[0].status is S.QUEUED and reaped.requeued[0].worker is None
        assert await status(queue, t.id) is S.QUEUED
        # the first worker lost its lease: its late finish changes nothing
        await queue.finish("w1", [(t.id, S.SUCCEEDED)], now=T0 + 12)
        assert await status(queue, t.id) is S.QUEUED
        [again] = await claim(queue, lease=10.0, worker="w2", now=T0 + 20)
        assert again.deliveries == 2
        reaped = await queue.reap(now=T0 + 31)
        assert reaped.requeued == [] and [x.id for x in reaped.dead] == [t.id]
        assert reaped.dead[0].status is S.FAILED
        assert await status(queue, t.id) is S.FAILED
        assert await claim(queue, now=T0 + 40) == []

    async def test_overrun_lists_lapsed_leases_until_reaped(self, queue: TaskQueue) -> None:
        a, b, c = task(queue="qa"), task(queue="qb"), task()
        await queue.enqueue([a, b, c])
        await claim(queue, lease=10.0, worker="w1", limit=1)  # a: lease until T0 + 10
        await claim(queue, lease=20.0, worker="w2", limit=1, now=T0 + 1)  # b: until T0 + 21
        assert await queue.overrun(now=T0 + 5) == []
        late = await queue.overrun(now=T0 + 30)
        assert [(o.task_id, o.queue, o.worker, o.lease_until) for o in late] == [
            (a.id, "qa", "w1", T0 + 10), (b.id, "qb", "w2", T0 + 21)]  # earliest lapse first
        assert [o.task_id for o in await queue.overrun(now=T0 + 30, limit=1)] == [a.id]
        await queue.extend("w2", [b.id], lease_until=T0 + 100)
        assert [o.task_id for o in await queue.overrun(now=T0 + 30)] == [a.id]
        await queue.reap(now=T0 + 30)
        assert await queue.overrun(now=T0 + 30) == []  # requeued: no longer overrunning

    async def test_retry_waits_for_eta(self, queue: TaskQueue) -> None:
        # retry takes no ``now``: whether eta has passed is read off the wall clock
        now = time.time()
        t = task(retries=3)
        await queue.enqueue([t])
        await claim(queue, now=now)
        await queue.retry("w1", t.id, eta=now + 60, attempts=1)
        assert await status(queue, t.id) is S.PENDING
        assert await claim(queue, now=now + 30) == []
        [got] = await claim(queue, now=now + 60)
        assert (got.id, got.attempts, got.deliveries, got.status) == (t.id, 1, 2, S.RUNNING)
        await queue.retry("someone-else", t.id, eta=now, attempts=2)  # not the holder
        assert await status(queue, t.id) is S.RUNNING

    async def test_retry_with_past_eta_is_queued_at_once(self, queue: TaskQueue) -> None:
        t, hi = task(priority=0), task(priority=5)
        await queue.enqueue([t])
        await claim(queue)
        await queue.retry("w1", t.id, eta=T0 + 1, attempts=1)  # long past on the wall clock
        assert await status(queue, t.id) is S.QUEUED
        await queue.enqueue([hi])
        got = await claim(queue, now=T0 + 2)
        assert [x.id for x in got] == [hi.id, t.id]
        assert [x.attempts for x in got] == [0, 1]

    async def test_delayed_task_with_eta(self, queue: TaskQueue) -> None:
        t = task(status=S.PENDING, eta=T0 + 60)
        now_task = task()
        await queue.enqueue([t, now_task])
        assert await status(queue, t.id) is S.PENDING
        assert [x.id for x in await claim(queue)] == [now_task.id]
        assert await claim(queue, now=T0 + 59) == []
        assert [x.id for x in await claim(queue, now=T0 + 60)] == [t.id]

    async def test_release(self, queue: TaskQueue) -> None:
        ts = [task() for _ in range(3)]
        await queue.enqueue(ts)
        await claim(queue)
        await queue.release("w1", [ts[0].id, ts[2].id])
        await queue.release("w2", [ts[1].id])  # not the holder: ignored
        assert await queue.statuses([t.id for t in ts]) == {
            ts[0].id: S.QUEUED, ts[1].id: S.RUNNING, ts[2].id: S.QUEUED,
        }  # fmt: skip
        got = await claim(queue, worker="w2")
        assert [t.id for t in got] == [ts[0].id, ts[2].id]
        assert [t.deliveries for t in got] == [1, 1]  # the release gave its delivery back

    async def test_extend(self, queue: TaskQueue) -> None:
        a, b = task(), task()
        await queue.enqueue([a, b])
        await claim(queue, lease=10.0)
        await queue.extend("w1", [a.id], lease_until=T0 + 100)
        await queue.extend("w2", [b.id], lease_until=T0 + 100)  # not the holder: ignored
        reaped = await queue.reap(now=T0 + 50)
        assert [t.id for t in reaped.requeued] == [b.id]
        got = await queue.get_task(a.id)
        assert got is not None and got.lease_until == T0 + 100 and got.status is S.RUNNING

    async def test_expire(self, queue: TaskQueue) -> None:
        queued = task(expires_at=T0 + 5)
        pending = task(status=S.PENDING, eta=T0 + 100, expires_at=T0 + 5)
        running = task(expires_at=T0 + 5)
        fresh = task(expires_at=T0 + 500)
        await queue.enqueue([running])
        await claim(queue)
        await queue.enqueue([queued, pending, fresh])
        assert [t.id for t in await claim(queue, now=T0 + 6)] == [fresh.id]  # skips expired
        expired = await queue.expire(now=T0 + 6)
        assert {t.id for t in expired} == {queued.id, pending.id}
        assert all(t.status is S.EXPIRED for t in expired)
        assert await queue.statuses([queued.id, pending.id, running.id]) == {
            queued.id: S.EXPIRED, pending.id: S.EXPIRED, running.id: S.RUNNING,
        }  # fmt: skip
        assert await queue.expire(now=T0 + 7) == []
        assert await claim(queue, now=T0 + 200) == []

    async def test_cancel(self, queue: TaskQueue) -> None:
        queued, pending, running, done = task(), task(status=S.PENDING, eta=T0 + 9), task(), task()
        await queue.enqueue([running, done])
        await claim(queue)
        await queue.finish("w1", [(done.id, S.SUCCEEDED)], now=T0)
        await queue.enqueue([queued, pending])
        before = await queue.cancel([queued.id, pending.id, running.id, done.id, "unknown"], now=T0)
        assert before == {
            queued.id: S.QUEUED, pending.id: S.PENDING, running.id: S.RUNNING, done.id: S.SUCCEEDED,
        }  # fmt: skip
        assert await queue.statuses([queued.id, pending.id, running.id, done.id]) == {
            queued.id: S.CANCELLED, pending.id: S.CANCELLED, running.id: S.RUNNING,
            done.id: S.SUCCEEDED,
        }  # fmt: skip
        assert await queue.cancel_requests([running.id, queued.id, done.id]) == [running.id]
        got = await queue.get_task(running.id)
        assert got is not None and got.cancel_requested
        assert await claim(queue, now=T0 + 20) == []
        await queue.finish("w1", [(running.id, S.CANCELLED)], now=T0 + 1)
        assert await status(queue, running.id) is S.CANCELLED
        assert await queue.cancel_requests([running.id]) == []

    async def test_cancel_requested_task_whose_worker_died_is_cancelled(
        self, queue: TaskQueue
    ) -> None:
        t = task()
        await queue.enqueue([t])
        await claim(queue, lease=5.0)
        await queue.cancel([t.id], now=T0)
        reaped = await queue.reap(now=T0 + 10)
        assert reaped.requeued == [] and reaped.dead == []
        assert [(x.id, x.status, cause) for x, cause in reaped.cancelled] == [
            (t.id, S.CANCELLED, t.id)
        ]

    async def test_finish_applies_only_to_the_lease_holder(self, queue: TaskQueue) -> None:
        a, b = task(), task()
        await queue.enqueue([a, b])
        await claim(queue, 1, worker="w1")
        await claim(queue, 1, worker="w2")
        await queue.finish("w2", [(a.id, S.SUCCEEDED), (b.id, S.FAILED)], now=T0)
        assert await queue.statuses([a.id, b.id]) == {a.id: S.RUNNING, b.id: S.FAILED}
        with pytest.raises(ConfigError, match="final"):
            await queue.finish("w1", [(a.id, S.RUNNING)], now=T0)

    async def test_counts_and_oldest_queued(self, queue: TaskQueue) -> None:
        assert await queue.counts() == {}
        assert await queue.oldest_queued() == {}
        a = [task(queue="a", created_at=T0 + i) for i in range(3)]
        b = [task(queue="b", created_at=T0 - 5, priority=1), task(queue="b", created_at=T0 - 9)]
        await queue.enqueue(a + b)
        await claim(queue, 1, queues=["a"])
        await claim(queue, 1, queues=["b"])
        await queue.finish("w1", [(a[0].id, S.SUCCEEDED)], now=T0)
        assert await queue.counts() == {
            "a": {"succeeded": 1, "queued": 2},
            "b": {"running": 1, "queued": 1},
        }
        assert await queue.oldest_queued() == {"a": T0 + 1, "b": T0 - 9}

    async def test_purge_final_tasks(self, queue: TaskQueue) -> None:
        old, new, waiting = task(), task(), task()
        await queue.enqueue([old, new])
        await claim(queue)
        await queue.finish("w1", [(old.id, S.SUCCEEDED)], now=T0)
        await queue.finish("w1", [(new.id, S.FAILED)], now=T0 + 100)
        await queue.enqueue([waiting])
        assert await queue.purge(before=T0 + 50) == 1
        assert await queue.get_task(old.id) is None
        assert await queue.statuses([new.id, waiting.id]) == {
            new.id: S.FAILED,
            waiting.id: S.QUEUED,
        }


# --- dependencies -----------------------------------------------------------------------------------


class TestDependencies:
    async def test_pending_until_every_dependency_succeeded(self, queue: TaskQueue) -> None:
        a, b = task(), task()
        c = task(status=S.PENDING, depends_on=(a.id, b.id))
        await queue.enqueue([a, b])
        await queue.enqueue([c])
        assert await status(queue, c.id) is S.PENDING
        assert {t.id for t in await claim(queue)} == {a.id, b.id}
        first = await queue.finish("w1", [(a.id, S.SUCCEEDED)], now=T0)
        assert first.released == [] and first.cancelled == []
        assert await claim(queue) == []
        second = await queue.finish("w1", [(b.id, S.SUCCEEDED)], now=T0)
        assert [(t.id, t.status) for t in second.released] == [(c.id, S.QUEUED)]
        assert [t.id for t in await claim(queue)] == [c.id]

    async def test_failure_cancels_dependents_transitively(self, queue: TaskQueue) -> None:
        a = task()
        b = task(status=S.PENDING, depends_on=(a.id,))
        c = task(status=S.PENDING, depends_on=(b.id,))
        other = task()
        d = task(status=S.PENDING, depends_on=(other.id,))
        await queue.enqueue([a, b, c, other, d])
        await claim(queue)
        out = await queue.finish("w1", [(a.id, S.FAILED)], now=T0 + 1)
        assert out.released == []
        assert sorted((t.id, t.status, cause) for t, cause in out.cancelled) == sorted(
            [(b.id, S.CANCELLED, a.id), (c.id, S.CANCELLED, b.id)]
        )
        assert await queue.statuses([b.id, c.id, d.id]) == {
            b.id: S.CANCELLED, c.id: S.CANCELLED, d.id: S.PENDING,
        }  # fmt: skip

    @pytest.mark.parametrize("end", [S.CANCELLED, S.EXPIRED])
    async def test_cancelled_or_expired_dependency_via_finish(
        self, queue: TaskQueue, end: TaskStatus
    ) -> None:
        a = task()
        b = task(status=S.PENDING, depends_on=(a.id,))
        await queue.enqueue([a, b])
        await claim(queue)
        out = await queue.finish("w1", [(a.id, end)], now=T0)
        assert [(t.id, cause) for t, cause in out.cancelled] == [(b.id, a.id)]

    async def test_cancel_cascades_to_dependents(self, queue: TaskQueue) -> None:
        a = task(status=S.PENDING, eta=T0 + 100)
        b = task(status=S.PENDING, depends_on=(a.id,))
        c = task(status=S.PENDING, depends_on=(b.id,))
        await queue.enqueue([a, b, c])
        before = await queue.cancel([a.id], now=T0)
        assert before == {a.id: S.PENDING, b.id: S.PENDING, c.id: S.PENDING}
        assert set((await queue.statuses([a.id, b.id, c.id])).values()) == {S.CANCELLED}

    async def test_expire_cascades_to_dependents(self, queue: TaskQueue) -> None:
        a = task(expires_at=T0 + 1)
        b = task(status=S.PENDING, depends_on=(a.id,))
        await queue.enqueue([a, b])
        out = await queue.expire(now=T0 + 2)
        assert [(t.id, t.status) for t in out] == [(a.id, S.EXPIRED), (b.id, S.CANCELLED)]

    async def test_dead_dependency_cancels_dependents(self, queue: TaskQueue) -> None:
        a = task(max_deliveries=1)
        b = task(status=S.PENDING, depends_on=(a.id,))
        await queue.enqueue([a, b])
        await claim(queue, lease=1.0)
        reaped = await queue.reap(now=T0 + 5)
        assert [t.id for t in reaped.dead] == [a.id]
        assert [(t.id, cause) for t, cause in reaped.cancelled] == [(b.id, a.id)]

    async def test_dependencies_known_at_enqueue(self, queue: TaskQueue) -> None:
        ok, bad = task(), task()
        await queue.enqueue([ok, bad])
        await claim(queue)
        await queue.finish("w1", [(ok.id, S.SUCCEEDED), (bad.id, S.FAILED)], now=T0)
        after_ok = task(status=S.PENDING, depends_on=(ok.id,))
        after_bad = task(status=S.PENDING, depends_on=(ok.id, bad.id))
        await queue.enqueue([after_ok, after_bad])
        assert await queue.statuses([after_ok.id, after_bad.id]) == {
            after_ok.id: S.QUEUED, after_bad.id: S.CANCELLED,
        }  # fmt: skip

    async def test_dependencies_within_one_batch_in_any_order(self, queue: TaskQueue) -> None:
        a = task()
        later = task(status=S.PENDING, depends_on=(a.id,))
        before_dep = task(status=S.PENDING, depends_on=(later.id,))
        await queue.enqueue([before_dep, a, later])
        assert [t.id for t in await claim(queue)] == [a.id]
        await queue.finish("w1", [(a.id, S.SUCCEEDED)], now=T0)
        assert [t.id for t in await claim(queue)] == [later.id]
        out = await queue.finish("w1", [(later.id, S.SUCCEEDED)], now=T0)
        assert [t.id for t in out.released] == [before_dep.id]

    async def test_unknown_dependency_or_cycle_is_refused(self, queue: TaskQueue) -> None:
        fine = task()
        with pytest.raises(ConfigError, match="unknown"):
            await queue.enqueue([fine, task(status=S.PENDING, depends_on=("no-such-task",))])
        assert await queue.get_task(fine.id) is None
        x, y = task(), task()
        x.depends_on, y.depends_on = (y.id,), (x.id,)
        with pytest.raises(ConfigError, match="circular"):
            await queue.enqueue([x, y])

    async def test_released_dependent_waits_for_its_eta(self, queue: TaskQueue) -> None:
        a = task()
        b = task(status=S.PENDING, depends_on=(a.id,), eta=T0 + 50)
        await queue.enqueue([a, b])
        await claim(queue)
        out = await queue.finish("w1", [(a.id, S.SUCCEEDED)], now=T0 + 1)
        assert [(t.id, t.status) for t in out.released] == [(b.id, S.PENDING)]
        assert await claim(queue, now=T0 + 10) == []
        assert [t.id for t in await claim(queue, now=T0 + 50)] == [b.id]


# --- schedules and workers -------------------------------------------------------------------------------


class TestSchedules:
    async def test_crud(self, queue: TaskQueue) -> None:
        s = Schedule(
            id="s1", name="tick", payload=b"\x00fn", interval=60.0, next_run=T0, created_at=T0
        )
        await queue.add_schedule(s)
        [got] = await queue.get_schedules()
        assert got == s
        s.name = "renamed"
        await queue.add_schedule(s)  # replace by id
        assert [x.name for x in await queue.get_schedules()] == ["renamed"]
        assert await queue.set_schedule_paused("s1", True, None)
        [paused] = await queue.get_schedules()
        assert paused.paused and paused.next_run == T0
        assert await queue.set_schedule_paused("s1", False, T0 + 120)
        [resumed] = await queue.get_schedules()
        assert not resumed.paused and resumed.next_run == T0 + 120
        assert not await queue.set_schedule_paused("nope", True, None)
        assert await queue.delete_schedule("s1")
        assert not await queue.delete_schedule("s1")
        assert await queue.get_schedules() == []

    async def test_fire_schedule_compare_and_set(self, queue: TaskQueue) -> None:
        s = Schedule(id="s1", name="tick", payload=b"x", interval=60.0, next_run=T0)
        await queue.add_schedule(s)
        t1 = task(name="tick")
        assert await queue.fire_schedule(
            "s1", expected_next_run=T0, next_run=T0 + 60, now=T0, task=t1
        )
        t2 = task()
        assert not await queue.fire_schedule(
            "s1", expected_next_run=T0, next_run=T0 + 60, now=T0, task=t2
        )
        assert await queue.get_task(t2.id) is None
        [s_now] = await queue.get_schedules()
        assert (s_now.next_run, s_now.last_run, s_now.last_task_id) == (T0 + 60, T0, t1.id)
        assert [t.id for t in await claim(queue)] == [t1.id]
        await queue.set_schedule_paused("s1", True, None)
        t3 = task()
        assert not await queue.fire_schedule(
            "s1", expected_next_run=T0 + 60, next_run=T0 + 120, now=T0 + 60, task=t3
        )
        assert not await queue.fire_schedule(
            "nope", expected_next_run=T0, next_run=None, now=T0, task=t3
        )
        assert await queue.get_task(t3.id) is None

    async def test_fire_schedule_exactly_once_under_concurrency(self, queue: TaskQueue) -> None:
        await queue.add_schedule(
            Schedule(id="s", name="s", payload=b"x", interval=1.0, next_run=T0)
        )
        peers: list[TaskQueue] = []
        if shares_storage(queue.url):  # other connections to the same storage race too
            for _ in range(2):
                peer, _, _ = open_backends(queue.url)
                await peer.connect()
                peers.append(peer)
        contenders = [queue, *peers]
        outcomes: list[tuple[bool, str]] = []

        async def attempt(backend: TaskQueue) -> None:
            t = task()
            won = await backend.fire_schedule(
                "s", expected_next_run=T0, next_run=T0 + 1, now=T0, task=t
            )
            outcomes.append((won, t.id))

        try:
            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(attempt, contenders[i % len(contenders)])
        finally:
            for peer in peers:
                await peer.close()
        winners = [tid for won, tid in outcomes if won]
        assert len(outcomes) == 30 and len(winners) == 1
        stored = await queue.statuses([tid for _, tid in outcomes])
        assert stored == {winners[0]: S.QUEUED}


class TestIdempotencyKeys:
    """``Task.key``: a task whose key a live or succeeded task holds is not stored; ``enqueue``
    answers ``{its id: the holder's}``. Failure, cancel and expiry free the key."""

    async def test_while_queued_and_running_the_first_task_holds_the_key(
        self, queue: TaskQueue
    ) -> None:
        first = task(key="k1")
        assert await queue.enqueue([first]) == {}
        again = task(key="k1")
        assert await queue.enqueue([again]) == {again.id: first.id}
        assert await queue.get_task(again.id) is None
        await claim(queue)
        assert await status(queue, first.id) is S.RUNNING
        third = task(key="k1")
        assert await queue.enqueue([third]) == {third.id: first.id}
        other = task(key="k2")
        assert await queue.enqueue([other]) == {}  # another key is another task
        assert (await queue.counts())["default"] == {"running": 1, "queued": 1}

    async def test_pending_with_eta_holds_the_key(self, queue: TaskQueue) -> None:
        first = task(key="k", status=S.PENDING, eta=T0 + 60)
        await queue.enqueue([first])
        again = task(key="k")
        assert await queue.enqueue([again]) == {again.id: first.id}

    async def test_after_success_the_call_returns_the_succeeded_task(self, queue: TaskQueue) -> None:
        first = task(key="k")
        await queue.enqueue([first])
        await claim(queue)
        await queue.finish("w1", [(first.id, S.SUCCEEDED)], now=T0)
        again = task(key="k")
        assert await queue.enqueue([again]) == {again.id: first.id}
        assert await queue.get_task(again.id) is None

    @pytest.mark.parametrize("end", ["failed", "cancelled", "expired", "worker died"])
    async def test_after_failure_cancel_or_expiry_a_new_task_is_made(
        self, queue: TaskQueue, end: str
    ) -> None:
        first = task(key="k", expires_at=T0 + 5, max_deliveries=1)
        await queue.enqueue([first])
        if end == "failed":
            await claim(queue)
            await queue.finish("w1", [(first.id, S.FAILED)], now=T0)
        elif end == "cancelled":
            await queue.cancel([first.id], now=T0)
        elif end == "expired":
            assert [t.id for t in await queue.expire(now=T0 + 6)] == [first.id]
        else:
            await claim(queue, lease=1.0)
            assert [t.id for t in (await queue.reap(now=T0 + 2)).dead] == [first.id]
        assert (await status(queue, first.id)).is_final
        second = task(key="k")
        assert await queue.enqueue([second]) == {}
        assert await status(queue, second.id) is S.QUEUED
        third = task(key="k")  # from now on the key refers to the new task
        assert await queue.enqueue([third]) == {third.id: second.id}

    async def test_retrying_task_still_holds_the_key(self, queue: TaskQueue) -> None:
        first = task(key="k", retries=2)
        await queue.enqueue([first])
        await claim(queue)
        await queue.retry("w1", first.id, eta=time.time() + 60, attempts=1)
        again = task(key="k")
        assert await queue.enqueue([again]) == {again.id: first.id}

    async def test_in_one_batch_the_first_task_holds_and_dependents_follow_it(
        self, queue: TaskQueue
    ) -> None:
        a, b = task(key="k"), task(key="k")
        c = task(status=S.PENDING, depends_on=(b.id,))  # depends on the duplicate
        plain = task()
        assert await queue.enqueue([a, plain, b, c]) == {b.id: a.id}
        assert await queue.statuses([a.id, b.id, c.id, plain.id]) == {
            a.id: S.QUEUED, c.id: S.PENDING, plain.id: S.QUEUED,
        }  # fmt: skip
        got = await claim(queue)
        assert [t.id for t in got] == [a.id, plain.id]
        out = await queue.finish("w1", [(a.id, S.SUCCEEDED)], now=T0)
        assert [t.id for t in out.released] == [c.id]  # c waited for the holder

    async def test_a_duplicate_of_a_succeeded_task_is_no_dependency_to_wait_for(
        self, queue: TaskQueue
    ) -> None:
        a = task(key="k")
        await queue.enqueue([a])
        await claim(queue)
        await queue.finish("w1", [(a.id, S.SUCCEEDED)], now=T0)
        b = task(key="k")
        c = task(status=S.PENDING, depends_on=(b.id,))
        assert await queue.enqueue([b, c]) == {b.id: a.id}
        assert await status(queue, c.id) is S.QUEUED

    async def test_a_purged_success_holds_while_its_result_is_stored(self, queue: TaskQueue) -> None:
        if not isinstance(queue, ResultStore):
            pytest.skip("this backend keeps results elsewhere")
        done, failed = task(key="ok"), task(key="bad")
        await queue.enqueue([done, failed])
        await claim(queue)
        await queue.finish("w1", [(done.id, S.SUCCEEDED), (failed.id, S.FAILED)], now=T0)
        await queue.put_results([result(task_id=done.id, key="ok"),
                                 result(task_id=failed.id, key="bad", status=S.FAILED)])
        assert await queue.purge(before=time.time() + 3600) == 2
        again, retry = task(key="ok"), task(key="bad")
        dependent = task(status=S.PENDING, depends_on=(again.id,))  # nothing left to wait for
        assert await queue.enqueue([again, retry, dependent]) == {again.id: done.id}
        assert await queue.statuses([retry.id, dependent.id]) == {
            retry.id: S.QUEUED, dependent.id: S.QUEUED}
        await queue.delete_results([done.id])  # no record, no result: the key is free
        last = task(key="ok")
        assert await queue.enqueue([last]) == {}

    async def test_with_results_here_a_success_holds_only_while_its_result_is_stored(
        self, queue: TaskQueue
    ) -> None:
        if not isinstance(queue, ResultStore):
            pytest.skip("this backend keeps results elsewhere")
        queue.results_here = True  # (the orchestrator sets it when tasks and results share it)
        try:
            a = task(key="k")
            await queue.enqueue([a])
            await claim(queue)
            await queue.put_results([result(task_id=a.id, key="k")])
            await queue.finish("w1", [(a.id, S.SUCCEEDED)], now=T0)
            b = task(key="k")
            assert await queue.enqueue([b]) == {b.id: a.id}
            await queue.delete_results([a.id])  # its value is gone: nobody could wait for it
            c = task(key="k")
            assert await queue.enqueue([c]) == {}
        finally:
            queue.results_here = False

    async def test_bad_key(self, queue: TaskQueue) -> None:
        for bad in ("", 7):
            with pytest.raises(ConfigError, match="key"):
                await queue.enqueue([task(key=bad)])

    async def test_race_one_task_stored_and_every_caller_gets_its_id(
        self, queue: TaskQueue, tmp_path: Path
    ) -> None:
        """8 threads and 2 processes (on storage others can open; else 10 concurrent calls on
        this loop) enqueue one key at once: exactly one task is stored, every caller gets it."""
        key = f"race/{new_id()}"
        answers: list[str] = []
        mine: list[str] = []

        async def once(backend: TaskQueue) -> None:
            t = task(key=key)
            mine.append(t.id)
            answers.append((await backend.enqueue([t])).get(t.id, t.id))

        if not shares_storage(queue.url):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(once, queue)
        else:
            go = threading.Event()
            ready = threading.Semaphore(0)
            errors: list[BaseException] = []

            def thread() -> None:
                async def run() -> None:
                    peer, _, _ = open_backends(queue.url)
                    await peer.connect()
                    try:
                        ready.release()
                        go.wait(60)
                        await once(peer)
                    finally:
                        await peer.close()

                try:
                    anyio.run(run)
                except BaseException as e:  # reported by the test below
                    errors.append(e)
                    ready.release()

            gofile = tmp_path / "go"
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "tests.storage.key_racer", queue.url, key,
                     str(tmp_path / f"ready{i}"), str(gofile)],
                    stdout=subprocess.PIPE, text=True, cwd=REPO,
                )
                for i in range(2)
            ]  # fmt: skip
            threads = [threading.Thread(target=thread) for _ in range(8)]
            for th in threads:
                th.start()
            try:
                for _ in threads:
                    assert ready.acquire(timeout=60)
                deadline = time.monotonic() + 60
                while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
                    assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
                    await anyio.sleep(0.01)
                gofile.touch()
                go.set()
                for p in procs:
                    out, _ = p.communicate(timeout=60)
                    assert p.returncode == 0
                    answers.append(out.strip().splitlines()[-1])
            finally:
                go.set()
                gofile.touch()
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                for th in threads:
                    th.join(60)
            assert not errors, errors
        assert len(answers) == 10 and len(set(answers)) == 1, answers
        winner = answers[0]
        stored = await queue.statuses([*mine, winner])
        assert stored == {winner: S.QUEUED}


class TestWorkers:
    async def test_heartbeat_and_remove(self, queue: TaskQueue) -> None:
        w = WorkerInfo(id="w1", kind="process", host="h", pid=1, slots=2, queues=None,
                       started_at=T0, last_heartbeat=T0)  # fmt: skip
        await queue.heartbeat(w)
        await queue.heartbeat(WorkerInfo(id="w2", kind="thread", host="h", pid=2, slots=1,
                                         queues=["a"], started_at=T0, last_heartbeat=T0))  # fmt: skip
        w.last_heartbeat = T0 + 5
        await queue.heartbeat(w)
        got = {x.id: x for x in await queue.workers()}
        assert got["w1"].last_heartbeat == T0 + 5 and got["w2"].queues == ["a"]
        await queue.remove_worker("w1")
        await queue.remove_worker("unknown")
        assert [x.id for x in await queue.workers()] == ["w2"]


class TestWakeups:
    async def test_wait_returns_on_notify_and_on_timeout(self, queue: TaskQueue) -> None:
        with anyio.fail_after(5):
            queue.notify()
            await queue.wait_for_tasks(10.0)  # already notified: returns at once
            await queue.wait_for_tasks(0.01)  # nothing: returns after the timeout

    async def test_enqueue_wakes_a_waiter(self, queue: TaskQueue) -> None:
        await claim(queue)  # an idle worker looked, found nothing, and waits

        async def later() -> None:
            await anyio.sleep(0.05)
            await queue.enqueue([task()])

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(later)
                await queue.wait_for_tasks(30.0)
        assert len(await claim(queue)) == 1

    async def test_waiter_wakes_when_a_delayed_task_falls_due(self, queue: TaskQueue) -> None:
        # wall-clock times here: waiting is about real time passing
        assert await claim(queue, now=time.time()) == []
        delayed = task(status=S.PENDING, eta=time.time() + 0.3)

        async def later() -> None:
            await anyio.sleep(0.05)  # enqueued while the worker already waits
            await queue.enqueue([delayed])

        got: list[Task] = []
        with anyio.fail_after(5):  # far below the 30 s the worker is willing to wait
            async with anyio.create_task_group() as tg:
                tg.start_soon(later)
                while not got:  # wake-ups may come early; a worker just looks again
                    await queue.wait_for_tasks(30.0)
                    got = await claim(queue, now=time.time())
        assert [t.id for t in got] == [delayed.id]


# --- result store ---------------------------------------------------------------------------------------


class TestResultStore:
    async def test_put_get_overwrite(self, results: ResultStore) -> None:
        rnd = random.Random(3)
        payload = bytes(rnd.randrange(256) for _ in range(5000)) + b"\x00"
        r = result(payload=payload, attempts=2, started_at=T0, finished_at=T0 + 1.5, worker="w",
                   queue="q", name="f", key="k/1", metadata={"x": 1})  # fmt: skip
        await results.put_results([r])
        got = await results.get_result(r.task_id)
        assert got is not None and got.payload == payload
        assert (got.status, got.attempts, got.duration, got.key, got.metadata) == (
            S.SUCCEEDED, 2, 1.5, "k/1", {"x": 1},
        )  # fmt: skip
        failed = result(task_id=r.task_id, status=S.FAILED,
                        error=ErrorInfo("ValueError", "bad \x00 input", "Traceback ..."))  # fmt: skip
        await results.put_results([failed])  # a redelivery overwrites
        got = await results.get_result(r.task_id)
        assert got is not None and got.status is S.FAILED and got.payload is None
        assert got.error == ErrorInfo("ValueError", "bad \x00 input", "Traceback ...")
        assert await results.get_result("missing") is None

    async def test_get_many(self, results: ResultStore) -> None:
        rs = [result(payload=bytes([i])) for i in range(50)]
        await results.put_results(rs)
        wanted = [rs[3].task_id, "missing", rs[40].task_id]
        got = await results.get_results(wanted)
        assert set(got) == {rs[3].task_id, rs[40].task_id}
        assert got[rs[40].task_id].payload == bytes([40])
        assert await results.get_results([]) == {}

    async def test_find_by_key_prefix(self, results: ResultStore) -> None:
        rs = [result(key=k) for k in ["exp1/a=1", "exp1/a=2", "exp10/a=1", "exp2/a=1", "Exp1/x"]]
        await results.put_results([*rs, result(key=None)])
        assert {r.key for r in await results.find_results(key_prefix="exp1/")} == {
            "exp1/a=1",
            "exp1/a=2",
        }
        assert len(await results.find_results(key_prefix="exp1")) == 3
        assert len(await results.find_results(key_prefix="")) == 5
        assert await results.find_results(key_prefix="zzz") == []

    async def test_delete_and_purge(self, results: ResultStore) -> None:
        keep = result(expires_at=T0 + 100)
        old = result(expires_at=T0 - 1)
        edge = result(expires_at=T0)
        forever = result()
        await results.put_results([keep, old, edge, forever])
        assert await results.purge_results(now=T0) == 2
        assert set(await results.get_results([keep.task_id, old.task_id, edge.task_id, forever.task_id])) == {
            keep.task_id, forever.task_id,
        }  # fmt: skip
        assert await results.delete_results([keep.task_id, "missing"]) == 1
        assert await results.get_result(keep.task_id) is None


# --- event store ------------------------------------------------------------------------------------------


class TestEventStore:
    async def test_append_and_query(self, events: EventStore) -> None:
        a, b = new_id(), new_id()
        batch1 = [event(a, "enqueued", T0), event(b, "enqueued", T0 + 0.5, queue="q")]
        batch2 = [
            event(a, "started", T0 + 1, worker="w1"),
            event(a, "succeeded", T0 + 2, worker="w1", detail="ok"),
            event(b, "started", T0 + 1.5),
        ]
        late = [event(b, "failed", T0 + 0.75)]  # appended later, happened earlier
        for batch in (batch1, batch2, late):
            await events.append_events(batch)
        everything = await events.query_events()
        assert [e.timestamp for e in everything] == [
            T0,
            T0 + 0.5,
            T0 + 0.75,
            T0 + 1,
            T0 + 1.5,
            T0 + 2,
        ]
        assert await events.query_events(task_id=a) == [batch1[0], batch2[0], batch2[1]]
        assert [e.type for e in await events.query_events(task_id=b)] == [
            "enqueued",
            "failed",
            "started",
        ]
        assert [e.timestamp for e in await events.query_events(since=T0 + 1)] == [
            T0 + 1,
            T0 + 1.5,
            T0 + 2,
        ]
        assert [e.task_id for e in await events.query_events(types=["started"])] == [a, b]
        assert await events.query_events(
            task_id=a, types=["succeeded", "enqueued"], since=T0 + 0.1
        ) == [batch2[1]]
        assert len(await events.query_events(limit=2)) == 2
        assert await events.query_events(task_id="nobody") == []

    async def test_ties_keep_append_order(self, events: EventStore) -> None:
        t = new_id()
        es = [event(t, kind, T0) for kind in ("enqueued", "started", "succeeded")]
        await events.append_events(es[:1])
        await events.append_events(es[1:])
        assert await events.query_events(task_id=t) == es

    async def test_purge(self, events: EventStore) -> None:
        t = new_id()
        await events.append_events([event(t, "x", T0 + i) for i in range(5)])
        assert await events.purge_events(before=T0 + 2) == 2
        assert [e.timestamp for e in await events.query_events()] == [T0 + 2, T0 + 3, T0 + 4]
