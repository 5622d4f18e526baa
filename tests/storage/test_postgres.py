"""PostgreSQL backend: the whole shared contract suite, plus real worker processes.

Needs a PostgreSQL server: ``OMNIQ_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); the module is skipped when it cannot be reached.
Every test gets its own schema (``?schema=omniq_t_<random>``), dropped afterwards, so tests
never see each other's tasks and can run while other suites use the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from omniq.errors import ConfigError, StorageError
from omniq.ids import new_id
from omniq.models import Task, TaskStatus
from omniq.storage.base import EventStore, ResultStore, TaskQueue
from omniq.storage.urls import open_backends

from .backends import (
    PG_URL,
    drop_schema_async,
    fresh_postgres,
    postgres_problem,
    schema_url,
)
from .records import T0
from .workers import Workers, wait_for_workers

_PROBLEM = postgres_problem()
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or ""),
]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL of a schema private to this test; the schema is dropped afterwards."""
    with fresh_postgres() as url:
        yield url


# --- the contract suite on PostgreSQL: these override the conftest fixtures ------------------------


@pytest.fixture
async def queue(pg_url: str) -> AsyncIterator[TaskQueue]:
    tq, _, _ = open_backends(pg_url)
    await tq.connect()
    try:
        yield tq
    finally:
        await tq.close()


@pytest.fixture
async def results(pg_url: str) -> AsyncIterator[ResultStore]:
    _, store, _ = open_backends(pg_url)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def events(pg_url: str) -> AsyncIterator[EventStore]:
    _, _, store = open_backends(pg_url)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def url_of(pg_url: str) -> Callable[[str], str]:
    """Any template names this test's schema (for contract tests that open URLs themselves)."""
    return lambda template: pg_url


# --- PostgreSQL specifics ------------------------------------------------------------------------


class TestPostgresSpecifics:
    async def test_second_backend_on_the_same_url_sees_the_same_tasks(self, pg_url: str) -> None:
        a, _, _ = open_backends(pg_url)
        b, _, _ = open_backends(pg_url)
        await a.connect()
        await b.connect()
        try:
            t = Task(id=new_id(), payload=b"x", created_at=T0)
            await a.enqueue([t])
            got = await b.claim("w2", queues=None, limit=5, lease=10.0, now=T0)
            assert [x.id for x in got] == [t.id]
            assert await a.claim("w1", queues=None, limit=5, lease=10.0, now=T0) == []
        finally:
            await a.close()
            await b.close()

    async def test_schemas_are_isolated(self, pg_url: str) -> None:
        other = f"omniq_t_{uuid.uuid4().hex[:12]}"
        a, _, _ = open_backends(pg_url)
        b, _, _ = open_backends(schema_url(other))
        await a.connect()
        await b.connect()
        try:
            await a.enqueue([Task(id=new_id(), payload=b"x")])
            assert await b.counts() == {}
            assert list(await a.counts()) == ["default"]
        finally:
            await a.close()
            await b.close()
            await drop_schema_async(other)

    async def test_notify_wakes_a_waiter_in_another_backend(self, pg_url: str) -> None:
        a, _, _ = open_backends(pg_url)
        b, _, _ = open_backends(pg_url)
        await a.connect()
        await b.connect()
        try:
            started = time.monotonic()

            async def later() -> None:
                await anyio.sleep(0.1)
                await a.enqueue([Task(id=new_id(), payload=b"x")])

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(later)
                    await b.wait_for_tasks(30.0)  # b was not told in-process: only NOTIFY
            assert time.monotonic() - started < 3
        finally:
            await a.close()
            await b.close()

    async def test_connection_refused_is_a_clear_storage_error(self) -> None:
        q, _, _ = open_backends("postgresql://someone:s3cret@127.0.0.1:1/nodb")
        with pytest.raises(StorageError) as info:
            await q.connect()
        message = str(info.value)
        assert "s3cret" not in message and "***" in message
        assert "connection refused" in message

    def test_bad_url_parameters_are_config_errors(self) -> None:
        with pytest.raises(ConfigError, match="schema"):
            open_backends(f"{PG_URL}?schema=no-dashes;")
        with pytest.raises(ConfigError, match="pool_size"):
            open_backends(f"{PG_URL}?pool_size=0")

    async def test_operations_survive_terminated_connections(self, pg_url: str) -> None:
        import asyncpg

        q, _, _ = open_backends(pg_url)
        await q.connect()
        admin = await asyncpg.connect(PG_URL)
        try:
            ts = [Task(id=new_id(), payload=b"x") for _ in range(4)]
            await q.enqueue(ts[:2])
            await terminate_backends(admin)
            await q.enqueue(ts[2:])  # first attempt hits a dead connection, the retry works
            await terminate_backends(admin)
            got = await q.claim("w", queues=None, limit=10, lease=30.0, now=time.time())
            assert sorted(t.id for t in got) == sorted(t.id for t in ts)
            await terminate_backends(admin)
            await q.finish("w", [(t.id, TaskStatus.SUCCEEDED) for t in got], now=time.time())
            assert set((await q.statuses([t.id for t in ts])).values()) == {TaskStatus.SUCCEEDED}
            # the LISTEN connection comes back as well
            with anyio.fail_after(10):
                while getattr(q, "_listener", None) is None:
                    await anyio.sleep(0.05)
        finally:
            await admin.close()
            await q.close()

    async def test_a_lost_reply_after_commit_is_recovered_not_repeated(
        self, queue: TaskQueue
    ) -> None:
        """The server committed but the reply never arrived (the connection broke): the retry
        must report what the first attempt did, not do it again or report nothing."""
        from omniq.models import Schedule, TaskEvent

        S = TaskStatus
        a = Task(id=new_id(), payload=b"a")
        b = Task(id=new_id(), payload=b"b", status=S.PENDING, depends_on=(a.id,))
        others = [Task(id=new_id(), payload=b"x") for _ in range(3)]
        with reply_lost(queue):
            await queue.enqueue([a, b, *others])  # no "already exists" from the retry
        assert len(await queue.statuses([a.id, b.id, *(t.id for t in others)])) == 5
        with reply_lost(queue):
            got = await queue.claim("w", queues=None, limit=2, lease=30.0, now=T0)
        assert [t.id for t in got] == [a.id, others[0].id]
        assert [t.deliveries for t in got] == [1, 1]  # leased once, and not stranded
        with reply_lost(queue):
            out = await queue.finish("w", [(a.id, S.FAILED)], now=T0)
        assert [(t.id, cause) for t, cause in out.cancelled] == [(b.id, a.id)]
        with reply_lost(queue):
            before = await queue.cancel([others[1].id], now=T0)
        assert before == {others[1].id: S.QUEUED}
        await queue.add_schedule(Schedule(id="s", name="s", payload=b"x", interval=1.0,
                                          next_run=T0))  # fmt: skip
        fired = Task(id=new_id(), payload=b"s")
        with reply_lost(queue):
            assert await queue.fire_schedule(
                "s",
                expected_next_run=T0,
                next_run=T0 + 1,
                now=T0,
                task=fired,
            )
        with reply_lost(queue):
            await queue.append_events([TaskEvent(task_id="t", type="started", timestamp=T0)])
        assert len(await queue.query_events(task_id="t")) == 1
        with reply_lost(queue):
            reaped = await queue.reap(now=T0 + 100)
        assert [t.id for t in reaped.requeued] == [others[0].id]

    async def test_a_lost_reply_of_a_keyed_enqueue_reports_its_duplicates(
        self, queue: TaskQueue
    ) -> None:
        """A keyed batch committed, its reply lost: the retry finds what it stored, and says
        which tasks were duplicates of the key's holder (not "already exists", not new tasks)."""
        held = Task(id=new_id(), payload=b"h", key="k1")
        await queue.enqueue([held])
        dup, new = Task(id=new_id(), payload=b"d", key="k1"), Task(id=new_id(), payload=b"n", key="k2")
        with reply_lost(queue):
            assert await queue.enqueue([dup, new]) == {dup.id: held.id}
        assert await queue.statuses([held.id, dup.id, new.id]) == {
            held.id: TaskStatus.QUEUED, new.id: TaskStatus.QUEUED}
        only_dups = Task(id=new_id(), payload=b"o", key="k2")
        with reply_lost(queue):  # nothing was stored: it simply runs again
            assert await queue.enqueue([only_dups]) == {only_dups.id: new.id}

    async def test_find_results_escapes_like_wildcards(self, results: ResultStore) -> None:
        from omniq.models import TaskResult

        keys = ["a%b/1", "axb/1", "a_b/1", "aXb/1", "a\\b/1", "a\\xb/1"]
        await results.put_results(
            [TaskResult(task_id=new_id(), status=TaskStatus.SUCCEEDED, key=k) for k in keys]
        )
        assert [r.key for r in await results.find_results(key_prefix="a%b")] == ["a%b/1"]
        assert [r.key for r in await results.find_results(key_prefix="a_b")] == ["a_b/1"]
        assert [r.key for r in await results.find_results(key_prefix="a\\b")] == ["a\\b/1"]

    def test_missing_asyncpg_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from omniq.storage import postgres
        from omniq.storage.postgres import connection

        monkeypatch.setattr(connection, "asyncpg", None)
        with pytest.raises(ConfigError, match=r"pip install 'omniq\[postgres\]'") as info:
            postgres.PostgresBackend("postgresql://bob:hunter2@localhost/db")
        assert "hunter2" not in str(info.value)

    async def test_concurrent_backends_resolve_every_dependency(self, pg_url: str) -> None:
        """Four connections claim and finish at once over a DAG where each task waits for two
        others: at READ COMMITTED, two dependencies finishing together must not both miss the
        release of their dependent, and nothing may be claimed twice."""
        import random

        rnd = random.Random(5)
        parents = [Task(id=new_id(), payload=b"p") for _ in range(60)]
        layer = list(parents)
        everything = list(parents)
        for _ in range(3):
            nxt = []
            for _ in range(60):
                a, b = rnd.sample(layer, 2)
                nxt.append(Task(id=new_id(), payload=b"c", status=TaskStatus.PENDING,
                                depends_on=(a.id, b.id)))  # fmt: skip
            everything += nxt
            layer = nxt
        backends = [open_backends(pg_url)[0] for _ in range(4)]
        for b in backends:
            await b.connect()
        claimed: list[str] = []
        try:
            await backends[0].enqueue(everything)

            async def work(b: TaskQueue, name: str) -> None:
                idle_since = time.monotonic()
                while time.monotonic() - idle_since < 1.0:
                    got = await b.claim(name, queues=None, limit=3, lease=60.0, now=time.time())
                    if not got:
                        await b.wait_for_tasks(0.05)
                        continue
                    idle_since = time.monotonic()
                    claimed.extend(t.id for t in got)
                    for t in got:  # finish one by one: more commits racing each other
                        await b.finish(name, [(t.id, TaskStatus.SUCCEEDED)], now=time.time())

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i, b in enumerate(backends):
                        tg.start_soon(work, b, f"w{i}")
            statuses = await backends[0].statuses([t.id for t in everything])
            assert set(statuses.values()) == {TaskStatus.SUCCEEDED}
            assert sorted(claimed) == sorted(t.id for t in everything)  # each exactly once
        finally:
            for b in backends:
                await b.close()

    async def test_dependent_enqueued_while_its_dependency_finishes(self, pg_url: str) -> None:
        """Enqueue a dependent on one connection while the dependency finishes on another, many
        times: the dependent must never be left PENDING behind a succeeded dependency."""
        a, _, _ = open_backends(pg_url)
        b, _, _ = open_backends(pg_url)
        await a.connect()
        await b.connect()
        try:
            stuck = []
            for i in range(60):
                parent = Task(id=new_id(), payload=b"p", queue=f"parent{i}")
                child = Task(id=new_id(), payload=b"c", status=TaskStatus.PENDING,
                             depends_on=(parent.id,))  # fmt: skip
                await a.enqueue([parent])
                await a.claim("w", queues=[parent.queue], limit=1, lease=60.0, now=T0)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(b.enqueue, [child])
                    tg.start_soon(
                        functools.partial(
                            a.finish, "w", [(parent.id, TaskStatus.SUCCEEDED)], now=T0
                        )
                    )
                if (await a.statuses([child.id]))[child.id] is not TaskStatus.QUEUED:
                    stuck.append(child.id)
            assert stuck == []
        finally:
            await a.close()
            await b.close()


@contextlib.contextmanager
def reply_lost(q: Any) -> Iterator[None]:
    """The first retry-protected call inside commits, then its connection "breaks" before the
    reply arrives (the retry then runs on a new connection)."""
    import asyncpg

    real_run = q._run
    lost: list[bool] = []

    async def run(fn: Any, *, recover: Any = None) -> Any:
        if recover is None or lost:
            return await real_run(fn, recover=recover)

        async def fn_then_drop(conn: Any) -> Any:
            out = await fn(conn)  # committed ...
            if not lost:
                lost.append(True)
                raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")
            return out  # ... the retry after a failed recovery would come here

        return await real_run(fn_then_drop, recover=recover)

    q._run = run
    try:
        yield
    finally:
        q._run = real_run
    assert lost, "no retry-protected call was made"


TERMINATE = """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
    AND application_name = 'omniq'"""
TERMINATE_ALL = """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()"""


async def terminate_backends(admin: Any) -> int:
    """Kill every OmniQ session in the database (not just this test's: they all reconnect)."""
    n = int(await admin.fetchval(TERMINATE))
    await anyio.sleep(0.05)  # let the clients see their sockets close
    return n


# --- real worker processes -------------------------------------------------------------------------


@pytest.fixture
def workers(pg_url: str, tmp_path: Path) -> Iterator[Workers]:
    ws = Workers(pg_url, tmp_path)
    try:
        yield ws
    finally:
        ws.stop()


def stored(url: str, sql: str) -> Any:
    """A value read straight from the test's schema."""
    import asyncpg

    from omniq.storage.postgres import parse_url

    parsed = parse_url(url)

    async def read() -> Any:
        conn = await asyncpg.connect(parsed.dsn, server_settings={"search_path": parsed.schema})
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()

    return asyncio.run(read())


class TestWorkerProcesses:
    def test_three_workers_drain_600_tasks_exactly_once(
        self, pg_url: str, workers: Workers
    ) -> None:
        from omniq import OmniQ
        from tests.helpers import square

        for _ in range(3):
            workers.start("-c", "2")
        with OmniQ(tasks=pg_url, concurrency=0) as oq:
            wait_for_workers(oq, workers, 3)
            started = time.monotonic()
            handles = oq.map(square, range(600))
            values = oq.gather(handles, timeout=180)
            elapsed = time.monotonic() - started
        assert values == [i * i for i in range(600)]
        workers.stop()  # graceful: every worker flushes its events before it exits
        print(f"\n600 tasks on 3 workers x 2 processes: {elapsed:.2f} s ({600 / elapsed:.0f}/s)")
        ids = {h.id for h in handles}
        assert stored(pg_url, "SELECT count(*) FROM omniq_results")[0][0] == 600
        rows = stored(pg_url, "SELECT task_id, count(*) FROM omniq_events "
                              "WHERE type = 'started' GROUP BY task_id")  # fmt: skip
        assert {r[0] for r in rows} == ids
        assert {r[1] for r in rows} == {1}  # each ran exactly once
        by_worker = stored(pg_url, "SELECT worker, count(*) FROM omniq_events "
                                   "WHERE type = 'started' GROUP BY worker")  # fmt: skip
        assert len(by_worker) == 3, by_worker  # all three took a share
        statuses = stored(pg_url, "SELECT status, count(*) FROM omniq_tasks GROUP BY status")
        assert [tuple(r) for r in statuses] == [("succeeded", 600)]

    def test_sigkilled_worker_loses_nothing(
        self, pg_url: str, workers: Workers, tmp_path: Path
    ) -> None:
        from omniq import OmniQ
        from tests.helpers import touch_then_sleep

        marker = tmp_path / "running"
        first = workers.start("-c", "1", "--lease", "2")
        with OmniQ(tasks=pg_url, concurrency=0) as oq:
            wait_for_workers(oq, workers, 1)
            h = oq.submit(touch_then_sleep, str(marker), 5)
            deadline = time.monotonic() + 60
            while not marker.exists() or not marker.read_text():
                assert time.monotonic() < deadline, workers.log(0)
                time.sleep(0.05)
            first_pid = marker.read_text()
            marker.unlink()
            workers.start("-c", "1", "--lease", "2")
            os.killpg(first.pid, signal.SIGKILL)  # the worker and its child, mid-task
            killed_at = time.monotonic()
            assert h.result(timeout=60) == 5
            took = time.monotonic() - killed_at
            deadline = time.monotonic() + 10  # events are written in batches, after the result
            while (evs := oq.events(task_id=h.id)) and evs[-1].type != "succeeded":
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert marker.read_text() != first_pid  # it ran again, in another process
        kinds = [e.type for e in evs]
        assert kinds.count("started") == 2 and "requeued" in kinds, kinds
        assert kinds[-1] == "succeeded"
        print(f"\nlease lapsed and the task ran again; done {took:.1f} s after the kill")

    def test_connection_drop_mid_run_loses_nothing(self, pg_url: str, workers: Workers) -> None:
        import asyncpg

        from omniq import OmniQ
        from tests.helpers import sleep_return

        for _ in range(3):
            workers.start("-c", "2")
        with OmniQ(tasks=pg_url, concurrency=0) as oq:
            wait_for_workers(oq, workers, 3)
            handles = oq.map(sleep_return, [0.02] * 400)

            async def kill_sessions() -> int:
                admin = await asyncpg.connect(PG_URL)
                try:
                    return int(await admin.fetchval(TERMINATE_ALL))
                finally:
                    await admin.close()

            killed, done_then = [], []
            for _ in range(2):
                time.sleep(0.6)
                done_then.append(sum(h.done() for h in handles))
                killed.append(asyncio.run(kill_sessions()))
            values = oq.gather(handles, timeout=180)
            workers.check_alive()
        assert values == [0.02] * 400
        assert all(n > 0 for n in killed), killed
        assert done_then[0] < 400, done_then  # the first drop came mid-run
        workers.stop()
        logs = [workers.log(i) for i in range(3)]
        assert all("retrying on a new connection" in text or "LISTEN connection was lost" in text
                   for text in logs), logs[0][-3000:]  # fmt: skip
        statuses = stored(pg_url, "SELECT status, count(*) FROM omniq_tasks GROUP BY status")
        assert [tuple(r) for r in statuses] == [("succeeded", 400)]
        runs = stored(pg_url, "SELECT count(*) FROM omniq_events WHERE type = 'started'")[0][0]
        print(f"\nsessions terminated: {killed} with {done_then} of 400 tasks done; "
              f"all 400 succeeded, {runs} runs")  # fmt: skip


def test_omniq_on_postgres_end_to_end(pg_url: str) -> None:
    from omniq import OmniQ
    from tests.helpers import square

    with OmniQ(tasks=pg_url, worker="process", concurrency=2) as oq:
        h = oq.submit(square, 7)
        assert h.result(timeout=60) == 49
        assert [h.result(timeout=60) for h in oq.map(square, range(10))] == [
            i * i for i in range(10)
        ]
        r = oq.get_result(h.id)
        assert r is not None and r.status is TaskStatus.SUCCEEDED


async def test_live_subscribers_are_woken_by_another_connection(pg_url: str) -> None:
    from .event_signals import woken_by_another_connection

    await woken_by_another_connection(pg_url)
