"""Large values stored once, shipped once: notebook globals, arguments and results as blobs,
end to end through real workers and storage (SQLite files, memory://, file://, Redis, and an
``omniq worker`` in another process)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omniq import AsyncOmniQ, OmniQ
from omniq.blobcache import BlobCache
from omniq.serialization import BLOB_THRESHOLD

MB = 1 << 20


def notebook(source: str, **globals_: Any) -> dict[str, Any]:
    """A namespace like a notebook's: functions defined in it are ``__main__`` functions,
    shipped by value with the globals they read."""
    ns: dict[str, Any] = {"__name__": "__main__", **globals_}
    exec(compile(textwrap.dedent(source), "<cell>", "exec"), ns)
    return ns


def blob_rows(db: str) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(db)) as c:
        return c.execute("SELECT digest, size FROM omniq_blobs").fetchall()


def test_a_big_global_is_stored_once_for_every_submit_and_map_item(tmp_path):
    db = f"{tmp_path}/g.db"
    ns = notebook("def f(i):\n    return float(DATA[i]) + i\n", DATA=np.random.rand(2_500_000))  # 20 MB
    f, data = ns["f"], ns["DATA"]
    with OmniQ(tasks=f"sqlite:///{db}", worker="process", concurrency=2) as oq:
        got = [h.result(60) for h in [oq.submit(f, i) for i in range(20)] + oq.map(f, range(20))]
    assert got == [float(data[i]) + i for i in range(20)] * 2
    (row,) = blob_rows(db)
    assert row[1] == data.nbytes
    size = sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
    assert size < 1.5 * data.nbytes  # before: 1.6 GB for 40 submits and 40 map items


def _reachable(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), 1.0):
            return True
    except OSError:
        return False


@pytest.fixture(params=["sqlite", "memory", "file", "redis", "postgresql", "nats"])
def any_url(request, tmp_path):
    """A task queue URL on each backend (servers on loopback; skipped when one is not there),
    cleaned up afterwards."""
    kind, tag = request.param, os.urandom(5).hex()
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/any.db"
    elif kind == "memory":
        yield "memory://"
    elif kind == "file":
        yield f"file://{tmp_path}/fq"
    elif kind == "redis":
        redis = pytest.importorskip("redis")
        if not _reachable(6379):
            pytest.skip("no Redis server on 127.0.0.1:6379")
        yield f"redis://127.0.0.1:6379/0?prefix=omniq-snap-{tag}"
        client = redis.Redis(host="127.0.0.1", port=6379)
        for k in client.scan_iter(f"omniq-snap-{tag}*"):
            client.delete(k)
        client.close()
    elif kind == "postgresql":
        pytest.importorskip("asyncpg")
        if not _reachable(5432):
            pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
        base = os.environ.get("OMNIQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
        yield f"{base}{'&' if '?' in base else '?'}schema=omniq_snap_{tag}"
        subprocess.run(["psql", base, "-qc", f"DROP SCHEMA IF EXISTS omniq_snap_{tag} CASCADE"],
                       capture_output=True, timeout=60)
    else:
        pytest.importorskip("nats")
        if not _reachable(4222):
            pytest.skip("no NATS server on 127.0.0.1:4222")
        url = f"nats://127.0.0.1:4222?namespace=snap{tag}"
        yield url
        import anyio

        from tests.storage.backends import drop_nats

        anyio.run(drop_nats, url)


def test_each_task_sees_its_values_as_they_were_at_submit(any_url):
    """On every backend: a global changed in place, rebound, and an immutable global rebound
    between submits; each task sees what was there when it was submitted."""
    ns = notebook("def f(i):\n    return float(DATA[i]) * SCALE\n", DATA=np.zeros(BLOB_THRESHOLD), SCALE=1)
    f = ns["f"]
    with OmniQ(tasks=any_url, worker="process", concurrency=2) as oq:
        a = oq.submit(f, 3)
        ns["DATA"][3] = 5.0  # changed in place right after the submit
        b = oq.submit(f, 3)
        ns["DATA"] = np.full(BLOB_THRESHOLD, 7.0)  # rebound
        c = oq.submit(f, 3)
        ns["SCALE"] = 10  # an immutable global rebound: the function's cached shell is stale
        d = oq.submit(f, 3)
        ns["DATA"][3] = 1.0
        assert [h.result(60) for h in (a, b, c, d)] == [0.0, 5.0, 7.0, 70.0]


def test_a_task_may_write_to_an_array_it_got_without_touching_other_tasks(tmp_path):
    ns = notebook("def bump(i):\n    DATA[0] += i\n    return float(DATA[0])\n", DATA=np.zeros(BLOB_THRESHOLD))
    with OmniQ(tasks=f"sqlite:///{tmp_path}/w.db", worker="process", concurrency=1) as oq:
        assert [h.result(60) for h in oq.map(ns["bump"], [1, 2, 3])] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("kind", ["process", "thread", "async"])
def test_a_shared_big_argument_is_stored_once_and_big_results_come_back(tmp_path, kind):
    db = f"{tmp_path}/a.db"
    arg = np.arange(BLOB_THRESHOLD // 4, dtype="int64") * 3  # 2 MB
    ns = notebook("def twice(a):\n    return a * 2\n")
    with OmniQ(tasks=f"sqlite:///{db}", worker=kind, concurrency=2) as oq:
        hs = [oq.submit(ns["twice"], arg) for _ in range(6)]
        out = [h.result(60) for h in hs]
        r = oq.get_result(hs[0].id, wait=True, timeout=60)
    for v in out:
        assert np.array_equal(v, arg * 2)
    assert out[0].flags.writeable
    assert len(r.blobs) == 1 and np.array_equal(r.value, arg * 2)
    sizes = sorted(n for _, n in blob_rows(db))
    assert sizes == [arg.nbytes, arg.nbytes]  # the argument once, the (same) result once


def test_big_results_on_a_file_results_store_are_read_in_place(tmp_path):
    ns = notebook("import numpy as np\ndef make(n):\n    return np.ones(n)\n")
    with OmniQ(tasks=f"sqlite:///{tmp_path}/r.db", results=f"file://{tmp_path}/res", worker="process",
               concurrency=2) as oq:
        hs = [oq.submit(ns["make"], 3_000_000 + i) for i in range(4)]
        assert [float(h.result(60).sum()) for h in hs] == [3_000_000.0 + i for i in range(4)]
    with OmniQ(tasks=f"sqlite:///{tmp_path}/r.db", results=f"file://{tmp_path}/res", concurrency=0) as other:
        r = other.get_result(hs[2].id)
        assert r is not None and r.value.shape == (3_000_002,)


def test_an_omniq_worker_elsewhere_fetches_blobs_from_shared_storage(tmp_path):
    db = f"{tmp_path}/remote.db"
    ns = notebook("def f(i):\n    return float(DATA[i::1000].sum())\n", DATA=np.random.rand(1_500_000))
    with OmniQ(tasks=f"sqlite:///{db}", concurrency=0) as oq:
        hs = oq.map(ns["f"], range(8))
        oq.flush()
        w = subprocess.Popen([sys.executable, "-m", "omniq.cli", "worker", "--tasks", f"sqlite:///{db}",
                              "--worker", "process", "-c", "2"], stderr=subprocess.PIPE, text=True)
        try:
            got = [h.result(60) for h in hs]
        finally:
            w.terminate()
            err = w.communicate(timeout=60)[1]
    assert got == [float(ns["DATA"][i::1000].sum()) for i in range(8)], err
    assert len(blob_rows(db)) == 1


def test_two_omniq_workers_on_redis_share_one_copy(tmp_path):
    redis = pytest.importorskip("redis")
    base = os.environ.get("OMNIQ_TEST_REDIS", "redis://127.0.0.1:6379/0")
    try:
        client = redis.Redis.from_url(base, socket_connect_timeout=1)
        client.ping()
    except Exception as exc:
        pytest.skip(f"no Redis server answers at {base} ({exc})")
    prefix = f"omniq-blobs-{os.urandom(4).hex()}"
    url = f"{base}?prefix={prefix}"
    ns = notebook("def f(i):\n    return float(DATA[i])\n", DATA=np.random.rand(2_500_000))  # 20 MB
    workers = [subprocess.Popen([sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "process",
                                 "-c", "1"], stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        with OmniQ(tasks=url, concurrency=0) as oq:
            got = [h.result(60) for h in [oq.submit(ns["f"], i) for i in range(20)]]
        assert got == [float(ns["DATA"][i]) for i in range(20)]
        used = sum(client.memory_usage(k) or 0 for k in client.scan_iter(f"{prefix}*"))
        assert used < 1.5 * ns["DATA"].nbytes  # before: Redis grew by 420 MB
    finally:
        for w in workers:
            w.terminate()
            w.wait(60)
        for k in client.scan_iter(f"{prefix}*"):
            client.delete(k)


def test_unreferenced_blobs_are_swept_once_their_tasks_and_results_are_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(AsyncOmniQ, "BLOB_GRACE", 0.0)
    db = f"{tmp_path}/gc.db"
    ns = notebook("def f(i):\n    return DATA[:2] * i\n", DATA=np.random.rand(BLOB_THRESHOLD // 4))
    with OmniQ(tasks=f"sqlite:///{db}", worker="thread", concurrency=1) as oq:
        keep = oq.submit(ns["f"], 1)
        gone = oq.submit(lambda n: np.ones(n), BLOB_THRESHOLD // 4, )
        assert keep.result(60)[1] == ns["DATA"][1] and gone.result(60).shape == (BLOB_THRESHOLD // 4,)
        time.sleep(0.01)
        assert len(blob_rows(db)) == 2
        assert oq.sweep_blobs() == 1  # the task's global: its task is done
        assert len(blob_rows(db)) == 1  # the result's values stay while the result does
    with contextlib.closing(sqlite3.connect(db)) as c, c:  # the result goes (as purge would remove it)
        c.execute("DELETE FROM omniq_results WHERE task_id = ?", (gone.id,))
    with OmniQ(tasks=f"sqlite:///{db}", concurrency=0) as oq:
        assert oq.sweep_blobs() == 1
    assert blob_rows(db) == []


def test_the_blob_cache_checks_digests_and_stays_within_its_limit(tmp_path, monkeypatch):
    import anyio

    import omniq.blobcache
    from omniq.serialization._blobs import digest
    from omniq.storage.memory import MemoryBackend

    async def main() -> None:
        store = MemoryBackend("memory://")
        await store.connect()
        blobs = [os.urandom(3 * MB) for _ in range(4)]
        ds = [digest(b) for b in blobs]
        await store.put_blobs(dict(zip(ds, blobs)), "t:x", now=time.time())
        cache = BlobCache(str(tmp_path / "c"), limit=7 * MB)
        os.makedirs(cache.root)
        paths = await cache.ensure(store, ds[:2])
        assert [Path(paths[d]).read_bytes() for d in ds[:2]] == blobs[:2]
        await cache.ensure(store, ds[2:])
        assert len(os.listdir(cache.root)) == 4  # over the limit, but all used just now: kept
        monkeypatch.setattr(omniq.blobcache, "HOLD", 0.0)
        await cache.ensure(store, ds[2:])
        assert len(os.listdir(cache.root)) == 2  # the two used longest ago went
        bad = digest(b"other")
        await store.put_blobs({bad: b"tampered"}, "t:y", now=time.time())  # stored under a wrong digest
        assert await cache.ensure(store, [bad]) == {}
        await store.close()

    anyio.run(main)


def test_many_large_results_are_read_as_mapped_files_not_copied_into_memory(tmp_path):
    """sweep.results() over large results hands back arrays backed by mapped files: the pages
    are the OS's to drop, not copies held by the process."""
    import mmap

    ns = notebook("import numpy as np\ndef make(seed):\n    return np.full(600_000, float(seed))\n")
    with OmniQ(tasks=f"sqlite:///{tmp_path}/sw.db", worker="process", concurrency=2) as oq:
        sw = oq.sweep(ns["make"], {"seed": range(6)}, name="big")
        sw.wait(120)
    with OmniQ(tasks=f"sqlite:///{tmp_path}/sw.db", concurrency=0) as again:  # a new kernel, say
        records = again.sweep(ns["make"], {"seed": range(6)}, name="big").results()
    values = [r["value"] for r in records]
    assert [float(v[0]) for v in values] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    for v in values:
        base = v
        while getattr(base, "base", None) is not None:
            base = base.base
        if isinstance(base, memoryview):
            base = base.obj
        assert isinstance(base, mmap.mmap), type(base)
