"""The bucket task queue (``omniq.storage.bucket``) beyond the contract suite: conditional writes
on real servers (moto for S3, Azurite for Azure), the refusal of stores without them, races
lost and retried, shards, and what a claim asks the store (moto records every request).

The contract suite (test_contract.py) runs the whole task-queue contract on ``s3://`` and
``abfs://``; the worker processes are in test_bucket_processes.py.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from omniq.errors import ConfigError
from omniq.ids import new_id
from omniq.models import Task, TaskStatus
from omniq.storage.bucket import BucketQueueBackend, Conflict
from omniq.storage.bucket.cas import S3Cas
from omniq.storage.urls import open_backends

from .cloud import BUCKET, Recorded, moto_server

pytestmark = pytest.mark.anyio
S = TaskStatus


def task(**kw: Any) -> Task:
    kw.setdefault("id", new_id())
    kw.setdefault("payload", b"payload")
    return Task(**kw)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    import fsspec

    path = tmp_path_factory.mktemp("moto") / "requests.jsonl"
    env = {"MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(path)}
    with moto_server(**env) as endpoint:
        fs = fsspec.filesystem("s3", endpoint_url=endpoint, key="testing", secret="testing",
                               skip_instance_cache=True)  # fmt: skip
        fs.mkdir(BUCKET)
        yield Recorded(endpoint, path)


@pytest.fixture
def rec(recorded: Recorded, monkeypatch: pytest.MonkeyPatch) -> Recorded:
    monkeypatch.setenv("AWS_ENDPOINT_URL", recorded.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    recorded.reset()
    return recorded


def fresh_url(query: str = "") -> str:
    return f"s3://{BUCKET}/bq-{uuid.uuid4().hex[:10]}{query}"


@contextlib.asynccontextmanager
async def opened(url: str) -> Any:
    q, _, _ = open_backends(url)
    await q.connect()
    try:
        yield q
    finally:
        await q.close()


# --- conditional writes on the real server -------------------------------------------------------
async def test_moto_refuses_a_second_create_and_a_stale_replace(rec: Recorded) -> None:
    async with opened(fresh_url()) as q:
        assert isinstance(q, BucketQueueBackend)
        cas = q.cas
        assert isinstance(cas, S3Cas)
        path = f"{q.root}/cas-check"
        first = await cas.put(path, b"1", tag=None)
        with pytest.raises(Conflict):
            await cas.put(path, b"2", tag=None)
        second = await cas.put(path, b"3", tag=first)
        with pytest.raises(Conflict):
            await cas.put(path, b"4", tag=first)  # stale: someone wrote `second` since
        got = await cas.get(path)
        assert got is not None and got.data == b"3" and got.tag == second
    sent = [u for m, u in rec.requests() if m == "PUT" and "cas-check" in u]
    assert len(sent) == 4  # every attempt reached the server


async def test_open_probes_once_and_a_claim_lists_nothing(rec: Recorded) -> None:
    url = fresh_url()
    async with opened(url) as q:
        opening = rec.requests()
        probes = [u for m, u in opening if "/probe-" in u]
        assert len(probes) == 4  # create, create again (refused), stale replace (refused), delete
        rec.reset()
        await q.enqueue([task(priority=i % 3) for i in range(40)])
        rec.reset()
        got: list[Task] = []
        while len(got) < 40:
            got += await q.claim("w", queues=None, limit=7, lease=30, now=time.time())
        claiming = rec.requests()
        assert [t.priority for t in got] == sorted((t.priority for t in got), reverse=True)
        assert not any("list-type" in u or "prefix=" in u for _, u in claiming), claiming
        # one shard write per claim of 7, and the bodies: no request per task in the queue
        shard_puts = [u for m, u in claiming if m == "PUT" and "shard-0" in u]
        assert len(shard_puts) == 6
        rec.reset()
        await q.finish("w", [(t.id, S.SUCCEEDED) for t in got], now=time.time())
        assert len(rec.requests()) <= 2  # one compare-and-set (a read first if the view is old)


async def test_memory_store_has_no_conditional_writes_and_is_refused() -> None:
    q = BucketQueueBackend(f"memory://omniq-{uuid.uuid4().hex[:8]}/q")
    with pytest.raises(ConfigError, match=r"memory:// .*has no conditional writes.*s3://"):
        await q.connect()


async def test_a_store_that_ignores_conditions_is_refused_after_one_probe(
    gcs_env: str,
) -> None:
    # gcp-storage-emulator accepts ifGenerationMatch and ignores it: an S3-compatible server
    # without conditional writes looks exactly like this to the probe
    q, _, _ = open_backends(f"gs://{BUCKET}/bq-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ConfigError, match=r"does not honour conditional writes \(GCS ifGenerationMatch\): a second create-only write"):
        await q.connect()
    with pytest.raises(Exception, match="not connected"):
        await q.claim("w", queues=None, limit=1, lease=1, now=0)


async def test_gcs_reads_and_writes_reach_the_emulator_with_their_generation(gcs_env: str) -> None:
    """What the emulator does serve: create-only and replacing writes, and reads that give the
    generation a later write names (it sends no x-goog-generation header: read from the
    object's metadata first, then that generation's bytes)."""
    from omniq.storage.bucket.cas import GcsCas
    from omniq.storage.fsspec import FsspecBackend

    store = FsspecBackend(f"gs://{BUCKET}/bq-{uuid.uuid4().hex[:8]}")
    await store.connect()
    try:
        cas = GcsCas(store.files.fs)  # type: ignore[attr-defined]
        path = f"{store.root}/obj"
        assert await cas.get(path) is None
        first = await cas.put(path, b"one", tag=None)
        assert await cas.get(path) == (b"one", first)
        second = await cas.put(path, b"two", tag=first)
        assert second != first and await cas.get(path) == (b"two", second)
    finally:
        await store.close()


async def test_unknown_url_option_and_fixed_shards(rec: Recorded) -> None:
    with pytest.raises(ConfigError, match="unknown option 'lanes'"):
        open_backends(fresh_url("?lanes=2"))
    url = fresh_url("?shards=3")
    async with opened(url) as q:
        assert q.shards == 3
    async with opened(url.split("?")[0]) as q:  # the layout object says 3, whoever opens it
        assert q.shards == 3


# --- races --------------------------------------------------------------------------------------
@pytest.mark.parametrize("query", ["", "?shards=3"])
async def test_racing_claimers_on_many_connections_take_each_task_once(
    rec: Recorded, query: str
) -> None:
    url = fresh_url(query)
    ts = [task(priority=i % 4) for i in range(60)]
    async with opened(url) as first:
        await first.enqueue(ts)
        peers = [open_backends(url)[0] for _ in range(3)]
        for p in peers:
            await p.connect()
        claims: Counter[str] = Counter()
        try:

            async def drain(q: Any, worker: str) -> None:
                while True:
                    got = await q.claim(worker, queues=None, limit=3, lease=30, now=time.time())
                    if not got:
                        return
                    claims.update(t.id for t in got)
                    await q.finish(worker, [(t.id, S.SUCCEEDED) for t in got], now=time.time())

            async with anyio.create_task_group() as tg:
                for i, q in enumerate([first, *peers]):
                    for j in range(2):
                        tg.start_soon(drain, q, f"w{i}.{j}")
        finally:
            for p in peers:
                await p.close()
        assert set(claims) == {t.id for t in ts} and set(claims.values()) == {1}
        assert await first.statuses([t.id for t in ts]) == {t.id: S.SUCCEEDED for t in ts}
        assert (await first.counts())["default"] == {"succeeded": 60}


async def test_a_refused_batch_leaves_nothing_in_the_way_of_its_retry(rec: Recorded) -> None:
    async with opened(fresh_url()) as q:
        first = task()
        await q.enqueue([first])
        others = [task() for _ in range(3)]
        with pytest.raises(ConfigError, match="already exists"):
            await q.enqueue([*others, task(id=first.id, payload=b"another")])
        await q.enqueue(others)  # their bodies from the refused call were removed
        got = await q.claim("w", queues=None, limit=10, lease=30, now=time.time())
        assert sorted(t.id for t in got) == sorted(t.id for t in [first, *others])


async def test_priority_then_enqueue_order_hold_across_shards(rec: Recorded) -> None:
    async with opened(fresh_url("?shards=4")) as q:
        ts = [task(priority=p) for p in (0, 2, 1, 2, 0, 1, 3, 0, 2, 1, 1, 3)]
        await q.enqueue(ts)
        expected = [t.id for t in sorted(ts, key=lambda t: -t.priority)]  # stable: enqueue order
        got: list[str] = []
        for limit in (1, 3, 2, 1, 5):
            batch = await q.claim("w", queues=None, limit=limit, lease=30, now=time.time())
            got += [t.id for t in batch]
        assert got == expected
        assert len({q._shard(t.id) for t in ts}) > 1  # they did spread over shards


async def test_a_slot_whose_firer_died_before_storing_its_task_gets_it_from_the_janitor(
    rec: Recorded,
) -> None:
    """With shards, a schedule's slot (shard 0) and its task (another shard) are two writes; a
    firer that dies between them is replayed here step by step: body, then slot, no row."""
    import msgspec

    from omniq.lifecycle import fired
    from omniq.models import Schedule

    async with opened(fresh_url("?shards=4")) as q:
        await q.add_schedule(Schedule(id="s", name="s", payload=b"x", interval=60.0, next_run=1.0))
        t = next(t for t in (task() for _ in range(100)) if q._shard(t.id) != 0)
        await q._put_bodies([t])  # the firer's first write

        def fire(shard: Any) -> tuple[None, bool]:  # its second: the slot, a minute ago
            s = shard.schedules["s"]
            shard.schedules["s"] = fired(s, next_run=61.0, now=time.time() - 61, task_id=t.id)
            return None, True

        await q._update(0, fire)
        assert await q.get_task(t.id) is None  # (it died here)
        await q.reap(now=time.time())
        got = await q.get_task(t.id)
        assert got is not None and got.status is S.QUEUED
        assert msgspec.structs.replace(got, status=t.status) == t
        await q.reap(now=time.time())  # once
        assert (await q.counts())["default"] == {"queued": 1}


async def test_dependencies_across_shards_release_and_cancel(rec: Recorded) -> None:
    async with opened(fresh_url("?shards=4")) as q:
        roots = [task() for _ in range(6)]
        kids = [task(status=S.PENDING, depends_on=(r.id,)) for r in roots]
        both = task(status=S.PENDING, depends_on=(roots[0].id, roots[1].id))
        await q.enqueue(roots + kids + [both])
        got = await q.claim("w", queues=None, limit=100, lease=30, now=time.time())
        assert {t.id for t in got} == {r.id for r in roots}
        fin = await q.finish("w", [(r.id, S.SUCCEEDED) for r in roots[:3]], now=time.time())
        assert {t.id for t in fin.released} == {k.id for k in kids[:3]} | {both.id}
        fin = await q.finish("w", [(r.id, S.FAILED) for r in roots[3:]], now=time.time())
        assert {t.id for t, _ in fin.cancelled} == {k.id for k in kids[3:]}
        assert await q.statuses([k.id for k in kids] + [both.id]) == {
            **{k.id: S.QUEUED for k in kids[:3]}, **{k.id: S.CANCELLED for k in kids[3:]},
            both.id: S.QUEUED}  # fmt: skip


async def test_finished_rows_move_to_done_objects_and_stay_readable(rec: Recorded) -> None:
    async with opened(fresh_url()) as q:
        ts = [task(queue="a" if i % 2 else "b") for i in range(10)]
        await q.enqueue(ts)
        got = await q.claim("w", queues=None, limit=10, lease=30, now=1000.0)
        await q.finish("w", [(t.id, S.SUCCEEDED if i % 3 else S.FAILED) for i, t in enumerate(got)],
                       now=1000.0)  # fmt: skip
        before = await q.counts()
        await q.reap(now=1000.0 + 60)  # the janitor's pass archives them
        view = await q._view(0)
        assert view.shard.rows == {} and await q.counts() == before
        t = await q.get_task(ts[0].id)
        assert t is not None and t.status.is_final and t.payload == b"payload"
        assert await q.purge(before=1000.5) == 10
        assert await q.counts() == {}
        assert await q.get_task(ts[0].id) is None


async def test_an_idle_claim_loop_reads_the_shard_at_most_every_idle_max(rec: Recorded) -> None:
    from omniq.storage.bucket.state import IDLE_MAX

    async with opened(fresh_url()) as q:
        await q.claim("w", queues=None, limit=1, lease=30, now=time.time())
        rec.reset()
        started = time.monotonic()
        while time.monotonic() - started < 6.0:  # a worker's loop: claim, wait 0.5 s
            assert await q.claim("w", queues=None, limit=4, lease=30, now=time.time()) == []
            await q.wait_for_tasks(0.5)
            await q.reap(now=time.time())
            await q.expire(now=time.time())
            await q.get_schedules()
        reads = [u for m, u in rec.requests() if m == "GET"]
        assert len(rec.requests()) == len(reads)  # nothing written by an idle loop
        assert len(reads) <= 6.0 / IDLE_MAX + 2, reads
        # and work enqueued elsewhere is seen within IDLE_MAX
        async with opened(q.url) as other:
            t = task()
            await other.enqueue([t])
        seen = time.monotonic()
        got: list[Task] = []
        while not got:
            await q.wait_for_tasks(0.5)
            got = await q.claim("w", queues=None, limit=4, lease=30, now=time.time())
        assert [x.id for x in got] == [t.id] and time.monotonic() - seen <= IDLE_MAX + 0.6


# --- Azure (Azurite) ----------------------------------------------------------------------------
async def test_azurite_refuses_a_second_create_and_a_stale_replace(azurite: str) -> None:
    q = BucketQueueBackend(f"abfs://{BUCKET}/bq-{uuid.uuid4().hex[:8]}",
                           storage_options={"connection_string": azurite})  # fmt: skip
    await q.connect()
    try:
        path = f"{q.root}/cas-check"
        first = await q.cas.put(path, b"1", tag=None)
        with pytest.raises(Conflict):
            await q.cas.put(path, b"2", tag=None)
        await q.cas.put(path, b"3", tag=first)
        with pytest.raises(Conflict):
            await q.cas.put(path, b"4", tag=first)
    finally:
        await q.close()


# --- GCS: the request shape at gcsfs's call level -------------------------------------------------
async def test_gcs_writes_name_the_generation_they_replace() -> None:
    """No emulator honours ``ifGenerationMatch`` (gcp-storage-emulator ignores it, see above),
    so this checks what ``GcsCas`` asks gcsfs to send: ``ifGenerationMatch=0`` to create,
    the generation read to replace, and gcsfs's 412 (``FileExistsError``) taken as a lost
    race. The request itself is gcsfs's (``_call``), recorded here instead of sent."""
    gcsfs = pytest.importorskip("gcsfs")
    from omniq.storage.bucket.cas import GcsCas, cas_for

    fs = gcsfs.GCSFileSystem(token="anon", asynchronous=True, skip_instance_cache=True)
    calls: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = []
    refuse = {"on": False}

    async def call(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        calls.append((method, path, args, kwargs))
        if method == "GET":
            return {"x-goog-generation": "17"}, b"state"
        if refuse["on"]:
            raise FileExistsError(path)  # what gcsfs raises for 412 Precondition Failed
        return {"generation": "18"}

    fs._call = call
    cas = cas_for(fs, "gs", "gs://b/q")
    assert isinstance(cas, GcsCas)
    got = await cas.get("b/q/shard-0.msgpack")
    assert got is not None and got.tag == "17" and got.data == b"state"
    assert calls[-1][:3] == ("GET", "b/{}/o/{}", ("b", "q/shard-0.msgpack"))
    assert calls[-1][3]["alt"] == "media"
    assert await cas.put("b/q/shard-0.msgpack", b"new", tag=got.tag) == "18"
    method, url, _, kw = calls[-1]
    assert method == "POST" and url.endswith("/upload/storage/v1/b/b/o")
    assert (kw["uploadType"], kw["name"], kw["ifGenerationMatch"], kw["data"]) == (
        "media", "q/shard-0.msgpack", "17", b"new")  # fmt: skip
    await cas.put("b/q/tasks/x.msgpack", b"body", tag=None)
    assert calls[-1][3]["ifGenerationMatch"] == "0"  # create only
    refuse["on"] = True
    with pytest.raises(Conflict):
        await cas.put("b/q/shard-0.msgpack", b"late", tag="17")


def test_core_import_does_not_load_the_bucket_queue() -> None:
    import subprocess
    import sys

    code = "import sys, omniq; print('omniq.storage.bucket' in sys.modules, 's3fs' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ}, check=True)  # fmt: skip
    assert out.stdout.split() == ["False", "False"]
