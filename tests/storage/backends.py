"""The shared servers the storage tests run on: PostgreSQL, Redis and NATS JetStream.

For each: whether it answers here (probed once, on first use), and a namespace of one test's
own (a schema, a key prefix, a NATS namespace) that is dropped afterwards. The machine's shared
servers are only ever used through such namespaces; tests that stop or kill a server start
one of their own (``tests/servers.py``).

A helper module, not a test module: conftest.py and the test modules import from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from urllib.parse import urlsplit

PG_URL = os.environ.get("OMNIQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("OMNIQ_TEST_REDIS", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("OMNIQ_TEST_NATS", "nats://127.0.0.1:4222")


def run_apart(fn: Callable[[], Awaitable[object]]) -> None:
    """Run a coroutine to its end on a loop of its own, in a thread of its own: callable from a
    test's running loop (an async fixture) as from plain code. Its exception is raised here."""
    failed: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(fn())  # type: ignore[arg-type]
        except BaseException as e:  # handed to the caller
            failed.append(e)

    th = threading.Thread(target=main)
    th.start()
    th.join()
    if failed:
        raise failed[0]


# --- PostgreSQL ----------------------------------------------------------------------------------
@functools.cache
def postgres_problem() -> str | None:
    """Why the test PostgreSQL cannot be used (None when it can)."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'omniq[postgres]')"

    async def probe() -> None:
        conn = await asyncpg.connect(PG_URL, timeout=3)
        await conn.close()

    try:
        run_apart(probe)
    except Exception as e:
        return f"PostgreSQL at {PG_URL} is unreachable: {type(e).__name__}: {e}"
    return None


def schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}schema={schema}"


async def drop_schema_async(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def drop_schema(schema: str) -> None:
    run_apart(lambda: drop_schema_async(schema))


@contextlib.contextmanager
def fresh_postgres() -> Iterator[str]:
    """A URL of a schema private to one test; the schema is dropped afterwards."""
    schema = f"omniq_t_{uuid.uuid4().hex[:12]}"
    try:
        yield schema_url(schema)
    finally:
        drop_schema(schema)


# --- Redis -------------------------------------------------------------------------------------------
@functools.cache
def redis_problem() -> str | None:
    """Why the test Redis cannot be used (None when it can)."""
    try:
        import redis
    except ImportError:
        return "the redis extra is not installed"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=10).ping()
    except Exception as e:  # pragma: no cover - depends on the machine
        return f"no Redis server answers at {REDIS_URL} ({e})"
    return None


def drop_prefix(prefix: str) -> None:
    """Delete every key of one namespace (SCAN + DEL)."""
    import redis

    r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=10)
    batch: list[bytes] = []
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            r.delete(*batch)
            batch.clear()
    if batch:
        r.delete(*batch)


def url_with_prefix(prefix: str, **params: object) -> str:
    sep = "&" if "?" in REDIS_URL else "?"
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"{REDIS_URL}{sep}prefix={prefix}{extra}"


@contextlib.contextmanager
def fresh_redis() -> Iterator[str]:
    """A URL with a key prefix of its own, emptied after the test."""
    prefix = f"omniq-test-{uuid.uuid4().hex[:12]}"
    try:
        yield url_with_prefix(prefix)
    finally:
        drop_prefix(prefix)


# --- NATS ----------------------------------------------------------------------------------------------
@functools.cache
def nats_problem() -> str | None:
    """Why the test NATS server cannot be used (None when it can)."""
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py is not installed (pip install 'omniq[nats]')"
    parts = urlsplit(NATS_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), 1.0):
            return None
    except OSError:
        return f"no NATS server at {NATS_URL} (start `nats-server -js` or set OMNIQ_TEST_NATS)"


def fresh_nats_url() -> str:
    return f"{NATS_URL}?namespace=t{uuid.uuid4().hex[:12]}"


async def drop_nats(url: str) -> None:
    from omniq.storage.nats import NatsBackend

    b = NatsBackend(url)
    await b.connect()
    try:
        await b.drop()
    finally:
        await b.close()


@contextlib.contextmanager
def fresh_nats() -> Iterator[str]:
    """A namespace of its own for one test, deleted afterwards."""
    url = fresh_nats_url()
    try:
        yield url
    finally:
        run_apart(lambda: drop_nats(url))


#: Shared servers by URL scheme: (why it cannot be used, a fresh namespace of one test's own).
SERVERS: dict[str, tuple[Callable[[], str | None], Callable[[], contextlib.AbstractContextManager[str]]]] = {
    "postgresql": (postgres_problem, fresh_postgres),
    "redis": (redis_problem, fresh_redis),
    "nats": (nats_problem, fresh_nats),
}


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM ``omniq worker`` processes (they finish what they run), then kill any whose
    session is still there after 30 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
