"""The task lifecycle end to end, through the public API, on every task-queue backend.

Every test runs once per URL in ``TASK_QUEUE_URLS``; a new backend (PostgreSQL, Redis, NATS)
joins by adding its URL there and must pass the same tests. Real workers throughout (thread
workers for most, process / async workers where the behaviour is theirs), no mocks. Effects
are observed through results, events and files written by the tasks into ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from omniq import AsyncOmniQ, OmniQ, TaskError, TaskStatus
from omniq.errors import ConfigError, TaskCancelled, TaskExpired, WorkerDied

from . import helpers  # light to import: process children load task functions from it
from .workers.common import wait_for

PG = os.environ.get("OMNIQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("OMNIQ_TEST_REDIS", "redis://127.0.0.1:6379/0")
NATS = os.environ.get("OMNIQ_TEST_NATS", "nats://127.0.0.1:4222")


def _param(base: str, param: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}{param}"


#: Task-queue URLs every test here runs on. ``{tmp}`` is a fresh directory per test, ``{uid}``
#: a fresh name (a schema, key prefix or namespace of its own on a server, dropped after the
#: test). ``memory://`` runs as a *named* in-process queue: a bare ``memory://`` is private to
#: one OmniQ, and these tests open a second instance on the same storage. A server backend is
#: skipped when its server does not answer (``OMNIQ_TEST_POSTGRES_URL``, ``OMNIQ_TEST_REDIS``,
#: ``OMNIQ_TEST_NATS``), and marked slow: the module takes about 18 s per backend, so a local
#: ``-m "not slow"`` run keeps the three in-process ones (about 65 s); CI runs all six.
TASK_QUEUE_URLS = [
    "memory://lifecycle-{uid}",
    "sqlite:///{tmp}/l.db",
    "file://{tmp}/fq",
    pytest.param(_param(PG, "schema=omniq_l_{uid}"), id="postgresql", marks=pytest.mark.slow),
    pytest.param(_param(REDIS, "prefix=omniq-l-{uid}"), id="redis", marks=pytest.mark.slow),
    pytest.param(_param(NATS, "namespace=l{uid}"), id="nats", marks=pytest.mark.slow),
]
#: Backends a second OS process can reach (``memory://`` lives in this process only).
IN_PROCESS_ONLY = ("memory://",)

REPO = Path(__file__).resolve().parent.parent
S = TaskStatus
pytestmark = pytest.mark.timeout(90)  # a hang fails its test, not the whole run

_DRIVERS = {"postgresql": "asyncpg", "redis": "redis", "nats": "nats"}
_unreachable: dict[str, str | None] = {}


def _server_problem(url: str) -> str | None:
    """Why a server backend cannot run here (None when it can); asked once per scheme."""
    scheme = url.split(":", 1)[0]
    if scheme not in _DRIVERS:
        return None
    if scheme not in _unreachable:
        parts = urlsplit(url)
        problem = None
        if importlib.util.find_spec(_DRIVERS[scheme]) is None:
            problem = f"{_DRIVERS[scheme]} is not installed"
        else:
            try:
                socket.create_connection((parts.hostname or "127.0.0.1", parts.port), 1.0).close()
            except OSError as exc:
                problem = f"no server at {parts.hostname}:{parts.port} ({exc})"
        _unreachable[scheme] = problem
    return _unreachable[scheme]


def _drop(url: str) -> None:
    """Delete what a test left on a server: its schema, key prefix or namespace."""
    scheme, query = url.split(":", 1)[0], parse_qs(urlsplit(url).query)
    if scheme == "postgresql":
        import asyncpg

        async def drop_schema() -> None:
            conn = await asyncpg.connect(PG, timeout=10)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{query["schema"][0]}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop_schema())
    elif scheme == "redis":
        import redis

        r = redis.Redis.from_url(REDIS)
        keys = list(r.scan_iter(match=f"{query['prefix'][0]}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        r.close()
    elif scheme == "nats":
        from tests.storage.backends import drop_nats

        asyncio.run(drop_nats(url))


@pytest.fixture(params=TASK_QUEUE_URLS, ids=lambda u: u.split(":", 1)[0])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    problem = _server_problem(str(request.param))
    if problem:
        pytest.skip(problem)
    url = str(request.param).format(tmp=tmp_path, uid=uuid.uuid4().hex[:12])
    yield url
    if url.split(":", 1)[0] in _DRIVERS:
        _drop(url)


# --- task functions (module level: process workers import them by reference) ----------------


def noop(label: Any = None) -> Any:
    return label


def add(a: int, b: int) -> int:
    return a + b


def boom(msg: str) -> None:
    raise ValueError(f"bad value: {msg}")


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def touch(path: str, value: Any = None) -> Any:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return value


def sleep_then_touch(seconds: float, path: str) -> str:
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write("late")
    return "late"


async def async_sleep_then_touch(seconds: float, path: str) -> str:
    await asyncio.sleep(seconds)
    with open(path, "w") as f:
        f.write("late")
    return "late"


def fail_until(path: str, succeed_on: int) -> int:
    """Fail until called for the ``succeed_on``-th time (calls counted in ``path``)."""
    with open(path, "a") as f:
        f.write("x")
    n = os.path.getsize(path)
    if n < succeed_on:
        raise RuntimeError(f"flaky attempt {n}")
    return n


def die_once(path: str) -> str:
    """Kill its own process on the first delivery; succeed on the next."""
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        os._exit(3)
    return "survived"


def record_value(path: str) -> Callable[[Any], None]:
    def on_success(value: Any) -> None:
        with open(path, "a") as f:
            f.write(f"{value!r}\n")

    return on_success


def record_error(path: str) -> Callable[[TaskError], None]:
    def on_failure(err: TaskError) -> None:
        with open(path, "a") as f:
            f.write(f"{type(err).__name__}|{err.type}|{err.message}|{err.task_id}\n")

    return on_failure


# --- helpers --------------------------------------------------------------------------------


FINAL_EVENTS = {"succeeded", "failed", "cancelled", "expired"}


def events_of(oq: OmniQ, tid: str, timeout: float = 5.0) -> list[Any]:
    """The task's events once its final one is recorded. A result is stored before its final
    event is written, so a test that has just seen the result polls for a moment."""
    deadline = time.monotonic() + timeout
    while True:
        evs = oq.events(task_id=tid)
        if (evs and evs[-1].type in FINAL_EVENTS) or time.monotonic() > deadline:
            return evs
        time.sleep(0.02)


def types_of(oq: OmniQ, tid: str) -> list[str]:
    return [str(e.type) for e in events_of(oq, tid)]


def assert_events(oq: OmniQ, tid: str, expected: list[str], timeout: float = 5.0) -> None:
    """The task's event types, in time order, become ``expected``. Each instance writes its
    events in batches (every 50 ms), so another instance's may land a moment later."""
    deadline = time.monotonic() + timeout
    while (got := [e.type for e in oq.events(task_id=tid)]) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"events of {tid}: {got}, expected {expected}")
        time.sleep(0.02)
    assert all(type(t) is str for t in got), f"event types must be plain strings: {got!r}"


def final(oq: OmniQ, tid: str, timeout: float = 20.0) -> Any:
    r = oq.get_result(tid, wait=True, timeout=timeout)
    assert r is not None and r.status.is_final, r
    return r


def raised(r: Any) -> TaskError:
    """What ``handle.result()`` raises for this result."""
    return TaskError.from_info(r.task_id, r.error)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# --- priorities and named queues --------------------------------------------------------------


def test_priorities_run_strictly_higher_first_and_fifo_within_a_priority(url: str) -> None:
    plan = [(0, "a0"), (5, "b0"), (0, "a1"), (-1, "c0"), (5, "b1"), (10, "d0"), (0, "a2"),
            (5, "b2"), (-1, "c1"), (10, "d1")]
    with OmniQ(tasks=url, concurrency=0) as producer:
        ids = {producer.enqueue(noop, args=(label,), priority=p): label for p, label in plan}
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        results = {tid: final(oq, tid) for tid in ids}
        started = [e for e in oq.events(types=["started"]) if e.task_id in ids]
    expected = ["d0", "d1", "b0", "b1", "b2", "a0", "a1", "a2", "c0", "c1"]
    assert all(r.status is S.SUCCEEDED for r in results.values())
    by_start_time = sorted(ids, key=lambda tid: results[tid].started_at)
    assert [ids[t] for t in by_start_time] == expected
    assert [ids[e.task_id] for e in sorted(started, key=lambda e: e.timestamp)] == expected
    assert len(started) == len(ids)  # each ran once


def test_a_worker_for_queue_a_never_runs_queue_b(url: str) -> None:
    with OmniQ(tasks=url, concurrency=0) as producer, \
            OmniQ(tasks=url, worker="thread", concurrency=1, queues=["a"]) as oq:
        # (the producer stays open, so its events are written without racing its close)
        in_a = [producer.enqueue(noop, args=(i,), queue="a") for i in range(3)]
        in_b = [producer.enqueue(noop, args=(i,), queue="b") for i in range(3)]
        assert all(final(oq, t).status is S.SUCCEEDED for t in in_a)
        more_b = oq.enqueue(noop, queue="b")  # enqueued while the worker is idle
        time.sleep(0.6)
        for t in [*in_b, more_b]:
            assert oq.status(t) is S.QUEUED
            assert oq.get_result(t) is None
            assert [str(e.type) for e in oq.events(task_id=t)] == ["enqueued"]
        assert oq.health()["queues"]["b"].get("queued") == 4
    with OmniQ(tasks=url, worker="thread", concurrency=1, queues="b") as oq:
        assert [final(oq, t).value for t in in_b] == [0, 1, 2]
        assert final(oq, more_b).status is S.SUCCEEDED


def test_a_handle_for_a_finished_task_resolves_at_once(url: str) -> None:
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        tid = oq.enqueue(add, args=(2, 5))
        assert final(oq, tid).value == 7
        t0 = time.monotonic()
        assert oq.handle(tid).result(timeout=5) == 7
        assert time.monotonic() - t0 < 0.5, f"took {time.monotonic() - t0:.2f} s"


def test_closing_an_instance_while_another_works_returns_promptly(url: str) -> None:
    """A producer opened, used and closed again and again while a worker instance runs on the
    same storage (a notebook cell re-run, say): every close() returns."""
    with OmniQ(tasks=url, worker="thread", concurrency=1) as worker:
        ids = []
        for i in range(12):
            producer = OmniQ(tasks=url, concurrency=0).open()
            ids.append(producer.enqueue(noop, args=(i,)))
            closer = threading.Thread(target=producer.close, daemon=True)
            closer.start()
            closer.join(10)
            assert not closer.is_alive(), f"close() hung in round {i}"
        assert [final(worker, t).value for t in ids] == list(range(12))


def test_a_task_another_instance_ran_resolves_promptly_for_its_submitter(
    url: str, request: pytest.FixtureRequest
) -> None:
    """A notebook with workers of its own shares the queue with other workers: a task one of
    them ran resolves the notebook's handle soon after it finished, not seconds later."""
    with OmniQ(tasks=url, worker="thread", concurrency=1, queues=["mine"]) as me, \
            OmniQ(tasks=url, worker="thread", concurrency=1, queues=["theirs"]):
        lags = []
        for i in range(2):
            (h,) = me.map(noop, [i], queue="theirs")
            wait_for(h.done, timeout=5, what="the handle to resolve")
            lags.append(time.time() - h.get().finished_at)
        assert max(lags) < 0.5, f"handles resolved {[round(x, 2) for x in lags]} s after their tasks finished"


def test_instances_with_workers_on_one_storage_run_each_task_once(
    url: str, request: pytest.FixtureRequest
) -> None:
    """Two instances with workers at once, then a third after they closed, on one storage."""
    with OmniQ(tasks=url, worker="thread", concurrency=2) as a, \
            OmniQ(tasks=url, worker="thread", concurrency=2) as b:
        hs = a.map(noop, range(50)) + b.map(noop, range(50, 100))
        assert [h.result(30) for h in hs] == list(range(100))
        ids = {h.id for h in hs}
    with OmniQ(tasks=url, worker="thread", concurrency=1) as c:  # (closing wrote a's and b's events)
        started = [e for e in c.events(types=["started"]) if e.task_id in ids]
        assert len(started) == 100 and {e.task_id for e in started} == ids  # each ran once
        assert c.submit(add, 1, 2).result(5) == 3


def test_each_task_s_events_begin_with_enqueued_and_end_with_its_final_status(
    url: str, request: pytest.FixtureRequest
) -> None:
    with OmniQ(tasks=url, worker="thread", concurrency=2) as oq:
        ids = [oq.enqueue(noop, args=(i,)) for i in range(60)]
        assert all(final(oq, t).status is S.SUCCEEDED for t in ids)
        out_of_order = {}
        for t in ids:  # (one instance: its events were emitted before its results landed)
            types = [str(e.type) for e in oq.events(task_id=t)]
            if types != ["enqueued", "started", "succeeded"]:
                out_of_order[t] = types
        assert not out_of_order, f"{len(out_of_order)} of 60 tasks: {list(out_of_order.values())[:3]}"


def test_no_event_is_lost_when_an_instance_closes_right_after_enqueueing(
    url: str, request: pytest.FixtureRequest
) -> None:
    """A notebook cell that opens, enqueues and closes: the `enqueued` events it emitted are
    all written by the time close() returns, however slow the event store."""
    ids = []
    for _ in range(60):
        with OmniQ(tasks=url, concurrency=0) as producer:
            ids += [producer.enqueue(noop, args=(i,)) for i in range(3)]
    with OmniQ(tasks=url, concurrency=0) as reader:
        have = {e.task_id for e in reader.events(types=["enqueued"])}
    missing = [t for t in ids if t not in have]
    assert not missing, f"{len(missing)} of {len(ids)} tasks have no `enqueued` event"


# --- TTL --------------------------------------------------------------------------------------


def test_ttl_expires_a_task_that_never_started_and_cancels_its_dependents(url: str, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    ttl = 0.3
    with OmniQ(tasks=url, concurrency=0) as oq:
        (hx,) = oq.map(touch, [str(ran)], ttl=ttl)
        x = hx.id
        y = oq.enqueue(touch, args=(str(ran),), ttl=ttl)
        x_child = oq.enqueue(touch, args=(str(ran),), depends_on=[x])
        y_child = oq.enqueue(touch, args=(str(ran),), depends_on=[y])
        y_grandchild = oq.enqueue(touch, args=(str(ran),), depends_on=[y_child])
        assert oq.status(x) is S.QUEUED and oq.status(y_child) is S.PENDING
        rx = final(oq, x, timeout=10)
        assert rx.status is S.EXPIRED and rx.error.type == "TaskExpired"
        assert "ttl" in rx.error.message
        with pytest.raises(TaskExpired):
            hx.result(timeout=5)
        assert final(oq, y).status is S.EXPIRED
        for child, cause in [(x_child, x), (y_child, y), (y_grandchild, None)]:
            r = final(oq, child)
            assert r.status is S.CANCELLED and r.error.type == "TaskCancelled", r
            if cause is not None:
                assert cause in r.error.message, (child, cause, r.error.message)
        assert y in final(oq, y_grandchild).error.message or y_child in final(oq, y_grandchild).error.message
        # a worker opened afterwards never runs any of them
        with OmniQ(tasks=url, worker="thread", concurrency=1) as late_worker:
            assert late_worker.submit(noop, 1).result(10) == 1
            time.sleep(0.3)
            assert not ran.exists()
            assert late_worker.status(x) is S.EXPIRED and late_worker.status(x_child) is S.CANCELLED
            assert_events(late_worker, x, ["enqueued", "expired"])
            assert_events(late_worker, x_child, ["enqueued", "cancelled"])


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_ttl_counts_until_the_task_starts_not_until_it_is_claimed(
    url: str, worker: str, tmp_path: Path
) -> None:
    """A worker busy with a long task still claims (prefetches) the next one; if that one's
    TTL runs out before a slot frees up, it must expire rather than run late."""
    ran = tmp_path / "ran"
    with OmniQ(tasks=url, worker=worker, concurrency=1) as oq:
        blocker = oq.enqueue(helpers.sleep_return, args=(0.8,))
        late = oq.enqueue(helpers.touch_then_sleep, args=(str(ran), 0), ttl=0.3)
        assert final(oq, blocker).status is S.SUCCEEDED
        r = final(oq, late)
        assert r.status is S.EXPIRED and r.error.type == "TaskExpired", (r.status, r.started_at)
        assert not ran.exists()
        assert_events(oq, late, ["enqueued", "expired"])
        assert oq.submit(helpers.square, 3).result(20) == 9  # the worker goes on


# --- result TTL ------------------------------------------------------------------------------


def test_result_ttl_per_task_and_as_the_instance_default(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Results past their ``result_ttl`` (per task; else the default of the instance that
    created the task: constructor, then ``OMNIQ_RESULT_TTL``) are purged by the instance that
    is open anyway (a notebook's, for hours), not at a 60 s sweep; others are kept."""
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        time.sleep(0.6)  # past the housekeeping pass an instance makes when it opens
        short = oq.enqueue(add, args=(1, 1), result_ttl=0.3)
        longer = oq.enqueue(add, args=(6, 6), result_ttl=0.7)  # expires after the first purge
        kept = oq.enqueue(add, args=(2, 2))
        with OmniQ(tasks=url, concurrency=0, result_ttl=0.3) as producer:
            by_default = producer.enqueue(add, args=(3, 3))
            overridden = producer.enqueue(add, args=(4, 4), result_ttl=None)
        monkeypatch.setenv("OMNIQ_RESULT_TTL", "0.3")
        with OmniQ(tasks=url, concurrency=0) as producer:
            from_env = producer.enqueue(add, args=(5, 5))
        monkeypatch.delenv("OMNIQ_RESULT_TTL")
        expiring = (short, by_default, from_env, longer)
        for tid in expiring:
            r = final(oq, tid)
            assert r.expires_at == pytest.approx(r.finished_at + (0.7 if tid == longer else 0.3))
        assert final(oq, kept).expires_at is None and final(oq, overridden).expires_at is None
        left = lambda: [t for t in expiring if oq.get_result(t) is not None]  # noqa: E731
        wait_for(lambda: not left(), timeout=3, what=f"results past their ttl to be purged ({len(left())} left)")
        assert oq.get_result(kept).value == 4
        assert oq.get_result(overridden).value == 8


# --- dependencies ------------------------------------------------------------------------------


def test_dependent_waits_pending_until_every_dependency_succeeded(url: str) -> None:
    with OmniQ(tasks=url, worker="thread", concurrency=2) as oq:
        a = oq.enqueue(sleep_then, args=(0.6, "a"))
        b = oq.submit(sleep_then, 0.2, "b")
        c = oq.enqueue(add, args=(1, 2), depends_on=[a, b])  # an id and a handle
        d = oq.enqueue(add, args=(3, 4), depends_on=c)  # a single id
        assert oq.status(c) is S.PENDING and oq.status(d) is S.PENDING
        assert final(oq, b.id).status is S.SUCCEEDED
        assert oq.status(c) is S.PENDING  # a is still running
        ra, rb, rc, rd = (final(oq, t) for t in (a, b.id, c, d))
        assert (rc.value, rd.value) == (3, 7)
        assert rc.started_at >= max(ra.finished_at, rb.finished_at)
        assert rd.started_at >= rc.finished_at
        assert_events(oq, c, ["enqueued", "started", "succeeded"])
        # a dependency that already succeeded does not hold a new task back
        e = oq.enqueue(add, args=(5, 5), depends_on=[a])
        assert final(oq, e).value == 10


def test_failed_dependency_cancels_dependents_transitively(url: str) -> None:
    with OmniQ(tasks=url, concurrency=0) as producer:
        a = producer.enqueue(boom, args=("dep",))
        b = producer.enqueue(noop, depends_on=[a])
        c = producer.enqueue(noop, depends_on=[b])
        with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:  # a worker starts after
            assert final(oq, a).status is S.FAILED
            rb, rc = final(oq, b), final(oq, c)
            assert rb.status is S.CANCELLED and rc.status is S.CANCELLED
            assert a in rb.error.message and "did not succeed" in rb.error.message
            assert b in rc.error.message or a in rc.error.message
            assert isinstance(raised(rc), TaskCancelled)
            for t in (b, c):
                assert_events(oq, t, ["enqueued", "cancelled"])


def test_a_task_enqueued_after_its_dependency_failed_ends_cancelled_with_a_result(url: str) -> None:
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        a = oq.enqueue(boom, args=("dep",))
        assert final(oq, a).status is S.FAILED
        late = oq.enqueue(noop, depends_on=[a])
        r = final(oq, late, timeout=3)
        assert r.status is S.CANCELLED and a in r.error.message
        assert types_of(oq, late)[-1] == "cancelled"


def test_cancelled_dependency_cancels_dependents_transitively(url: str) -> None:
    with OmniQ(tasks=url, concurrency=0) as oq:
        a = oq.enqueue(noop)
        b = oq.enqueue(noop, depends_on=[a])
        c = oq.enqueue(noop, depends_on=[b])
        unrelated = oq.enqueue(noop)
        assert oq.cancel(a) is True
        ra, rb, rc = final(oq, a), final(oq, b), final(oq, c)
        assert ra.status is S.CANCELLED and ra.error.message == "cancelled by user"
        assert rb.status is S.CANCELLED and a in rb.error.message
        assert rc.status is S.CANCELLED and (a in rc.error.message or b in rc.error.message)
        assert oq.status(unrelated) is S.QUEUED
        for t in (a, b, c):
            assert_events(oq, t, ["enqueued", "cancelled"])


def test_unknown_dependencies_and_cycles_are_refused_at_enqueue(url: str) -> None:
    with OmniQ(tasks=url, concurrency=0) as oq:
        with pytest.raises(ConfigError, match="no-such-task"):
            oq.enqueue(noop, depends_on=["no-such-task"])
        with pytest.raises(ConfigError, match="depends_on"):
            oq.enqueue(noop, depends_on=[42])
        # a cycle cannot be written with enqueue (ids come back from it), only with built tasks
        core = oq.core
        t1, t2 = core.build_tasks(noop, [((), {}), ((), {})])
        t1.depends_on, t2.depends_on = (t2.id,), (t1.id,)
        t1.status = t2.status = S.PENDING
        f1, f2 = core.submit_tasks([t1, t2])
        with pytest.raises(ConfigError, match="circular"):
            f1.result(timeout=5)
        with pytest.raises(ConfigError):
            f2.result(timeout=5)
        # nothing was stored, and the queue still works
        assert oq.health()["queues"] == {}
        ok = oq.enqueue(noop)
        assert oq.status(ok) is S.QUEUED


def test_a_refused_enqueue_does_not_fail_tasks_submitted_alongside(url: str) -> None:
    """``submit`` buffers; a bad ``enqueue`` right after flushes the same batch. Only the bad
    task may fail."""

    async def main() -> tuple[Any, Any]:
        async with AsyncOmniQ(tasks=url, worker="thread", concurrency=1) as oq:
            good = await oq.submit(add, 20, 22)
            with pytest.raises(ConfigError):
                await oq.enqueue(noop, depends_on=["no-such-task"])
            try:
                value = await good.result(timeout=10)
            except Exception as exc:  # report what happened rather than a bare traceback
                value = exc
            return value, await oq.status(good.id) if not isinstance(value, Exception) else None

    value, _ = asyncio.run(main())
    assert value == 42, f"the good task failed with the bad one: {value!r}"


# --- callbacks ---------------------------------------------------------------------------------


def test_callbacks_run_as_tasks_of_their_own(url: str, tmp_path: Path) -> None:
    ok_log, err_log = tmp_path / "ok.log", tmp_path / "err.log"
    flaky = tmp_path / "flaky"
    with OmniQ(tasks=url, worker="thread", concurrency=2) as oq:
        good = oq.enqueue(add, args=(2, 3), on_success=record_value(str(ok_log)),
                          on_failure=record_error(str(err_log)))
        bad = oq.enqueue(boom, args=("cb",), retries=1, retry_delay=0.01,
                         on_success=record_value(str(ok_log)), on_failure=record_error(str(err_log)))
        recovered = oq.enqueue(fail_until, args=(str(flaky), 2), retries=2, retry_delay=0.01,
                               on_success=record_value(str(ok_log)))
        for t in (good, bad, recovered):
            final(oq, t)
        wait_for(lambda: ok_log.exists() and len(ok_log.read_text().splitlines()) == 2, what="on_success")
        wait_for(lambda: err_log.exists(), what="on_failure")
        time.sleep(0.3)  # nothing more arrives (one callback per task, not per attempt)
        assert sorted(ok_log.read_text().splitlines()) == ["2", "5"]
        (line,) = err_log.read_text().splitlines()
        assert line == f"TaskError|ValueError|bad value: cb|{bad}"
        # the callbacks were tasks: enqueued, started and finished with events of their own
        ours = {good, bad, recovered}
        enq = [e.task_id for e in oq.events(types=["enqueued"]) if e.task_id not in ours]
        assert len(enq) == 3
        for cb in enq:
            r = final(oq, cb)
            assert r.status is S.SUCCEEDED and r.metadata["callback_of"] in ours
            assert_events(oq, cb, ["enqueued", "started", "succeeded"])


# --- retries -----------------------------------------------------------------------------------

_RETRY_IN = re.compile(r"retry in ([0-9.]+) s")


def test_retries_back_off_exponentially_with_jitter(url: str, tmp_path: Path) -> None:
    with OmniQ(tasks=url, worker="thread", concurrency=3) as oq:
        tids = [oq.enqueue(boom, args=(f"r{i}",), retries=2, retry_delay=0.05) for i in range(6)]
        delays: list[list[float]] = []
        for tid in tids:
            r = final(oq, tid)
            assert r.status is S.FAILED and r.attempts == 3 and r.error.type == "ValueError"
            evs = events_of(oq, tid)
            assert [str(e.type) for e in evs] == ["enqueued", "started", "retry", "started", "retry",
                                                  "started", "failed"]
            retry_evs = [e for e in evs if e.type == "retry"]
            assert [e.detail.split(" (")[0] for e in retry_evs] == ["attempt 1 failed", "attempt 2 failed"]
            # the planned delay, as the event tells it (rounded to 10 ms)
            d = [float(_RETRY_IN.search(e.detail or "").group(1)) for e in retry_evs]  # type: ignore[union-attr]
            assert 0.03 <= d[0] <= 0.07 and 0.07 <= d[1] <= 0.13, d  # 0.05 * 2**k, +-25 %
            delays.append(d)
            # each retry starts no sooner than its back-off: the timestamps grow by at least it
            starts = [e.timestamp for e in evs if e.type == "started"]
            for k, rev in enumerate(retry_evs):
                assert starts[k + 1] - rev.timestamp >= d[k] - 0.006
            assert retry_evs[1].timestamp - retry_evs[0].timestamp >= d[0] - 0.006
        assert all(d[1] > d[0] for d in delays)  # grows: 2x the base, ranges do not overlap
        # jitter: the delays are not all the nominal ones and not all alike
        assert len({d[1] for d in delays}) >= 2, delays
        assert any(d != [0.05, 0.1] for d in delays), delays
        # a task that recovers: succeeded on its third attempt
        flaky = oq.enqueue(fail_until, args=(str(tmp_path / "f"), 3), retries=2, retry_delay=0.01)
        r = final(oq, flaky)
        assert r.status is S.SUCCEEDED and r.value == 3 and r.attempts == 3


def test_short_retry_delays_are_honoured_promptly(url: str, request: pytest.FixtureRequest) -> None:
    """A retry due in 50 ms should start within a few tens of ms of it, not at the next poll."""  # most runs, not all
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        tid = oq.enqueue(boom, args=("p",), retries=3, retry_delay=0.05)
        final(oq, tid)
        evs = events_of(oq, tid)
        retry_evs = [e for e in evs if e.type == "retry"]
        starts = [e.timestamp for e in evs if e.type == "started"]
        gaps = [starts[k + 1] - rev.timestamp for k, rev in enumerate(retry_evs)]
        planned = [float(_RETRY_IN.search(e.detail or "").group(1)) for e in retry_evs]  # type: ignore[union-attr]
        late = [round(g - p, 3) for g, p in zip(gaps, planned)]
        assert max(late) < 0.2, f"retries started late by {late} s (planned {planned})"


# --- timeouts ----------------------------------------------------------------------------------


def test_process_worker_timeout_kills_and_replaces_the_child(url: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with OmniQ(tasks=url, worker="process", concurrency=1) as oq:
        tid = oq.enqueue(helpers.touch_then_sleep, args=(str(pidfile), 30), timeout=0.5)
        t0 = time.monotonic()
        r = final(oq, tid)
        assert time.monotonic() - t0 < 10
        assert r.status is S.FAILED and r.error.type == "TaskTimeout"
        assert "timed out after 0.5 s" in r.error.message
        assert r.finished_at - r.started_at >= 0.45, (r.started_at, r.finished_at)  # it ran 0.5 s
        child = int(pidfile.read_text())
        wait_for(lambda: not pid_alive(child), timeout=5, what="the timed-out child to die")
        assert oq.submit(helpers.pid).result(20) != child  # a replacement runs the next task
        assert_events(oq, tid, ["enqueued", "started", "failed"])
        assert "timed out" in str(raised(r))


def test_async_worker_timeout_cancels_the_coroutine(url: str, tmp_path: Path) -> None:
    late = tmp_path / "late"
    with OmniQ(tasks=url, worker="async", concurrency=2) as oq:
        tid = oq.enqueue(async_sleep_then_touch, args=(0.6, str(late)), timeout=0.2)
        r = final(oq, tid)
        assert r.status is S.FAILED and r.error.type == "TaskTimeout" and "timed out" in r.error.message
        assert r.finished_at - r.started_at < 0.5
        time.sleep(0.6)
        assert not late.exists()  # cancelled: the coroutine never got past its sleep
        assert_events(oq, tid, ["enqueued", "started", "failed"])
        assert oq.submit(add, 1, 2).result(10) == 3


def test_thread_worker_timeout_fails_the_task_and_abandons_the_thread(url: str, tmp_path: Path) -> None:
    late = tmp_path / "late"
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        tid = oq.enqueue(sleep_then_touch, args=(0.8, str(late)), timeout=0.2)
        t0 = time.monotonic()
        r = final(oq, tid)
        assert time.monotonic() - t0 < 0.7  # reported at the timeout, not when the thread ends
        assert r.status is S.FAILED and r.error.type == "TaskTimeout" and "timed out" in r.error.message
        # the one slot was replaced: the next task runs while the abandoned thread still sleeps
        assert oq.submit(add, 2, 2).result(0.5) == 4
        assert not late.exists()
        wait_for(late.exists, timeout=5, what="the abandoned thread to finish")
        time.sleep(0.2)
        r2 = oq.get_result(tid)
        assert r2.status is S.FAILED and r2.error.type == "TaskTimeout"  # its late value is discarded
        assert_events(oq, tid, ["enqueued", "started", "failed"])


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_a_queued_task(url: str, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    with OmniQ(tasks=url, concurrency=0) as oq:
        tid = oq.enqueue(touch, args=(str(ran),))
        h = oq.submit(touch, str(ran))
        assert oq.cancel(tid) is True and h.cancel() is True
        for t in (tid, h.id):
            r = final(oq, t, timeout=5)
            assert r.status is S.CANCELLED and r.error.type == "TaskCancelled"
            assert r.error.message == "cancelled by user"
            assert_events(oq, t, ["enqueued", "cancelled"])
        with pytest.raises(TaskCancelled, match="cancelled by user"):
            h.result(timeout=5)
        assert oq.cancel(tid) is False  # already final
        with pytest.raises(ConfigError):
            oq.status("no-such-task")
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        assert oq.submit(noop, 1).result(10) == 1
        assert not ran.exists()


def test_cancel_a_running_task_terminates_its_process_child(url: str, tmp_path: Path) -> None:
    with OmniQ(tasks=url, worker="process", concurrency=1) as oq:
        pidfile = tmp_path / "pid1"
        tid = oq.enqueue(helpers.touch_then_sleep, args=(str(pidfile), 30))
        wait_for(pidfile.exists, what="the task to start")
        child = int(pidfile.read_text())
        assert oq.status(tid) is S.RUNNING
        assert oq.cancel(tid) is True
        r = final(oq, tid, timeout=10)
        assert r.status is S.CANCELLED and r.error.message == "cancelled by user"
        wait_for(lambda: not pid_alive(child), timeout=5, what="the child to be terminated")
        assert_events(oq, tid, ["enqueued", "started", "cancelled"])
        # cancelled from another instance (no workers): the running worker notices and stops it
        pidfile2 = tmp_path / "pid2"
        tid2 = oq.enqueue(helpers.touch_then_sleep, args=(str(pidfile2), 30))
        wait_for(pidfile2.exists, what="the second task to start")
        child2 = int(pidfile2.read_text())
        assert child2 != child
        with OmniQ(tasks=url, concurrency=0) as other:
            assert other.cancel(tid2) is True
            r2 = final(other, tid2, timeout=10)
        assert r2.status is S.CANCELLED and r2.error.message == "cancelled by user"
        wait_for(lambda: not pid_alive(child2), timeout=5, what="the second child to be terminated")
        assert oq.submit(add, 1, 1).result(20) == 2


# --- worker death -------------------------------------------------------------------------------


def test_a_killed_child_is_delivered_again_up_to_max_deliveries(url: str, tmp_path: Path) -> None:
    marker = tmp_path / "died-once"
    with OmniQ(tasks=url, worker="process", concurrency=1, max_deliveries=2) as oq:
        dead = oq.enqueue(helpers.die, retries=0)
        r = final(oq, dead, timeout=30)
        assert r.status is S.FAILED and r.error.type == "WorkerDied"
        assert isinstance(raised(r), WorkerDied)
        assert_events(oq, dead, ["enqueued", "started", "requeued", "started", "failed"])
        # death is not failure: redelivered although retries=0, and then it succeeds
        once = oq.enqueue(die_once, args=(str(marker),), retries=0)
        r = final(oq, once, timeout=30)
        assert r.status is S.SUCCEEDED and r.value == "survived" and r.attempts == 1
        assert_events(oq, once, ["enqueued", "started", "requeued", "started", "succeeded"])
        assert oq.submit(add, 1, 1).result(20) == 2


def _worker_cli(url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "process",
         "-c", "1", "--lease", "1", *extra],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,  # (nobody reads it)
        start_new_session=True,
    )


def test_a_task_of_a_killed_omniq_worker_runs_again_elsewhere(url: str, tmp_path: Path) -> None:
    if url.startswith(IN_PROCESS_ONLY):
        pytest.skip("an `omniq worker` process cannot reach this process's memory:// queue")
    started = tmp_path / "started"
    with OmniQ(tasks=url, concurrency=0, lease=1) as oq:
        tid = oq.enqueue(helpers.touch_then_sleep, args=(str(started), 1.0), retries=0)
        proc = _worker_cli(url)
        try:
            wait_for(started.exists, timeout=30, what="the `omniq worker` to start the task")
            first_child = int(started.read_text())
            assert oq.status(tid) is S.RUNNING
            # (a SIGKILL loses what the worker had not written yet: let its `started` land first)
            wait_for(lambda: "started" in [str(e.type) for e in oq.events(task_id=tid)], timeout=5,
                     what="the worker's started event")
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and its child, mid-task
            proc.wait(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        wait_for(lambda: not pid_alive(first_child), timeout=5, what="the killed child to go")
        t_kill = time.time()
        with OmniQ(tasks=url, worker="thread", concurrency=1, lease=1) as rescuer:
            r = final(rescuer, tid, timeout=20)
            assert r.status is S.SUCCEEDED and r.value == 1.0
            assert r.started_at - t_kill < 5  # after the lease lapsed, not much later
            evs = events_of(rescuer, tid)
            types = [str(e.type) for e in evs]
            assert types == ["enqueued", "started", "requeued", "started", "succeeded"], types
            starts = [e for e in evs if e.type == "started"]
            assert starts[0].worker != starts[1].worker
            assert "lease" in (next(e for e in evs if e.type == "requeued").detail or "")
            dead = [w for w in rescuer.health()["workers"] if w["id"] == starts[0].worker]
            assert all(not w["alive"] for w in dead)
