"""``key=``: an idempotency key on enqueue, map and built tasks, through the whole API.

While a task with the key is pending, queued or running, or once it succeeded, enqueueing again
gives that task's id (no new task); after failure, cancel or expiry a new task is made. The
storage contract (tests/storage/test_contract.py, TestIdempotencyKeys) checks every backend;
here: what callers see (ids, handles, results, events, cancel) and bad input.
"""

from __future__ import annotations

import time

import anyio
import pytest

from omniq import AsyncOmniQ, OmniQ, TaskStatus
from omniq.errors import ConfigError, TaskCancelled
from omniq.ids import new_id


def add(a, b):
    return a + b


def slow(seconds, value=None):
    time.sleep(seconds)
    return value if value is not None else seconds


def boom():
    raise ValueError("no")


def double(x):
    return 2 * x


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path}/q.db"


@pytest.fixture(params=["sqlite", "memory"])
def url(request, tmp_path):
    return f"sqlite:///{tmp_path}/q.db" if request.param == "sqlite" else f"memory://keys-{new_id()}"


def test_enqueue_with_a_held_key_returns_the_holders_id(url):
    with OmniQ(tasks=url, concurrency=0) as producer:
        first = producer.enqueue(add, args=(1, 2), key="job-1")
        assert producer.enqueue(add, args=(5, 5), key="job-1") == first  # queued: held
        other = producer.enqueue(add, args=(1, 2), key="job-2")
        assert other != first
        assert producer.health()["queues"]["default"] == {"queued": 2}
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        assert oq.get_result(first, wait=True, timeout=30).value == 3
        assert oq.enqueue(add, args=(9, 9), key="job-1") == first  # succeeded: still held
        assert oq.get_result(first).value == 3


def test_after_a_failure_the_key_makes_a_new_task(db):
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        failed = oq.enqueue(boom, key="k")
        assert oq.get_result(failed, wait=True, timeout=30).status is TaskStatus.FAILED
        again = oq.enqueue(add, args=(2, 2), key="k")
        assert again != failed
        assert oq.get_result(again, wait=True, timeout=30).value == 4
        assert oq.enqueue(add, args=(3, 3), key="k") == again


def test_map_handles_of_duplicates_follow_the_existing_task(db):
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        running = oq.enqueue(slow, args=(0.5, "first"), key="a")
        hs = oq.map(double, [1, 2], key=lambda x: "a" if x == 1 else "b")  # a is held, b is new
        new_a = hs[0]._id
        oq.flush()
        assert hs[0].id == running and hs[1].id == hs[1]._id != running
        assert [h.result(30) for h in hs] == ["first", 4]
        r = oq.get_result(new_a)  # the first id works too, and names the task that ran
        assert r is not None and r.task_id == running and r.value == "first"
        assert oq.status(new_a) is TaskStatus.SUCCEEDED


def test_status_and_cancel_of_a_duplicate_act_on_the_existing_task(db):
    with OmniQ(tasks=db, concurrency=0) as oq:
        held = oq.enqueue(add, args=(1, 1), key="c")
        [h] = oq.map(double, [7], key=["c"])
        assert h.status() is TaskStatus.QUEUED  # flushes, then asks about the holder
        assert h.id == held
        assert h.cancel()
        with pytest.raises(TaskCancelled):
            h.result(10)
        assert oq.status(held) is TaskStatus.CANCELLED
        again = oq.enqueue(add, args=(1, 1), key="c")  # cancelled: the key is free
        assert again != held


def test_a_duplicate_waits_for_a_task_another_instance_runs(db):
    with OmniQ(tasks=db, concurrency=0) as producer:
        tid = producer.enqueue(slow, args=(0.3, 42), key="elsewhere")
        with OmniQ(tasks=db, worker="process", concurrency=1) as worker:
            [h] = producer.map(slow, [5], key=["elsewhere"])
            assert h.result(30) == 42  # read from storage by the pickup loop
            assert h.id == tid
            assert worker.get_result(tid).value == 42


def test_enqueued_event_names_the_key_and_duplicates_make_none(db):
    with OmniQ(tasks=db, concurrency=0) as oq:
        tid = oq.enqueue(add, args=(1, 1), key="ev")
        dup = oq.enqueue(add, args=(1, 1), key="ev")
        assert dup == tid
        events = oq.events()
        assert [(e.task_id, e.type, e.detail) for e in events] == [(tid, "enqueued", "key ev")]
        [h] = oq.map(add, [1], key=["ev"])
        oq.flush()
        assert oq.events(task_id=h._id) == events  # a duplicate's id names its holder's events


def test_bad_keys_are_named(db):
    with OmniQ(tasks=db, concurrency=0) as oq:
        for bad in ("", 3, b"k"):
            with pytest.raises(ConfigError, match="key"):
                oq.enqueue(add, args=(1, 1), key=bad)
        with pytest.raises(ConfigError, match="one key per item"):
            oq.map(add, [1, 2], key="same-for-all")
        with pytest.raises(ConfigError, match="key has 1 entries for 2 items"):
            oq.map(add, [1, 2], key=["x"])
        with pytest.raises(ConfigError, match="non-empty str"):
            oq.map(add, [1, 2], key=["x", 5])
        with pytest.raises(ConfigError, match="chunksize"):
            oq.map(add, [1, 2], key=["x", "y"], chunksize=2)
        with pytest.raises(ConfigError, match="keys"):
            oq.core.build_tasks(add, [((1, 1), {})], keys="k")
        with pytest.raises(ConfigError, match="keys contains"):
            oq.core.build_tasks(add, [((1, 1), {}), ((2, 2), {})], keys=["k", ""])


def test_async_enqueue_and_handles(tmp_path):
    async def main() -> None:
        async with AsyncOmniQ(tasks=f"sqlite:///{tmp_path}/a.db", worker="async", concurrency=0) as oq:
            a = await oq.enqueue(add, args=(1, 2), key="x")
            assert await oq.enqueue(add, args=(3, 4), key="x") == a
            [h] = await oq.map(double, [1], key=["x"])
            await oq.flush()
            assert h.id == a
            assert await h.status() is TaskStatus.QUEUED
            assert await oq.status(h.id) is TaskStatus.QUEUED
            handle = oq.handle(a)
            assert handle.id == a

    anyio.run(main)


def test_a_duplicate_submitted_while_the_holder_runs_gets_its_value(db):
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        first = oq.enqueue(slow, args=(0.3,), key="late")
        time.sleep(0.1)  # running now
        [h] = oq.map(slow, [0.1], key=["late"])
        oq.flush()
        assert h.id == first
        assert h.result(30) == 0.3
        assert oq.map(slow, [], key=[]) == []  # an empty map is fine
