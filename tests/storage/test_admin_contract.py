"""The operators' part of the storage contract (``oq.tasks`` / ``task`` / ``retry`` / ``purge``):
``list_tasks``, ``requeue``, ``purge_tasks`` and ``purge_events(task_ids=)``, on every backend URL
of conftest.py (the ``queue`` and ``events`` fixtures)."""

from __future__ import annotations

import pytest

from omniq.ids import new_ids
from omniq.models import Task, TaskEvent, TaskStatus
from omniq.serialization import dumps_call, set_secret_keys
from omniq.serialization._seals import check_task, seal_tasks
from omniq.storage.base import EventStore, TaskQueue

pytestmark = pytest.mark.anyio

T0 = 1_000_000.0
S = TaskStatus


def tasks(n: int, **kw: object) -> list[Task]:
    """``n`` tasks with increasing ids (oldest first)."""
    kw.setdefault("payload", b"payload")
    kw.setdefault("created_at", T0)
    return [Task(id=i, **kw) for i in new_ids(n)]  # type: ignore[arg-type]


async def run_to(q: TaskQueue, ts: list[Task], status: TaskStatus, now: float = T0) -> None:
    """Claim ``ts`` (each the oldest queued of its queue) and end them with ``status``."""
    for t in ts:
        got = await q.claim("w1", queues=[t.queue], limit=1, lease=30.0, now=now)
        assert [g.id for g in got] == [t.id]
    await q.finish("w1", [(t.id, status) for t in ts], now=now)


def ids(page: list[Task]) -> list[str]:
    return [t.id for t in page]


class TestListTasks:
    async def test_newest_first_and_paged_by_before(self, queue: TaskQueue) -> None:
        ts = tasks(7)
        await queue.enqueue(ts)
        newest_first = [t.id for t in reversed(ts)]
        assert ids(await queue.list_tasks()) == newest_first
        first = await queue.list_tasks(limit=3)
        assert ids(first) == newest_first[:3]
        second = await queue.list_tasks(limit=3, before=first[-1].id)
        assert ids(second) == newest_first[3:6]
        third = await queue.list_tasks(limit=3, before=second[-1].id)
        assert ids(third) == newest_first[6:]
        assert await queue.list_tasks(limit=3, before=third[-1].id) == []
        assert await queue.list_tasks(limit=0) == []

    async def test_records_come_whole(self, queue: TaskQueue) -> None:
        (t,) = tasks(1, name="mod.fit", queue="gpu", priority=4, metadata={"sweep": "s1"}, key="k/1")
        await queue.enqueue([t])
        (got,) = await queue.list_tasks()
        assert (got.id, got.name, got.queue, got.priority, got.status) == (t.id, "mod.fit", "gpu", 4, S.QUEUED)
        assert got.metadata == {"sweep": "s1"} and got.key == "k/1" and got.payload == b"payload"

    async def test_filters_by_status_queue_and_name(self, queue: TaskQueue) -> None:
        a = tasks(3, queue="a", name="f")
        b = tasks(3, queue="b", name="g")
        await queue.enqueue(a + b)
        await run_to(queue, [a[0], b[0]], S.FAILED)
        await run_to(queue, [a[1]], S.SUCCEEDED)
        assert ids(await queue.list_tasks(statuses={S.FAILED})) == [b[0].id, a[0].id]
        assert ids(await queue.list_tasks(statuses={S.FAILED, S.SUCCEEDED})) == [b[0].id, a[1].id, a[0].id]
        assert ids(await queue.list_tasks(statuses={S.QUEUED}, queue="b")) == [b[2].id, b[1].id]
        assert ids(await queue.list_tasks(queue="a")) == [a[2].id, a[1].id, a[0].id]
        assert ids(await queue.list_tasks(queue="a", limit=2, before=a[2].id)) == [a[1].id, a[0].id]
        assert ids(await queue.list_tasks(name="g")) == [b[2].id, b[1].id, b[0].id]
        assert ids(await queue.list_tasks(name="g", statuses={S.FAILED})) == [b[0].id]
        assert await queue.list_tasks(name="nobody") == []
        assert await queue.list_tasks(queue="c") == []
        assert await queue.list_tasks(statuses={S.RUNNING}) == []

    async def test_name_filter_reads_on_until_the_page_is_full(self, queue: TaskQueue) -> None:
        wanted = tasks(3, name="rare")
        others = tasks(300, name="common")
        await queue.enqueue(wanted + others)  # the wanted ones are the oldest
        page = await queue.list_tasks(name="rare", limit=2)
        assert ids(page) == [wanted[2].id, wanted[1].id]
        assert ids(await queue.list_tasks(name="rare", before=page[-1].id)) == [wanted[0].id]


class TestRequeue:
    async def test_a_failed_task_runs_again_under_its_id(self, queue: TaskQueue) -> None:
        (t,) = tasks(1, retries=0)
        await queue.enqueue([t])
        await run_to(queue, [t], S.FAILED)
        assert await queue.requeue(t.id, now=T0 + 1, attempts=1) is S.FAILED
        assert (await queue.statuses([t.id]))[t.id] is S.QUEUED
        (got,) = await queue.claim("w2", queues=None, limit=5, lease=30.0, now=T0 + 2)
        assert got.id == t.id and got.attempts == 1 and got.deliveries == 1 and got.worker == "w2"
        assert not got.cancel_requested
        await queue.finish("w2", [(t.id, S.SUCCEEDED)], now=T0 + 3)
        assert (await queue.statuses([t.id]))[t.id] is S.SUCCEEDED

    async def test_only_final_unsuccessful_tasks(self, queue: TaskQueue) -> None:
        done, waiting, running = tasks(3)
        await queue.enqueue([done, waiting, running])
        await run_to(queue, [done], S.SUCCEEDED)
        await queue.claim("w1", queues=None, limit=1, lease=30.0, now=T0)  # waiting? no: oldest first
        st = await queue.statuses([waiting.id, running.id])
        running_id = next(i for i, s in st.items() if s is S.RUNNING)
        queued_id = next(i for i, s in st.items() if s is S.QUEUED)
        assert await queue.requeue(done.id, now=T0, attempts=1) is S.SUCCEEDED
        assert await queue.requeue(running_id, now=T0, attempts=1) is S.RUNNING
        assert await queue.requeue(queued_id, now=T0, attempts=1) is S.QUEUED
        assert await queue.requeue("no-such-task", now=T0, attempts=1) is None
        assert await queue.statuses([done.id, running_id, queued_id]) == {
            done.id: S.SUCCEEDED, running_id: S.RUNNING, queued_id: S.QUEUED,
        }
        assert await queue.requeue(done.id, now=T0, attempts=1) is S.SUCCEEDED  # twice: same

    async def test_cancelled_and_expired_tasks(self, queue: TaskQueue) -> None:
        (c,) = tasks(1)
        (e,) = tasks(1, expires_at=T0 + 5)
        (dep,) = tasks(1)
        child = Task(id=new_ids(1)[0], payload=b"p", created_at=T0, status=S.PENDING, depends_on=(dep.id,))
        await queue.enqueue([c, e, dep, child])
        await queue.cancel([c.id, dep.id], now=T0)
        assert (await queue.statuses([child.id]))[child.id] is S.CANCELLED  # its dependency was
        expired = await queue.expire(now=T0 + 10)
        assert [t.id for t in expired] == [e.id]
        assert await queue.requeue(c.id, now=T0 + 20, attempts=0) is S.CANCELLED
        assert await queue.requeue(e.id, now=T0 + 20, attempts=0) is S.EXPIRED
        assert await queue.requeue(child.id, now=T0 + 20, attempts=0) is S.CANCELLED
        got = await queue.claim("w1", queues=None, limit=10, lease=30.0, now=T0 + 30)
        assert sorted(t.id for t in got) == sorted([c.id, e.id, child.id])  # e: its ttl is gone
        assert all(t.expires_at is None for t in got if t.id == e.id)
        assert await queue.expire(now=T0 + 1000) == []

    async def test_a_sealed_task_still_passes_its_seal(self, queue: TaskQueue) -> None:
        set_secret_keys("k" * 32)
        try:
            t = Task(id=new_ids(1)[0], payload=dumps_call(max, (1, 2)), created_at=T0, retries=2,
                     expires_at=T0 + 5)
            seal_tasks([t])
            await queue.enqueue([t])
            await queue.expire(now=T0 + 10)
            assert await queue.requeue(t.id, now=T0 + 20, attempts=3) is S.EXPIRED
            (got,) = await queue.claim("w1", queues=None, limit=1, lease=30.0, now=T0 + 20)
            check_task(got)  # raises SignatureError if the requeue changed a sealed field
            assert got.attempts == 3
        finally:
            set_secret_keys(None)


class TestPurgeTasks:
    async def test_by_age_and_status_returning_ids(self, queue: TaskQueue) -> None:
        ok, bad, gone, fresh, live = tasks(5)
        await queue.enqueue([ok, bad, gone, fresh, live])
        await run_to(queue, [ok], S.SUCCEEDED, now=T0)
        await run_to(queue, [bad], S.FAILED, now=T0)
        await queue.cancel([gone.id], now=T0)
        await run_to(queue, [fresh], S.FAILED, now=T0 + 100)
        assert await queue.purge_tasks(before=T0 + 50, statuses={S.FAILED, S.CANCELLED}) in (
            [bad.id, gone.id], [gone.id, bad.id])
        assert await queue.purge_tasks(before=T0 + 50, statuses={S.QUEUED}) == []
        assert await queue.purge_tasks(before=T0 + 50) == [ok.id]
        assert ids(await queue.list_tasks()) == [live.id, fresh.id]
        assert await queue.purge(before=T0 + 1000) == 1  # the old interface: a count
        assert ids(await queue.list_tasks()) == [live.id]


class TestPurgeEvents:
    async def test_only_the_given_tasks(self, events: EventStore) -> None:
        a, b = new_ids(2)
        evs = [TaskEvent(task_id=t, type=k, timestamp=T0 + i)
               for i, (t, k) in enumerate([(a, "enqueued"), (b, "enqueued"), (a, "started"),
                                           (b, "started"), (a, "failed")])]
        await events.append_events(evs)
        assert await events.purge_events(before=T0 + 3, task_ids=[a, "unknown"]) == 2  # not a's "failed"
        left = await events.query_events()
        assert [(e.task_id, e.type) for e in left] == [(b, "enqueued"), (b, "started"), (a, "failed")]
        assert await events.purge_events(before=T0 + 100, task_ids=[a]) == 1
        assert [e.task_id for e in await events.query_events()] == [b, b]
        assert await events.purge_events(before=T0 + 100, task_ids=[]) == 0


@pytest.mark.parametrize(("statuses", "by_queue"), [
    (None, False), (("failed",), True), (("failed", "queued"), True), (None, True), (("queued",), True),
])
def test_sqlite_pages_read_index_ranges(tmp_path, statuses: tuple[str, ...] | None, by_queue: bool) -> None:
    """Every ``oq.tasks()`` statement is index range reads (bounded by the limit), never a scan
    of the tasks table: a page costs the same with 10 or 1,000,000 tasks (the figure is in
    benchmarks/bench_tasks_page.py)."""
    import sqlite3

    from omniq.storage.sqlite.queries import PAGE_TOP, SCHEMA, page_sql

    db = sqlite3.connect(tmp_path / "plan.db")
    for statement in SCHEMA.split(";"):
        db.execute(statement)
    params: tuple[object, ...] = (PAGE_TOP, 100, "q") if by_queue else (PAGE_TOP, 100)
    plan = [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + page_sql(statuses, by_queue), params)]
    reads = [p for p in plan if "omniq_tasks" in p]
    assert reads and all(p.startswith("SEARCH omniq_tasks USING") and ("seq<?" in p or "rowid<?" in p)
                         for p in reads), plan
    index = "INDEX omniq_tasks_by_queue_seq" if by_queue else "INTEGER PRIMARY KEY"
    assert all(index in p for p in reads), plan
    # a page by status alone reads one such range per queue: the queues are found by hopping
    # along the same index, never by a scan
    from omniq.storage.sqlite.queries import QUEUE_NAMES

    hops = [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + QUEUE_NAMES)]
    assert not any(p.startswith("SCAN omniq_tasks") for p in hops), hops
    assert any("omniq_tasks_by_queue_seq" in p for p in hops), hops


def test_sqlite_claims_keep_their_partial_indexes(tmp_path) -> None:
    """The oq.tasks() indexes are on ``status || ''``: a claim, a reap or an expiry (which say
    ``status = '...'``) is never planned on them instead of its partial index (with an index on
    (status, id), a claim sorted every queued task: 40x slower at 200,000 queued)."""
    import sqlite3

    from omniq.storage.sqlite import queries as q

    db = sqlite3.connect(tmp_path / "plan.db")
    for statement in q.SCHEMA.split(";"):
        db.execute(statement)
    for sql, params, index in [
        (q.CLAIM, ("w", 1.0, 1.0, 10), "omniq_tasks_ready"),
        (q.claim_sql(2), ("w", 1.0, 1.0, 10, "a", "b"), "omniq_tasks_ready_by_queue"),
        (q.CLAIMABLE, (1.0,), "omniq_tasks_ready"), (q.NEXT_DUE, (), "omniq_tasks_due"),
        (q.PROMOTE_DUE, (1.0,), "omniq_tasks_due"), (q.LAPSED_LEASES, (1.0,), "omniq_tasks_leases"),
        (q.OVERRUN, (1.0, 10), "omniq_tasks_leases"), (q.EXPIRE, (1.0,), "omniq_tasks_expiry"),
    ]:
        plan = [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
        reads = [p for p in plan if p.startswith(("SEARCH omniq_tasks USING INDEX", "SCAN omniq_tasks"))]
        assert reads and any(f"INDEX {index}" in p for p in reads), plan
        assert not any("omniq_tasks_by_" in p for p in reads), plan  # never an oq.tasks() index


async def test_redis_lists_tasks_an_older_omniq_stored() -> None:
    """Redis keeps oq.tasks() sets (``P:ix:*``) that an older OmniQ did not write: the first
    list of a namespace puts the tasks it finds into them."""
    import redis

    from omniq.storage.redis import RedisBackend

    from .backends import REDIS_URL, SERVERS

    problem, fresh = SERVERS["redis"]
    if problem() is not None:
        pytest.skip(problem())
    with fresh() as url:
        ts = tasks(3, queue="old")
        first = RedisBackend(url)
        await first.connect()
        try:
            await first.enqueue(ts)
            await run_to(first, [ts[0]], S.FAILED)
        finally:
            await first.close()
        prefix = url.split("prefix=")[1]
        r = redis.Redis.from_url(REDIS_URL)
        gone = [k for k in r.scan_iter(match=f"{prefix}:ix:*")]
        assert gone and r.delete(*gone) == len(gone)  # as an older OmniQ left the namespace
        second = RedisBackend(url)
        await second.connect()
        try:
            assert ids(await second.list_tasks()) == [t.id for t in reversed(ts)]
            assert ids(await second.list_tasks(statuses={S.FAILED}, queue="old")) == [ts[0].id]
            assert r.exists(f"{prefix}:ix:v")
        finally:
            await second.close()
