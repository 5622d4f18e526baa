"""Redis backend: the whole shared contract suite, plus what only a real server shows.

Runs against ``OMNIQ_TEST_REDIS`` (default ``redis://127.0.0.1:6379/0``); every test gets its
own key prefix and deletes its keys afterwards. The module is skipped when no server answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import msgspec
import pytest

from omniq import OmniQ, TaskError
from omniq.errors import ConfigError, StorageError
from omniq.ids import new_id
from omniq.models import TaskStatus
from omniq.storage.base import EventStore, ResultStore, TaskQueue, masked
from omniq.storage.urls import open_backends
from tests import helpers
from tests.workers.common import wait_until

from .backends import REDIS_URL as BASE_URL
from .backends import drop_prefix, fresh_redis
from .records import T0, claim, event, result, task
from .workers import Workers, wait_for_workers

pytestmark = pytest.mark.anyio
redis_sync = pytest.importorskip("redis", reason="the redis extra is not installed")

from omniq.storage.redis import SCRIPTS, RedisBackend, parse_url  # noqa: E402


def _server() -> redis_sync.Redis:
    return redis_sync.Redis.from_url(BASE_URL, socket_connect_timeout=2, socket_timeout=10)


try:
    _server().ping()
except Exception as _e:  # pragma: no cover - depends on the machine
    pytest.skip(f"no Redis server answers at {BASE_URL} ({_e})", allow_module_level=True)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A URL with a namespace of its own, emptied after the test."""
    with fresh_redis() as url:
        yield url


# --- the shared contract suite on Redis (module fixtures override conftest.py's) -------------


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[TaskQueue]:
    tq, _, _ = open_backends(redis_url)
    await tq.connect()
    try:
        yield tq
    finally:
        await tq.close()


@pytest.fixture
async def results(redis_url: str) -> AsyncIterator[ResultStore]:
    _, store, _ = open_backends("memory://", redis_url, redis_url)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def events(redis_url: str) -> AsyncIterator[EventStore]:
    _, _, store = open_backends("memory://", redis_url, redis_url)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


# --- Redis specifics ---------------------------------------------------------------------------


def test_url_options_and_bad_values() -> None:
    opts = parse_url("redis://:pw@h:6390/2?prefix=lab&max_events=50&socket_timeout=5")
    assert (opts.prefix, opts.max_events) == ("lab", 50)
    assert opts.client_url == "redis://:pw@h:6390/2?socket_timeout=5"
    assert parse_url("rediss://h").prefix == "omniq"
    for bad, what in [
        ("redis://h?prefix=", "prefix"),
        ("redis://h?prefix=a*b", "prefix"),
        ("redis://h?max_events=0", "max_events"),
        ("redis://h?max_events=1.5", "max_events"),
        ("redis://h?reconnect_timeout=soon", "reconnect_timeout"),
        ("redis://h?reconnect_timeout=-1", "reconnect_timeout"),
        ("redis://h?reconnect_timeout=inf", "reconnect_timeout"),
        ("redis://h?reconnect_timeout=nan", "reconnect_timeout"),
    ]:
        with pytest.raises(ConfigError, match=what):
            RedisBackend(bad)
    assert parse_url("redis://h?reconnect_timeout=0").reconnect_timeout == 0.0
    opts = parse_url("redis://h?max_events=1&reconnect_timeout=2.5")
    assert (opts.max_events, opts.reconnect_timeout) == (1, 2.5)
    with pytest.raises(ConfigError) as info:
        parse_url("redis://:pw@h?max_events=x")
    assert str(info.value) == (
        "redis URL 'redis://:***@h?max_events=x': max_events must be a whole number >= 1, got 'x'"
    )


async def test_unreachable_server_names_the_masked_url() -> None:
    b = RedisBackend("redis://:s3cret@127.0.0.1:1/0?prefix=nowhere")
    with pytest.raises(StorageError) as info:
        await b.connect()
    msg = str(info.value)
    assert "redis://:***@127.0.0.1:1/0" in msg and "refused" in msg and "s3cret" not in msg
    with pytest.raises(StorageError, match="not connected"):
        await b.counts()


async def test_prefixes_isolate_and_equal_urls_share(redis_url: str) -> None:
    other = redis_url + "-other"
    a, b, a2 = RedisBackend(redis_url), RedisBackend(other), RedisBackend(redis_url)
    for x in (a, b, a2):
        await x.connect()
    try:
        t = task()
        await a.enqueue([t])
        assert await b.get_task(t.id) is None
        assert [x.id for x in await claim(a2)] == [t.id]
    finally:
        for x in (a, b, a2):
            await x.close()
        drop_prefix(parse_url(other).prefix)


async def test_extreme_priorities_and_exact_times(queue: TaskQueue) -> None:
    now = time.time()  # 17 significant digits: Lua's tostring would keep 14
    ts = [task(priority=p) for p in (0, 2**52, -(2**52), 2**40 + 1, 2**40)]
    await queue.enqueue(ts)
    got = await claim(queue, now=now, lease=1 / 3)
    assert [t.priority for t in got] == [2**52, 2**40 + 1, 2**40, 0, -(2**52)]
    assert {t.lease_until for t in got} == {now + 1 / 3}
    stored = await queue.get_task(got[0].id)
    assert stored is not None and stored.lease_until == now + 1 / 3


async def test_other_process_enqueue_wakes_a_waiter(redis_url: str) -> None:
    waiter, writer = RedisBackend(redis_url), RedisBackend(redis_url)
    await waiter.connect()
    await writer.connect()
    try:
        assert await claim(waiter) == []
        await waiter.wait_for_tasks(0.05)  # starts the listener
        t0 = time.monotonic()

        async def later() -> None:
            await anyio.sleep(0.2)
            await writer.enqueue([task()])

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(later)
                await waiter.wait_for_tasks(30.0)
        assert 0.15 < time.monotonic() - t0 < 2.0
        assert len(await claim(waiter)) == 1
    finally:
        await waiter.close()
        await writer.close()


async def test_retried_writes_run_once(queue: TaskQueue) -> None:
    """A write whose reply was lost is retried with the same token: the first run's reply
    comes back and nothing happens twice (no second lease, no duplicate events)."""
    assert isinstance(queue, RedisBackend)
    await queue.enqueue([task(), task()])
    r = _server()
    once = f"{queue.prefix}:once:test"
    claim_args = [queue.prefix, repr(T0), "w1", repr(T0 + 30), 10, -1]
    first = r.evalsha(SCRIPTS["claim"].sha, 1, once, *claim_args)
    again = r.evalsha(SCRIPTS["claim"].sha, 1, once, *claim_args)
    assert len(first) == 1 + 2 * 10 and again[1:] == first[1:]  # 9 fields + the id per task
    assert {t.deliveries for t in (await queue.reap(now=T0 + 60)).requeued} == {1}
    e = event("x", "started", T0)
    ev_args = [queue.prefix, 100, 10, 1, int(T0 * 1000), "x", msgspec.msgpack.encode(e)]
    for _ in range(2):
        r.evalsha(SCRIPTS["append_events"].sha, 1, f"{queue.prefix}:once:ev", *ev_args)
    assert await queue.query_events(task_id="x") == [e]  # type: ignore[attr-defined]


async def test_a_retried_keyed_enqueue_replays_its_duplicates(queue: TaskQueue) -> None:
    """The enqueue script ran, its reply was lost, the call runs it again with the same token:
    the first run's answer comes back (its duplicates too), nothing is stored twice."""
    assert isinstance(queue, RedisBackend)
    held = task(key="k1")
    await queue.enqueue([held])
    real_call = queue._call
    calls: list[int] = []

    async def twice(fn: Any) -> Any:
        calls.append(1)
        await real_call(fn)  # the first run: its reply "lost"
        return await real_call(fn)  # the retry, with the same once-token

    queue._call = twice  # type: ignore[method-assign]
    try:
        dup, new = task(key="k1"), task(key="k2")
        assert await queue.enqueue([dup, new]) == {dup.id: held.id}
    finally:
        queue._call = real_call  # type: ignore[method-assign]
    assert calls == [1]
    assert await queue.statuses([held.id, dup.id, new.id]) == {
        held.id: TaskStatus.QUEUED, new.id: TaskStatus.QUEUED}


async def test_a_dropped_connection_is_retried_and_logged(
    queue: TaskQueue, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(queue, RedisBackend)
    key = f"{queue.prefix}:nothing"

    async def kill_soon() -> None:
        await anyio.sleep(0.3)
        _server().execute_command("CLIENT", "KILL", "TYPE", "normal")

    caplog.set_level(logging.WARNING, logger="omniq.storage.redis")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_soon)
            assert await queue._call(lambda r: r.blpop([key], 1)) is None  # in flight at the kill
    text = caplog.text
    assert "lost the connection to Redis at" in text and "closed the connection" in text
    assert "reconnected to Redis at" in text
    t = task()
    await queue.enqueue([t])
    assert [x.id for x in await claim(queue)] == [t.id]


class Proxy:
    """A TCP proxy in front of the Redis server, to take "the server" away on demand."""

    def __init__(self) -> None:
        self.target = urlsplit(BASE_URL)
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        user = self.target.netloc.rpartition("@")[0]
        return urlunsplit(self.target._replace(netloc=f"{user}@127.0.0.1:{port}" if user
                                               else f"127.0.0.1:{port}"))  # fmt: skip

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(self.target.hostname, self.target.port or 6379)
        self.writers += [writer, up_w]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    async def cut(self) -> None:
        """The server goes away: existing connections drop, new ones are refused."""
        if self.server is not None:
            self.server.close()
        for w in self.writers:
            w.close()


async def test_down_for_longer_than_reconnect_timeout_is_a_storage_error(redis_url: str) -> None:
    proxy = Proxy()
    url = (await proxy.start()) + "?" + urlsplit(redis_url).query + "&reconnect_timeout=0.5"
    b = RedisBackend(url)
    await b.connect()
    try:
        await b.enqueue([task()])
        await proxy.cut()
        t0 = time.monotonic()
        with pytest.raises(StorageError) as info:
            await b.counts()
        assert time.monotonic() - t0 < 5
        assert "gave up reconnecting after 0.5 s" in str(info.value)
        assert masked(url) in str(info.value)
    finally:
        await b.close()


async def test_event_stream_is_capped_and_per_task_lists_follow(redis_url: str) -> None:
    b = RedisBackend(redis_url + "&max_events=100")
    await b.connect()
    try:
        ids = [new_id() for _ in range(500)]
        for i in range(0, 500, 50):
            batch = ids[i : i + 50]
            await b.append_events([event(t, "enqueued", T0 + i + k) for k, t in enumerate(batch)])
        kept = await b.query_events()
        assert 100 <= len(kept) < 300 and kept[-1].task_id == ids[-1]
        assert await b.query_events(task_id=ids[0]) == []
        assert len(await b.query_events(task_id=ids[-1])) == 1
        r = _server()
        assert r.xlen(f"{b.prefix}:ev") == len(kept)
        assert r.zcard(f"{b.prefix}:ev:tasks") < 500  # trimmed tasks' lists were dropped
    finally:
        await b.close()


async def test_purge_events_is_exact_with_late_events(events: EventStore) -> None:
    t = new_id()
    # appended out of time order: stream ids run ahead of the late events' timestamps
    await events.append_events([event(t, "a", T0 + 10), event(t, "b", T0 + 1),
                                event(t, "c", T0 + 20), event(t, "d", T0 + 5)])  # fmt: skip
    assert [e.type for e in await events.query_events(since=T0 + 5)] == ["d", "a", "c"]
    assert await events.purge_events(before=T0 + 6) == 2
    assert [e.type for e in await events.query_events()] == ["a", "c"]
    assert [e.type for e in await events.query_events(task_id=t)] == ["a", "c"]


async def test_results_expire_natively(results: ResultStore) -> None:
    soon = result(key="k/soon", expires_at=time.time() + 0.3)
    await results.put_results([soon, result(key="k/kept")])
    pttl = _server().pttl(f"{results.prefix}:r:{soon.task_id}")  # type: ignore[attr-defined]
    assert 0 < pttl <= 300
    await anyio.sleep(0.5)
    assert await results.get_result(soon.task_id) is None
    assert [r.key for r in await results.find_results(key_prefix="k/")] == ["k/kept"]
    assert await results.purge_results(now=time.time()) == 0  # only the index was left
    assert _server().zcard(f"{results.prefix}:rkeys") == 1  # type: ignore[attr-defined]


# --- real worker processes -----------------------------------------------------------------------

@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(redis_url, tmp_path)
    try:
        yield w
    finally:
        w.stop()


def started_events(oq: OmniQ, ids: list[str], timeout: float = 20.0) -> Counter[str]:
    """``started`` events per task id, once every task has at least one (events are batched)."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while True:
        seen = Counter(e.task_id for e in oq.events() if e.type == "started" and e.task_id in wanted)
        if len(seen) == len(wanted) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def test_three_worker_processes_run_every_task_exactly_once(
    redis_url: str, workers: Workers
) -> None:
    for _ in range(3):
        workers.start("-c", "2")
    with OmniQ(tasks=redis_url, concurrency=0) as oq:
        wait_for_workers(oq, workers, 3)
        handles = oq.map(helpers.square, range(600))
        assert [h.result(timeout=120) for h in handles] == [i * i for i in range(600)]
        ids = [h.id for h in handles]
        counts = started_events(oq, ids)
        assert len(counts) == 600 and set(counts.values()) == {1}
        ran_on = {r.worker for r in (oq.get_result(i) for i in ids) if r is not None}
        assert len({w.split(":")[1] for w in ran_on if w}) == 3  # every process took some
        assert oq.health()["queues"] == {"default": {"succeeded": 600}}


def test_a_worker_killed_mid_task_loses_nothing(
    redis_url: str, workers: Workers, tmp_path: Path
) -> None:
    for _ in range(2):
        workers.start("-c", "1", "--lease", "2")
    marker = tmp_path / "sleeper.pid"
    with OmniQ(tasks=redis_url, concurrency=0) as oq:
        wait_for_workers(oq, workers, 2)
        sleeper = oq.submit(helpers.touch_then_sleep, str(marker), 5)
        assert wait_until(marker.exists, 30)
        child = int(marker.read_text())
        parent = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
        victim = next(p for p in workers.procs if p.pid == parent)
        os.killpg(victim.pid, signal.SIGKILL)  # the worker and its child, mid-task
        victim.wait(5)
        others = oq.map(helpers.square, range(40))
        assert sleeper.result(timeout=60) == 5
        assert [h.result(timeout=60) for h in others] == [i * i for i in range(40)]
        kinds = [e.type for e in oq.events(task_id=sleeper.id)]
        assert kinds.count("started") == 2 and "requeued" in kinds, kinds
        r = oq.get_result(sleeper.id)
        assert r is not None and r.worker is not None and f":{victim.pid}:" not in r.worker


def test_a_dropped_connection_is_survived(redis_url: str, workers: Workers) -> None:
    for _ in range(2):
        workers.start("-c", "2")
    with OmniQ(tasks=redis_url, concurrency=0) as oq:
        wait_for_workers(oq, workers, 2)
        handles = oq.map(helpers.sleep_return, [0.01] * 300)
        r = _server()
        assert wait_until(lambda: oq.health()["queues"]["default"].get("succeeded", 0) > 30, 30)
        for _ in range(3):  # every client connection, wake-up subscriptions too, a few times
            r.execute_command("CLIENT", "KILL", "TYPE", "normal")
            r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            time.sleep(0.15)
        assert [h.result(timeout=120) for h in handles] == [0.01] * 300
        counts = started_events(oq, [h.id for h in handles])
        assert len(counts) == 300 and set(counts.values()) == {1}
    workers.stop()
    logs = "".join(workers.log(i) for i in range(len(workers.procs)))
    assert "lost the wake-up channel on" in logs and "resubscribed after" in logs, logs
    assert "Traceback" not in logs, logs


def test_omniq_end_to_end_with_process_workers(redis_url: str) -> None:
    with OmniQ(tasks=redis_url, worker="process", concurrency=2) as oq:
        assert oq.submit(helpers.square, 7).result(timeout=60) == 49
        assert [h.result(timeout=60) for h in oq.map(helpers.square, range(20))] == [
            i * i for i in range(20)
        ]
        bad = oq.submit(helpers.die)
        with pytest.raises(TaskError):
            bad.result(timeout=60)
        assert oq.health()["queues"]["default"]["succeeded"] == 21


async def test_live_subscribers_are_woken_by_another_connection(redis_url: str) -> None:
    from .event_signals import woken_by_another_connection

    await woken_by_another_connection(redis_url)
