"""The BlobStore contract: large values stored once by digest, their owners, the sweep.

Runs on every task-queue URL and result-store URL of the contract suite (``conftest.py``) and on
PostgreSQL, Redis and NATS JetStream (each skipped when its server does not answer; the same
defaults and variables as ``test_postgres.py``, ``test_redis.py`` and ``test_nats.py``). Every
run gets storage of its own: a temp directory, bucket prefix, schema, key prefix or namespace.
Times come from a fake clock (``T0``).
"""

from __future__ import annotations

import array
import contextlib
import functools
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pytest

from omniq.errors import StorageError
from omniq.ids import new_id
from omniq.models import Task, TaskResult, TaskStatus
from omniq.storage.urls import open_backends

from .cloud import cloud_storage_options
from .conftest import PRIVATE_URLS, RESULT_EVENT_ONLY_URLS, TASK_QUEUE_URLS, shares_storage

pytestmark = pytest.mark.anyio

T0 = 1_000_000.0

#: (URL template, holds a task queue)
TARGETS = [(u, True) for u in TASK_QUEUE_URLS] + [
    (u, False) for u in RESULT_EVENT_ONLY_URLS
]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(n: int = 100, seed: str = "") -> tuple[str, bytes]:
    data = (seed or uuid.uuid4().hex).encode() * (n // 32 + 1)
    data = data[:n]
    return digest(data), data


class Target(NamedTuple):
    template: str
    url: str
    has_tasks: bool
    options: dict[str, Any] | None

    @property
    def shared(self) -> bool:
        return self.template not in PRIVATE_URLS and shares_storage(self.url)


@pytest.fixture(params=TARGETS, ids=[t for t, _ in TARGETS])
def target(
    request: pytest.FixtureRequest, url_of: Callable[[str], str]
) -> Iterator[Target]:
    template, has_tasks = request.param
    url = url_of(template)
    yield Target(template, url, has_tasks, cloud_storage_options(url.split("://")[0], request))


def _open(t: Target) -> Any:
    if t.has_tasks:
        return open_backends(t.url)[0]
    return open_backends("memory://", t.url, t.url, storage_options=t.options)[1]


@pytest.fixture
async def store(target: Target) -> AsyncIterator[Any]:
    b = _open(target)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


async def another(t: Target, first: Any) -> Any:
    """A second connection to the same storage (the same object where storage is private)."""
    if not t.shared:
        await first.connect()
        return first
    b = _open(t)
    await b.connect()
    return b


# --- looking under the hood ----------------------------------------------------------------------


async def stored_copies(store: Any, d: str) -> int:
    """How many copies of blob ``d`` the storage holds (rows, keys, files, objects)."""
    kind = type(store).__name__
    if kind == "MemoryBackend":
        return int(d in store._blobs)
    if kind == "SQLiteBackend":
        return int(
            await store._call(
                lambda c: c.execute("SELECT count(*) FROM omniq_blobs WHERE digest = ?", (d,))
                .fetchone()[0]
            )
        )
    if kind == "PostgresBackend":
        return int(
            await store._run(lambda c: c.fetchval("SELECT count(*) FROM omniq_blobs WHERE digest = $1", d))
        )
    if kind == "RedisBackend":
        keys = await store._call(lambda r: r.keys(f"{store.prefix}:b:*"))
        return sum(k.decode().endswith(d) for k in keys)
    if kind == "NatsBackend":
        return len(await store._blob_metas([d]))
    files = await store.files.find(store._path("blobs"))
    return sum(p.rsplit("/", 1)[-1] == d for p in files)


async def owner_rows(store: Any, d: str) -> int:
    kind = type(store).__name__
    if kind == "SQLiteBackend":
        return int(
            await store._call(
                lambda c: c.execute(
                    "SELECT count(*) FROM omniq_blob_owners WHERE digest = ?", (d,)
                ).fetchone()[0]
            )
        )
    if kind == "PostgresBackend":
        return int(
            await store._run(
                lambda c: c.fetchval("SELECT count(*) FROM omniq_blob_owners WHERE digest = $1", d)
            )
        )
    raise NotImplementedError(kind)


# --- the contract ----------------------------------------------------------------------------------


async def test_put_then_get(store: Any) -> None:
    (d1, b1), (d2, b2) = blob(10), blob(5000)
    d3, _ = blob(7)
    assert await store.put_blobs({d1: b1, d2: b2}, "t:" + new_id(), now=T0) == len(b1) + len(b2)
    assert await store.get_blobs([d1, d2, d3]) == {d1: b1, d2: b2}
    assert await store.missing_blobs([d1, d3, d2]) == {d3}
    assert await store.get_blobs([]) == {}
    assert await store.missing_blobs([]) == set()
    got = await store.get_blobs([d2])
    assert type(got[d2]) is bytes


async def test_empty_and_binary_blobs(store: Any) -> None:
    empty = b""
    binary = bytes(range(256)) * 40 + b"\x00\x00"
    blobs = {digest(empty): empty, digest(binary): binary}
    assert await store.put_blobs(blobs, "t:x", now=T0) == len(binary)
    assert await store.get_blobs(list(blobs)) == blobs
    assert await store.missing_blobs(list(blobs)) == set()


async def test_stored_once(store: Any) -> None:
    d, data = blob(3000)
    assert await store.put_blobs({d: data}, "t:a", now=T0) == len(data)
    assert await store.put_blobs({d: bytearray(data)}, "t:b", now=T0 + 1) == 0
    assert await store.put_blobs({d: memoryview(data)}, "r:b", now=T0 + 2) == 0
    assert await stored_copies(store, d) == 1
    assert await store.get_blobs([d]) == {d: data}
    if type(store).__name__ in ("SQLiteBackend", "PostgresBackend"):
        assert await owner_rows(store, d) == 3
        await store.put_blobs({d: data}, "t:a", now=T0 + 3)  # the same owner again: one row
        await store.add_blob_owners({"t:a": [d, d]}, now=T0 + 4)
        assert await owner_rows(store, d) == 3


async def test_any_buffer_is_stored_as_its_bytes(store: Any) -> None:
    numbers = array.array("d", [1.5, -2.25, 1e300] * 1000)
    raw = numbers.tobytes()
    strided = memoryview(bytes(range(200)))[::2]  # not contiguous
    blobs = {digest(raw): memoryview(numbers), digest(strided.tobytes()): strided}
    assert await store.put_blobs(blobs, "t:x", now=T0) == len(raw) + 100
    assert await store.get_blobs(list(blobs)) == {
        digest(raw): raw, digest(strided.tobytes()): strided.tobytes(),
    }  # fmt: skip


async def test_mutable_input_is_copied(store: Any) -> None:
    data = bytearray(b"abc" * 100)
    d = digest(bytes(data))
    await store.put_blobs({d: data}, "t:x", now=T0)
    data[:] = b"x" * len(data)
    assert await store.get_blobs([d]) == {d: b"abc" * 100}


async def test_twenty_megabytes_round_trip(store: Any) -> None:
    data = os.urandom(20 * 1024 * 1024)
    d = digest(data)
    assert await store.missing_blobs([d]) == {d}
    assert await store.put_blobs({d: data}, "t:big", now=T0) == len(data)
    got = await store.get_blobs([d])
    assert len(got[d]) == len(data) and got[d] == data
    assert await store.put_blobs({d: data}, "t:big2", now=T0) == 0
    path = store.blob_path(d)
    if local_files(store, len(data)):
        assert path is not None and Path(path).read_bytes() == data
    else:
        assert path is None


async def test_blob_path_only_for_stored_local_files(store: Any) -> None:
    d, data = blob(100)
    assert store.blob_path(d) is None
    await store.put_blobs({d: data}, "t:x", now=T0)
    path = store.blob_path(d)
    if local_files(store, len(data)):
        assert path is not None and Path(path).read_bytes() == data
    else:
        assert path is None


def local_files(store: Any, size: int) -> bool:
    """Whether a blob of ``size`` bytes is a local file (``blob_path``): always on file://; on
    an SQLite file from 64 KiB on (beside the database)."""
    if store.url.startswith("file://"):
        return True
    return type(store).__name__ == "SQLiteBackend" and not store.in_memory and size >= 1 << 16



async def test_bad_digests_are_refused(store: Any) -> None:
    good, data = blob(10)
    for bad in ["", "abc", good.upper(), good[:-1] + "g", "../" + good[3:], good + "0"]:
        with pytest.raises(ValueError, match="blobs"):
            await store.put_blobs({bad: data}, "t:x", now=T0)
        with pytest.raises(ValueError, match="digests"):
            await store.get_blobs([good, bad])
        with pytest.raises(ValueError, match="digests"):
            await store.missing_blobs([bad])
        with pytest.raises(ValueError, match="owners"):
            await store.add_blob_owners({"t:x": [bad]}, now=T0)
    with pytest.raises(ValueError, match="digests"):
        await store.get_blobs(good)  # a str, not a list of them
    with pytest.raises(ValueError, match="blobs"):
        await store.put_blobs({good: "text"}, "t:x", now=T0)
    with pytest.raises(ValueError, match="owner"):
        await store.put_blobs({good: data}, "", now=T0)
    assert await store.missing_blobs([good]) == {good}  # nothing was stored by the refusals


async def _tasks_in_every_state(store: Any) -> dict[str, str]:
    """Task ids by name: ``queued``, ``running`` and ``done`` (succeeded)."""
    queued, running, done = (Task(id=new_id(), payload=b"p", created_at=T0) for _ in range(3))
    await store.enqueue([running, done])
    claimed = await store.claim("w", queues=None, limit=2, lease=1e9, now=T0)
    assert {t.id for t in claimed} == {running.id, done.id}
    await store.finish("w", [(done.id, TaskStatus.SUCCEEDED)], now=T0)
    await store.enqueue([queued])
    return {"queued": queued.id, "running": running.id, "done": done.id}


async def test_sweep_keeps_what_live_owners_refer_to(target: Target, store: Any) -> None:
    tasks = await _tasks_in_every_state(store) if target.has_tasks else {}
    rid = new_id()
    await store.put_results([TaskResult(task_id=rid, status=TaskStatus.SUCCEEDED, payload=b"r")])
    named = {name: blob(200 + i) for i, name in enumerate(
        ["queued", "running", "done", "unknown", "result", "young", "shared"]
    )}  # fmt: skip
    d = {name: x[0] for name, x in named.items()}
    for name in ("queued", "running", "done"):
        owner = "t:" + tasks.get(name, new_id())
        await store.put_blobs(dict([named[name]]), owner, now=T0)
    await store.put_blobs(dict([named["unknown"]]), "t:" + new_id(), now=T0)
    await store.put_blobs(dict([named["result"]]), "r:" + rid, now=T0)
    await store.put_blobs(dict([named["young"]]), "t:" + new_id(), now=T0 + 100)
    await store.put_blobs(dict([named["shared"]]), "t:" + new_id(), now=T0)  # dead owner ...
    await store.add_blob_owners({"r:" + rid: [d["shared"]]}, now=T0)  # ... and a live one

    gone = {"done", "unknown"} if target.has_tasks else {"queued", "running", "done", "unknown"}
    assert await store.sweep_blobs(older_than=T0 + 50) == len(gone)
    assert await store.missing_blobs(list(d.values())) == {d[n] for n in gone}
    assert await store.sweep_blobs(older_than=T0 + 50) == 0  # nothing more to do

    # the result goes: its blobs follow at the next sweep (the young one only once old)
    assert await store.delete_results([rid]) == 1
    assert await store.sweep_blobs(older_than=T0 + 50) == 2
    assert await store.missing_blobs([d["result"], d["shared"], d["young"]]) == {
        d["result"], d["shared"],
    }  # fmt: skip
    if target.has_tasks:  # the running task finishes, the queued one is cancelled
        await store.finish("w", [(tasks["running"], TaskStatus.FAILED)], now=T0 + 1)
        await store.cancel([tasks["queued"]], now=T0 + 1)
    assert await store.sweep_blobs(older_than=T0 + 200) == (3 if target.has_tasks else 1)
    assert await store.get_blobs(list(d.values())) == {}


async def test_sweep_spares_what_was_recorded_within_the_grace_time(store: Any) -> None:
    (d1, b1), (d2, b2) = blob(100), blob(100)
    await store.put_blobs({d1: b1}, "t:" + new_id(), now=T0)  # an upload whose task ...
    await store.put_blobs({d2: b2}, "t:" + new_id(), now=T0 + 10)
    assert await store.sweep_blobs(older_than=T0 + 5) == 1  # ... never came: gone once old
    assert await store.missing_blobs([d1, d2]) == {d1}
    # an old blob nobody owns any more is owned again before the sweep: it stays
    await store.put_blobs({d2: b2}, "t:" + new_id(), now=T0 + 100)
    assert await store.sweep_blobs(older_than=T0 + 50) == 0
    assert await store.get_blobs([d2]) == {d2: b2}
    # recorded again by add_blob_owners: the same
    await store.add_blob_owners({"t:" + new_id(): [d2]}, now=T0 + 200)
    assert await store.sweep_blobs(older_than=T0 + 150) == 0
    assert await store.sweep_blobs(older_than=T0 + 250) == 1


async def test_add_blob_owners_for_many_owners_at_once(target: Target, store: Any) -> None:
    blobs = dict(blob(50 + i) for i in range(5))
    ds = list(blobs)
    await store.put_blobs(blobs, "t:uploader", now=T0)
    results = [TaskResult(task_id=new_id(), status=TaskStatus.SUCCEEDED) for _ in range(3)]
    await store.put_results(results)
    await store.add_blob_owners(
        {"r:" + results[0].task_id: ds[:2], "r:" + results[1].task_id: ds[1:3],
         "r:" + results[2].task_id: [], "t:" + new_id(): ds[3:]},
        now=T0,
    )  # fmt: skip
    await store.add_blob_owners({}, now=T0)
    assert await store.sweep_blobs(older_than=T0 + 1) == 2
    assert await store.missing_blobs(ds) == set(ds[3:])
    await store.delete_results([results[1].task_id])
    assert await store.sweep_blobs(older_than=T0 + 1) == 1
    assert await store.missing_blobs(ds) == set(ds[2:])


async def test_concurrent_puts_of_one_digest_store_one_blob(target: Target, store: Any) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    d = digest(data)
    others = [await another(target, store) for _ in range(2)]
    try:
        backends = [store, *others]
        written: list[int] = []

        async def put(b: Any, i: int) -> None:
            written.append(await b.put_blobs({d: data}, f"t:owner{i}", now=T0))

        async with anyio.create_task_group() as tg:
            for i, b in enumerate(backends):
                tg.start_soon(put, b, i)
        assert len(data) <= sum(written) <= len(data) * len(backends)
        assert await stored_copies(store, d) == 1
        for b in backends:
            assert await b.get_blobs([d]) == {d: data}
            assert await b.missing_blobs([d]) == set()
    finally:
        for b in others:
            await b.close()


async def test_concurrent_sweeps_and_puts(target: Target, store: Any) -> None:
    """Sweeps racing puts of the same (old, unowned) blobs never lose a blob just owned."""
    other = await another(target, store)
    try:
        for rnd in range(3):
            now = T0 + 1000 * rnd
            blobs = dict(blob(300 + i) for i in range(6))
            await store.put_blobs(blobs, "t:" + new_id(), now=now)  # dead owner: sweepable
            owner = "t:" + new_id()

            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(store.sweep_blobs, older_than=now + 50))
                tg.start_soon(functools.partial(other.put_blobs, blobs, owner, now=now + 100))
            # every blob either survived (owned now) or was put again after the sweep took it
            assert await other.get_blobs(list(blobs)) == blobs
            assert await store.sweep_blobs(older_than=now + 50) == 0
    finally:
        await other.close()


# --- a crash mid-write never leaves a blob that reads as valid ------------------------------------


def only(*templates: str) -> pytest.MarkDecorator:
    """Run a test on these URL templates only (the others are not even opened)."""
    chosen = [t for t in TARGETS if t[0] in templates]
    return pytest.mark.parametrize("target", chosen, indirect=True, ids=[t for t, _ in chosen])


@only("file://{tmp}/fq")
async def test_a_partial_file_is_not_a_blob(target: Target, store: Any) -> None:
    d, data = blob(100_000)
    path = Path(store._blob_file(d))
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / f".{d}.0123abcd.tmp").write_bytes(data[:5000])  # _write_atomic, cut short
    assert await store.missing_blobs([d]) == {d}
    assert await store.get_blobs([d]) == {}
    assert store.blob_path(d) is None
    assert await store.put_blobs({d: data}, "t:x", now=T0) == len(data)
    assert await store.get_blobs([d]) == {d: data}


@only(
    "sqlite:///{tmp}/t.db", "sqlite://:memory:", "sqlite:///{tmp}/t.db#no-returning",
    "postgresql://{server}",
)
async def test_a_failed_transaction_stores_nothing(target: Target, store: Any) -> None:
    """A write that fails half-way (the second blob of a batch) leaves no blob nor owner."""
    (d1, b1), (d2, b2) = blob(1000), blob(2000)
    kind = type(store).__name__
    if kind == "SQLiteBackend" and store.in_memory:
        await store._call(lambda c: c.execute(_SQLITE_TRIGGER.format(d=d2)))
    elif kind == "SQLiteBackend":
        with sqlite3.connect(store.path) as conn:
            conn.execute(_SQLITE_TRIGGER.format(d=d2))
    else:
        await store._run(lambda c: c.execute(_PG_TRIGGER.format(d=d2)))
    with pytest.raises(StorageError, match="no blob for you"):
        await store.put_blobs({d1: b1, d2: b2}, "t:x", now=T0)
    assert await store.missing_blobs([d1, d2]) == {d1, d2}
    assert await owner_rows(store, d1) == 0
    assert await store.put_blobs({d1: b1}, "t:x", now=T0) == len(b1)
    assert await store.get_blobs([d1, d2]) == {d1: b1}


_SQLITE_TRIGGER = """CREATE TRIGGER fail_blob BEFORE INSERT ON omniq_blobs
    WHEN NEW.digest = '{d}' BEGIN SELECT RAISE(ABORT, 'no blob for you'); END"""
_PG_TRIGGER = """
CREATE FUNCTION fail_blob() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.digest = '{d}' THEN RAISE EXCEPTION 'no blob for you'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_blob BEFORE INSERT ON omniq_blobs FOR EACH ROW EXECUTE FUNCTION fail_blob();
"""


@only("nats://{server}")
async def test_half_written_nats_object_is_not_a_blob(target: Target, store: Any) -> None:
    """Chunks published without the meta message (a crash mid-put) are not a blob."""
    d, data = blob(300_000)
    await store._publish_ok([(store._blob_chunk_subject("crashednuid"), data[:100_000], None)])
    assert await store.missing_blobs([d]) == {d}
    assert await store.get_blobs([d]) == {}
    assert await store.put_blobs({d: data}, "t:x", now=T0) == len(data)
    assert await store.get_blobs([d]) == {d: data}


async def test_an_sqlite_file_of_schema_version_1_gets_the_blob_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    b = open_backends(f"sqlite:///{path}")[0]
    await b.connect()
    await b.close()
    with sqlite3.connect(path) as conn:  # as OmniQ before blobs left it
        conn.execute("DROP TABLE omniq_blob_owners")
        conn.execute("DROP TABLE omniq_blobs")
        conn.execute("PRAGMA user_version = 1")
    b = open_backends(f"sqlite:///{path}")[0]
    await b.connect()
    try:
        d, data = blob(10)
        assert await b.put_blobs({d: data}, "t:x", now=T0) == len(data)
        assert await b.get_blobs([d]) == {d: data}
    finally:
        await b.close()


@only("postgresql://{server}")
async def test_a_postgres_schema_of_version_1_gets_the_blob_tables(target: Target) -> None:
    b = _open(target)
    await b.connect()
    try:
        await b._run(
            lambda c: c.execute(
                "DROP TABLE omniq_blob_owners; DROP TABLE omniq_blobs; "
                "UPDATE omniq_meta SET value = '1' WHERE key = 'schema_version'"
            )
        )  # as OmniQ before blobs left it
    finally:
        await b.close()
    b = _open(target)
    await b.connect()
    try:
        d, data = blob(10)
        assert await b.put_blobs({d: data}, "t:x", now=T0) == len(data)
        assert await b.get_blobs([d]) == {d: data}
    finally:
        await b.close()


@only("redis://{server}")
async def test_redis_blob_is_one_string(target: Target, store: Any) -> None:
    d, data = blob(5000)
    await store.put_blobs({d: data}, "t:x", now=T0)
    key = f"{store.prefix}:b:{d}"
    assert await store._call(lambda r: r.type(key)) == b"string"
    assert await store._call(lambda r: r.get(key)) == data


# --- stores without transactions: a sweep takes a blob in two steps -----------------------------

TWO_STEP = ["file://{tmp}/fq", "memory://bucket{tmp}", "s3://omniq-test{tmp}", "nats://{server}"]


@only(*TWO_STEP)
async def test_a_put_that_found_the_blob_stored_keeps_it_from_a_racing_sweep(
    target: Target, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, data = blob(5000)
    await store.put_blobs({d: data}, "t:" + new_id(), now=T0)  # a dead owner: sweepable
    other = await another(target, store)
    take = store._take_blob

    async def racing(*args: Any) -> int:
        # the sweep decided to take the blob; a put marks an owner, finds the blob stored
        assert await other.put_blobs({d: data}, "t:" + new_id(), now=T0 + 100) == 0
        return int(await take(*args))

    monkeypatch.setattr(store, "_take_blob", racing)
    try:
        assert await store.sweep_blobs(older_than=T0 + 50) == 0
        assert await other.get_blobs([d]) == {d: data}
        assert await other.missing_blobs([d]) == set()
    finally:
        await other.close()


async def _crash_mid_sweep(store: Any, d: str) -> None:
    """Leave blob ``d`` as a sweep that crashed after its first step leaves it."""
    if type(store).__name__ == "NatsBackend":
        _, meta = await store._blob_meta(d)
        trashed = dict(meta, name="trash/" + d, description="0.0")
        await store._publish_ok(
            [(store._blob_meta_subject("trash/" + d), json.dumps(trashed).encode(), None)]
        )
        await store._purge(store.blobs_stream, store._blob_meta_subject(d))
    else:
        await store.files.move(store._blob_file(d), store._path(f"blob-trash/{d}/0.0@crashed"))


@only(*TWO_STEP)
async def test_a_blob_a_sweep_left_in_the_trash_is_read_then_settled(store: Any) -> None:
    (d1, b1), (d2, b2) = blob(4000), blob(6000)
    await store.put_blobs({d1: b1}, "t:" + new_id(), now=T0)  # dead once old
    await store.put_blobs({d2: b2}, "t:" + new_id(), now=T0 + 100)  # still young
    for d in (d1, d2):
        await _crash_mid_sweep(store, d)
    assert await store.get_blobs([d1, d2]) == {d1: b1, d2: b2}  # readers look in the trash
    assert await store.missing_blobs([d1, d2]) == {d1, d2}  # a put stores them again
    assert await store.sweep_blobs(older_than=T0 + 50) == 1  # d1: no owner left
    assert await store.get_blobs([d1, d2]) == {d2: b2}
    assert await store.missing_blobs([d1, d2]) == {d1}  # d2 is back where it belongs
    assert await store.sweep_blobs(older_than=T0 + 50) == 0


@only("sqlite:///{tmp}/t.db")
async def test_sqlite_keeps_large_blobs_as_files_beside_the_database(target: Target, store: Any) -> None:
    """Written once, outside the WAL; the file goes with its row; a file a crash left without a
    row (or a temporary one) goes once it is older than the grace time."""
    d, data = blob(200_000)
    assert await store.put_blobs({d: data}, "t:gone", now=T0) == len(data)
    path = Path(store.blob_path(d))
    assert path.read_bytes() == data and oct(path.stat().st_mode & 0o777) == "0o600"
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        assert conn.execute("SELECT size, length(data) FROM omniq_blobs").fetchall() == [(len(data), 0)]
    assert await store.get_blobs([d]) == {d: data}
    orphan, odata = blob(300_000)
    folder = Path(store.blob_dir) / orphan[:2]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / orphan).write_bytes(odata)  # a crash between the file and its row
    (folder / f"{orphan}.1.2.tmp").write_bytes(odata[:10])  # a crash while writing
    for f in folder.iterdir():
        os.utime(f, (T0, T0))
    fresh, fdata = blob(100_000)
    assert await store.put_blobs({fresh: fdata}, "t:unknown", now=time.time()) == len(fdata)
    assert await store.sweep_blobs(older_than=time.time() - 60) == 1  # `fresh` is within the grace
    assert not path.exists()
    assert not (folder / orphan).exists() and not (folder / f"{orphan}.1.2.tmp").exists()
    assert Path(store.blob_path(fresh)).read_bytes() == fdata
