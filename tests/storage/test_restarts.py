"""Server restarts and crashes mid-run, on PostgreSQL, Redis and NATS.

Each backend gets a private server started here, on a free port with its data in a temporary
directory (the machine's shared servers are never touched): Redis with an append-only file
fsynced on every write, NATS with JetStream file storage, PostgreSQL as its own cluster. Two
``omniq worker`` processes drain a queue of short tasks; the server is restarted mid-run
(``restart``: a clean stop and an immediate start) or crashes and stays away for a few seconds
(``crash``: SIGKILL / ``pg_ctl -m immediate``, which for NATS is also the connection-drop case).
Afterwards every task has exactly one successful result and ran exactly once (each run appends a
line to a file of its own), nothing is left RUNNING, the workers logged one clear line naming
the masked URL when the connection was lost and one when it came back, and no traceback.

Skipped, with the reason, when a server binary is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from omniq import OmniQ, TaskStatus
from omniq.storage.base import masked
from tests.servers import (
    NATS_SERVER,
    PASSWORD,
    PG_BINDIRS,
    REDIS_SERVER,
    NatsServer,
    PostgresServer,
    RedisServer,
    Server,
    private_dir,
    serve,
)
from tests.workers.common import wait_until

from .restart_tasks import record_run
from .workers import Workers, wait_for_workers

pytestmark = pytest.mark.slow

N = 200  # tasks per run
TASK_SECONDS = 0.05


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Server]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (needed for a private Redis to restart)")
    pytest.importorskip("redis", reason="the redis extra is not installed")
    yield from serve(RedisServer(private_dir()))


@pytest.fixture(scope="module")
def nats_server() -> Iterator[Server]:
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (needed for a private NATS to restart)")
    pytest.importorskip("nats", reason="the nats extra is not installed")
    yield from serve(NatsServer(private_dir()))


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[Server]:
    if not PG_BINDIRS:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot run initdb as the postgres user")
    root = private_dir()
    try:
        server = PostgresServer(root, PG_BINDIRS[-1])
    except (RuntimeError, LookupError, OSError) as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot set up a private PostgreSQL cluster: {e}")
    yield from serve(server)


SERVERS = {"redis": "redis_server", "nats": "nats_server", "postgresql": "postgres_server"}


@pytest.mark.parametrize("mode", ["restart", "crash"], ids=["restart", "killed-for-3s"])
@pytest.mark.parametrize("backend", list(SERVERS))
def test_server_restart_mid_run_loses_nothing(
    backend: str, mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server: Server = request.getfixturevalue(SERVERS[backend])
    if not server.ready():
        server.start()  # a previous test left it down
    url = server.url()
    runs = tmp_path / "runs"
    runs.mkdir()
    workers = Workers(url, tmp_path)
    try:
        for _ in range(2):
            workers.start("-c", "2")
        with OmniQ(tasks=url, concurrency=0) as oq:
            wait_for_workers(oq, workers, 2)
            handles = [oq.submit(record_run, str(runs), i, TASK_SECONDS) for i in range(N)]
            assert wait_until(lambda: len(os.listdir(runs)) >= 30, 60), workers.log(0)
            server.stop(crash=mode == "crash")
            ran_before = len(os.listdir(runs))
            if mode == "crash":
                time.sleep(3.0)  # down for a while: connections drop, reconnects are refused
            server.start()
            values = oq.gather(handles, timeout=90)
            workers.check_alive()
            # a result is written before its task's final status: let the statuses land
            expected = {"default": {"succeeded": N}}
            wait_until(lambda: oq.health()["queues"] == expected, 30)
            queues = oq.health()["queues"]
            results = [oq.get_result(h.id) for h in handles]
    finally:
        workers.stop()
    logs = "\n".join(workers.log(i) for i in range(len(workers.procs)))
    assert values == list(range(N))
    assert ran_before < N, "the server went away only after the queue was drained"
    runs_per_task = {i: len((runs / str(i)).read_text().split()) for i in range(N)}
    assert {i: n for i, n in runs_per_task.items() if n != 1} == {}, "tasks ran more than once"
    assert queues == expected, queues  # none lost, none stuck RUNNING
    assert all(r is not None and r.status is TaskStatus.SUCCEEDED for r in results)
    assert PASSWORD not in logs
    shown = masked(url)
    for i in range(len(workers.procs)):  # each worker said so, naming the masked URL
        text = workers.log(i)
        assert any(line.format(shown) in text for line in LOST[server.kind]), text[-4000:]
        assert any(line.format(shown) in text for line in BACK[server.kind]), text[-4000:]
    assert retry_tracebacks(logs) == [], logs[-6000:]


#: The lines a worker logs when its connection (or its wake-up channel, which always notices
#: first: a call that finds its pooled connection stale may reconnect silently) is lost ...
LOST = {
    "Redis": ("lost the connection to Redis at {}", "lost the wake-up channel on {}"),
    "PostgreSQL": ("lost the connection to PostgreSQL at {}",
                   "PostgreSQL {}: the LISTEN connection was lost"),
    "NATS": ("lost the connection to NATS at {}",),
}  # fmt: skip
#: ... and when it is back.
BACK = {
    "Redis": ("reconnected to Redis at {}", "wake-up channel on {} resubscribed"),
    "PostgreSQL": ("reconnected to PostgreSQL at {}", "PostgreSQL {}: LISTEN connection restored"),
    "NATS": ("reconnected to NATS at {}",),
}


def retry_tracebacks(logs: str) -> list[str]:
    """Log records with a traceback about the lost connection (one line each is the aim)."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", logs)
    return [r for r in records if "Traceback" in r and _CONNECTION_TRACE.search(r)]


_CONNECTION_TRACE = re.compile(
    r"StorageError|Connection\w*Error|OSError|TimeoutError|asyncpg\.|redis\.exceptions|nats\.errors"
    r"|nats\.js\.errors|CannotConnectNow|ConnectionLost"
)


# --- NATS: a retried call finds the work of an attempt whose reply was lost -----------------------


@pytest.mark.anyio
async def test_nats_retries_take_over_what_a_lost_attempt_did(nats_server: Server) -> None:
    """After a dropped connection a NATS call runs again; what its first attempt did (the reply
    never came) must be taken as done: no "already exists", no lease stranded until it lapses,
    dependents released, no duplicate events."""
    from omniq.ids import new_id
    from omniq.models import Task, TaskEvent
    from omniq.storage.nats import NatsBackend
    from omniq.storage.nats import guard as nats_guard

    if not nats_server.ready():
        nats_server.start()
    b = NatsBackend(nats_server.url())
    await b.connect()
    try:
        now = time.time()
        parent = Task(id=new_id(), payload=b"p", created_at=now)
        child = Task(id=new_id(), payload=b"c", created_at=now, status=TaskStatus.PENDING,
                     depends_on=(parent.id,))  # fmt: skip
        await b.enqueue([parent, child])
        with pytest.raises(Exception, match="already exists"):
            await b.enqueue([parent])  # a first attempt: a duplicate is an error
        async def retried(name: str, *args: Any, **kwargs: Any) -> Any:
            """The second attempt of a guarded call (as ``_guard`` runs it after a drop)."""
            token = nats_guard.ATTEMPT.set(1)
            try:
                return await getattr(NatsBackend, name).__wrapped__(b, *args, **kwargs)
            finally:
                nats_guard.ATTEMPT.reset(token)

        await retried("enqueue", [parent, child])  # its lost first attempt stored them
        # the claim leased the task but its reply was lost (the index message is still there)
        real_delete = b._delete_index
        b._delete_index = lambda seqs: real_delete([])  # type: ignore[method-assign]
        [got] = await b.claim("w", queues=None, limit=5, lease=30.0, now=now)
        b._held.clear()
        b._delete_index = real_delete  # type: ignore[method-assign]
        again = await retried("_claim", "w", None, 5, 30.0, now)  # (claim's checked part)
        assert [t.id for t in again] == [parent.id] == [got.id]
        assert await b.claim("w2", queues=None, limit=5, lease=30.0, now=now) == []
        # finish ended the task, then the reply was lost before the dependent was released
        await b.finish("w", [(parent.id, TaskStatus.SUCCEEDED)], now=now)
        await b._transition(child.id, lambda r: _put_back(r, parent.id))
        out = await retried("_finish", "w", [(parent.id, TaskStatus.SUCCEEDED)], now)
        assert [t.id for t in out.released] == [child.id]
        # an enqueue whose records were stored but whose acks were lost: the retry keeps them
        # (and their index messages), so the task can still be claimed
        late = Task(id=new_id(), payload=b"late", created_at=now)
        real_publish = b._publish

        async def acks_lost(items: Any) -> Any:
            acks = await real_publish(items)
            return [nats_guard.ConnectionLost() if item[0].startswith("$KV.") else a
                    for item, a in zip(items, acks)]  # fmt: skip

        b._publish = acks_lost  # type: ignore[method-assign]
        with pytest.raises(nats_guard.ConnectionLost):
            await NatsBackend.enqueue.__wrapped__(b, [late])  # type: ignore[attr-defined]
        b._publish = real_publish  # type: ignore[method-assign]
        await retried("enqueue", [late])
        claimed = await b.claim("w3", queues=None, limit=5, lease=30.0, now=now)
        assert late.id in {t.id for t in claimed}
        e = TaskEvent(task_id=parent.id, type="started", timestamp=now, worker="w")
        await b.append_events([e])
        await b.append_events([e])  # the same events again: stored once
        assert await b.query_events(task_id=parent.id) == [e]
    finally:
        await b.drop()
        await b.close()


def _put_back(rec: object, dep: str) -> str:
    """Undo the release of a dependent (test helper for a finish whose resolve never ran)."""
    rec.task.status = TaskStatus.PENDING  # type: ignore[attr-defined]
    rec.waiting = [dep]  # type: ignore[attr-defined]
    return ""


# --- PostgreSQL: how long a call waits for the server --------------------------------------------


@pytest.mark.anyio
async def test_postgres_down_longer_than_reconnect_timeout_is_a_clear_error(
    postgres_server: Server,
) -> None:
    from omniq.errors import StorageError
    from omniq.storage.postgres import PostgresBackend

    if not postgres_server.ready():
        postgres_server.start()
    url = postgres_server.url() + "&reconnect_timeout=1"
    b = PostgresBackend(url)
    await b.connect()
    try:
        await b.counts()
        postgres_server.stop(crash=False)
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            await b.counts()
        assert 0.9 < time.monotonic() - started < 10
        message = str(info.value)
        assert masked(url) in message and PASSWORD not in message
        assert "gave up reconnecting after 1 s" in message
        postgres_server.start()
        assert await b.counts() == {}  # the next call works again
    finally:
        if not postgres_server.ready():
            postgres_server.start()
        await b.close()
        await _drop_pg_schema(url)


async def _drop_pg_schema(url: str) -> None:
    import asyncpg

    from omniq.storage.postgres import parse_url

    parsed = parse_url(url)
    conn = await asyncpg.connect(parsed.dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{parsed.schema}" CASCADE')
    finally:
        await conn.close()


def test_postgres_reconnect_timeout_is_checked() -> None:
    from omniq.errors import ConfigError
    from omniq.storage.postgres import parse_url

    assert parse_url("postgresql://h/db?reconnect_timeout=2.5").reconnect_timeout == 2.5
    assert parse_url("postgresql://h/db").reconnect_timeout == 30.0
    for bad in ("-1", "soon", "inf", "nan"):
        with pytest.raises(ConfigError, match="reconnect_timeout"):
            parse_url(f"postgresql://h/db?reconnect_timeout={bad}")
