"""NATS JetStream backend: the whole storage contract, plus real worker processes on NATS.

Runs against the server at ``OMNIQ_TEST_NATS`` (default ``nats://127.0.0.1:4222``, JetStream
enabled); the module is skipped when none answers. Every test gets a namespace of its own,
deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from omniq.errors import StorageError
from omniq.storage.base import EventStore, ResultStore, TaskQueue
from omniq.storage.urls import open_backends

from .backends import fresh_nats, fresh_nats_url, nats_problem, stop_workers
from .records import T0, task

pytestmark = pytest.mark.anyio
if nats_problem() is not None:
    pytest.skip(nats_problem() or "", allow_module_level=True)

pytest.importorskip("nats", reason="nats-py is not installed (pip install 'omniq[nats]')")

from omniq.storage.nats import NatsBackend, parse_url, token, untoken  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def nats_url() -> Iterator[str]:
    """A namespace of its own for one test, deleted afterwards."""
    with fresh_nats() as url:
        yield url


@pytest.fixture
def url_of(nats_url: str) -> Callable[[str], str]:
    return lambda template: nats_url


@pytest.fixture
async def queue(nats_url: str) -> AsyncIterator[TaskQueue]:
    tq, _, _ = open_backends(nats_url)
    await tq.connect()
    try:
        yield tq
    finally:
        await tq.close()


@pytest.fixture
async def results(nats_url: str) -> AsyncIterator[ResultStore]:
    _, store, _ = open_backends("memory://", nats_url, nats_url)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def events(nats_url: str) -> AsyncIterator[EventStore]:
    _, _, store = open_backends("memory://", nats_url, nats_url)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


# --- NATS specifics -------------------------------------------------------------------------------


def test_parse_url() -> None:
    assert parse_url("nats://h:1?namespace=x") == ("nats://h:1", "x", 5.0, 1_000_000)
    assert parse_url("nats://")[0:2] == ("nats://127.0.0.1:4222", "omniq")
    with pytest.raises(ValueError, match="namespace"):
        parse_url("nats://h?namespace=a.b")
    with pytest.raises(ValueError, match="unknown parameter 'nope'"):
        parse_url("nats://h?nope=1")


def test_tokens_round_trip() -> None:
    for s in ["abc-DEF_1", "a.b", "*", ">", "with space", "ünï", "=x", "_lead", ""]:
        tok = token(s)
        assert untoken(tok) == s
        assert tok == "" or all(c.isalnum() or c in "-_=" for c in tok)


async def test_unreachable_server_is_a_clear_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = NatsBackend(f"nats://user:secret@127.0.0.1:{port}?namespace=x&timeout=1")
    started = time.monotonic()
    with pytest.raises(StorageError) as e:
        await b.connect()
    assert time.monotonic() - started < 10
    msg = str(e.value)
    assert f"127.0.0.1:{port}" in msg and "secret" not in msg and "***" in msg
    assert "refused" in msg


async def test_namespaces_are_isolated(nats_url: str) -> None:
    other = fresh_nats_url()
    a, b = NatsBackend(nats_url), NatsBackend(other)
    await a.connect()
    await b.connect()
    try:
        await a.enqueue([task()])
        assert await b.claim("w", queues=None, limit=10, lease=5, now=T0) == []
        assert len(await a.claim("w", queues=None, limit=10, lease=5, now=T0)) == 1
    finally:
        await b.drop()
        await a.close()
        await b.close()


async def test_wakeup_crosses_connections(nats_url: str) -> None:
    a, b = NatsBackend(nats_url), NatsBackend(nats_url)
    await a.connect()
    await b.connect()
    try:
        await b.wait_for_tasks(0.01)

        async def later() -> None:
            await asyncio.sleep(0.05)
            await a.enqueue([task()])

        started = time.monotonic()
        job = asyncio.ensure_future(later())
        await b.wait_for_tasks(10.0)
        await job
        assert time.monotonic() - started < 2
    finally:
        await a.close()
        await b.close()


# --- real worker processes ------------------------------------------------------------------------


def _start_worker(url: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omniq.cli",
            "worker",
            "--tasks",
            url,
            "--worker",
            "process",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # a pipe nobody reads would leak, and block a chatty worker
        start_new_session=True,
    )




def test_three_worker_processes_drain_600_tasks_exactly_once(nats_url: str) -> None:
    from omniq import OmniQ
    from tests.helpers import square

    procs = [_start_worker(nats_url, "-c", "2") for _ in range(3)]
    try:
        with OmniQ(tasks=nats_url, concurrency=0) as oq:
            handles = oq.map(square, range(600))
            values = [h.result(timeout=240) for h in handles]
            assert values == [x * x for x in range(600)]
            events = oq.events()
        started: dict[str, int] = {}
        for e in events:
            if e.type == "started":
                started[e.task_id] = started.get(e.task_id, 0) + 1
        assert len(started) == 600 and set(started.values()) == {1}  # each ran exactly once
        workers = {e.worker for e in events if e.type == "started"}
        assert len(workers) >= 2  # the work was shared
    finally:
        stop_workers(procs)


def test_sigkilled_worker_loses_nothing(nats_url: str, tmp_path: Path) -> None:
    from omniq import OmniQ
    from tests.helpers import sleep_return, touch_then_sleep

    victim = _start_worker(nats_url, "-c", "2", "--lease", "2")
    procs = [victim]
    try:
        with OmniQ(tasks=nats_url, concurrency=0) as oq:
            marker = tmp_path / "started"
            slow = oq.submit(touch_then_sleep, str(marker), 3.0)
            rest = [oq.submit(sleep_return, 0.05, i) for i in range(20)]
            deadline = time.monotonic() + 60
            while not marker.exists():
                assert time.monotonic() < deadline, "the task never started"
                time.sleep(0.05)
            os.killpg(victim.pid, signal.SIGKILL)  # the worker and its children, mid-task
            victim.wait(10)
            procs.append(_start_worker(nats_url, "-c", "2", "--lease", "2"))
            assert slow.result(timeout=120) == 3.0
            assert [h.result(timeout=120) for h in rest] == list(range(20))
            task = asyncio.run(_get_task(nats_url, slow.id))
            assert task is not None and task.deliveries >= 2  # delivered again after the kill
    finally:
        stop_workers(procs)


async def _get_task(url: str, task_id: str) -> object:
    b = NatsBackend(url)
    await b.connect()
    try:
        return await b.get_task(task_id)
    finally:
        await b.close()


def test_omniq_with_process_workers_end_to_end(nats_url: str) -> None:
    from omniq import OmniQ, TaskStatus
    from tests.helpers import square

    with OmniQ(tasks=nats_url, worker="process", concurrency=2) as oq:
        hs = oq.map(square, range(20))
        assert [h.result(timeout=60) for h in hs] == [x * x for x in range(20)]
        first = oq.get_result(hs[0].id)
        assert first is not None and first.status is TaskStatus.SUCCEEDED
        types = [e.type for e in oq.events(task_id=hs[0].id)]
        assert types[0] == "enqueued" and "started" in types and types[-1] == "succeeded"
        assert oq.health()["queues"]["default"]["succeeded"] == 20


async def test_live_subscribers_are_woken_by_another_connection(nats_url: str) -> None:
    from .event_signals import woken_by_another_connection

    await woken_by_another_connection(nats_url)


async def test_a_retried_keyed_enqueue_takes_its_own_markers_and_records(queue: TaskQueue) -> None:
    """A keyed enqueue stored everything but its reply was lost: the retry (a later attempt of
    the same call) finds the key markers naming its own tasks and its records, and answers as
    the first attempt did, without "already exists"."""
    import time

    from omniq.ids import new_id
    from omniq.models import Task, TaskStatus
    from omniq.storage.nats import guard

    assert isinstance(queue, NatsBackend)
    held = Task(id=new_id(), payload=b"h", key="k1", created_at=time.time())
    await queue.enqueue([held])
    dup = Task(id=new_id(), payload=b"d", key="k1", created_at=time.time())
    new = Task(id=new_id(), payload=b"n", key="k2", created_at=time.time())
    now = time.time()
    assert await queue._insert([dup, new], now) == {dup.id: held.id}
    token = guard.ATTEMPT.set(1)
    try:
        assert await queue._insert([dup, new], now) == {dup.id: held.id}
    finally:
        guard.ATTEMPT.reset(token)
    assert await queue.statuses([held.id, dup.id, new.id]) == {
        held.id: TaskStatus.QUEUED, new.id: TaskStatus.QUEUED}


async def test_a_key_marker_whose_record_never_came_is_taken_over_after_the_grace(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from omniq.ids import new_id
    from omniq.models import Task
    from omniq.storage import enqueue
    from omniq.storage._codec import encode
    from omniq.storage.enqueue import KeyMark

    assert isinstance(queue, NatsBackend)
    monkeypatch.setattr(enqueue, "KEY_WRITE_GRACE", 0.3)  # (key_marker_verdict reads it)
    ghost = KeyMark("ghost-task", time.time())  # its writer died before the record
    assert await queue._cas(queue._key_subject("k"), encode(ghost), 0) is not None
    t = Task(id=new_id(), payload=b"x", key="k", created_at=time.time())
    t0 = time.monotonic()
    assert await queue.enqueue([t]) == {}
    assert 0.2 < time.monotonic() - t0 < 5
    again = Task(id=new_id(), payload=b"x", key="k", created_at=time.time())
    assert await queue.enqueue([again]) == {again.id: t.id}
