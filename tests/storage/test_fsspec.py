"""FsspecBackend (results, events) on file://, memory:// and real protocol servers on loopback:
S3 (moto), Google Cloud Storage (gcp-storage-emulator) and Azure Blob Storage (Azurite, from npm);
and the file:// task queue, including 4 OS processes racing for claims.

The loopback servers and their fixtures live in ``cloud.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import anyio
import msgspec
import pytest

from omniq.errors import ConfigError, StorageError
from omniq.ids import new_id, new_ids
from omniq.models import ErrorInfo, Schedule, Task, TaskEvent, TaskResult, TaskStatus
from omniq.storage.base import TaskQueue, WorkerInfo
from omniq.storage.fsspec import (
    FileTaskQueueBackend,
    FsspecBackend,
    bucket_missing,
    decode_name,
    encode_name,
    explain,
    key_marker,
    no_task_queue_message,
    open_fsspec,
    parse_key_marker,
    scrub,
)
from omniq.storage.fsspec.layout import key_marks_name

from . import cloud
from .cloud import (
    AZURITE_KEY,
    BUCKET,
    azurite_blob_exe,
    azurite_connection_string,
    cloud_storage_options,
    free_port,
    fsspec_url,
    moto_server,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # s3fs runs on asyncio only


@pytest.fixture(params=["file", "memory", "s3", "gs", "abfs"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FsspecBackend]:
    options = cloud_storage_options(request.param, request)
    backend = open_fsspec(fsspec_url(request.param, tmp_path), options)
    assert isinstance(backend, FsspecBackend)
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.close()


def result(tid: str | None = None, **kw: Any) -> TaskResult:
    base: dict[str, Any] = dict(
        task_id=tid or new_id(),
        status=TaskStatus.SUCCEEDED,
        payload=b"\x01\x00value\xff",
        attempts=1,
        started_at=100.0,
        finished_at=101.5,
        worker="w1",
        queue="q",
        name="f",
    )
    base.update(kw)
    return TaskResult(**base)


def same(a: TaskResult | None, b: TaskResult) -> bool:
    return a is not None and msgspec.structs.asdict(a) == msgspec.structs.asdict(b)


# --------------------------------------------------------------------------------------------
# Names (pure)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["", ".", "..", "a/b", "exp1", "lr=0.1,seed=2", "ünï cødé @+%", "x" * 700, ".hidden"]
)
def test_name_encoding_roundtrips_and_is_one_safe_component(text: str) -> None:
    enc = encode_name(text)
    assert "/" not in enc and enc not in (".", "..") and not enc.startswith(".")
    assert decode_name(enc) == text


@pytest.mark.parametrize(
    "key", ["exp1/abc/lr=0.1", "a//b", "/lead", "trail/", "s/" + "é" * 200 + "/p", "solo"]
)
def test_key_markers_roundtrip_with_short_components(key: str) -> None:
    rel = key_marker(key, "0189abcdef0123456789abcd")
    assert all(len(part) <= 255 for part in rel.split("/"))
    assert parse_key_marker(rel) == (key, "0189abcdef0123456789abcd")


def test_a_long_key_marks_its_markers_by_digest() -> None:
    assert key_marks_name("exp1/a b") == encode_name("exp1/a b")
    long = "k/" + "x" * 300
    assert key_marks_name(long) == "~" + hashlib.sha256(long.encode()).hexdigest()
    assert key_marks_name(long + "y") != key_marks_name(long)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_put_get_roundtrip_keeps_payload_and_metadata(store: FsspecBackend) -> None:
    r = result(
        status=TaskStatus.FAILED,
        payload=bytes(range(256)) * 10,
        error=ErrorInfo("ValueError", "bad", "Traceback ...\n"),
        metadata={"a": [1, 2]},
        key="sweep/d1/x=1",
        expires_at=None,
    )
    await store.put_results([r])
    got = await store.get_result(r.task_id)
    assert same(got, r)
    assert got is not None and got.payload == bytes(range(256)) * 10


@pytest.mark.anyio
async def test_missing_results_are_none_or_left_out(store: FsspecBackend) -> None:
    r = result()
    await store.put_results([r])
    assert await store.get_result(new_id()) is None
    assert await store.get_result("not-an-omniq-id/../x") is None
    got = await store.get_results([r.task_id, new_id()])
    assert list(got) == [r.task_id]


@pytest.mark.anyio
async def test_overwrite_replaces(store: FsspecBackend) -> None:
    r = result(status=TaskStatus.FAILED, attempts=1)
    await store.put_results([r])
    r2 = result(r.task_id, status=TaskStatus.SUCCEEDED, attempts=2, payload=b"again")
    await store.put_results([r2])
    assert same(await store.get_result(r.task_id), r2)


@pytest.mark.anyio
async def test_get_many_in_one_call(store: FsspecBackend) -> None:
    rs = [result(tid, payload=str(i).encode()) for i, tid in enumerate(new_ids(300))]
    rs.append(result("custom id with spaces", payload=b"c"))
    await store.put_results(rs)
    got = await store.get_results([r.task_id for r in rs])
    assert len(got) == len(rs)
    assert all(same(got[r.task_id], r) for r in rs)


@pytest.mark.anyio
async def test_find_by_key_prefix(store: FsspecBackend) -> None:
    long = "p=" + "9" * 400
    keys = [
        "exp1/abc/lr=0.1",
        "exp1/abc/lr=0.01",
        "exp1/abd/x",
        "exp1/def/x",
        "exp2/abc/y",
        f"exp1/abc/{long}",
    ]
    rs = [result(key=k) for k in keys]
    await store.put_results([*rs, result()])  # one without a key

    def found(rs: list[TaskResult]) -> set[str]:
        return {r.key for r in rs if r.key}

    assert found(await store.find_results(key_prefix="exp1/abc/")) == {
        "exp1/abc/lr=0.1",
        "exp1/abc/lr=0.01",
        f"exp1/abc/{long}",
    }
    assert found(await store.find_results(key_prefix="exp1/ab")) == {
        "exp1/abc/lr=0.1",
        "exp1/abc/lr=0.01",
        "exp1/abd/x",
        f"exp1/abc/{long}",
    }
    assert found(await store.find_results(key_prefix="exp1/abc/lr=0.0")) == {"exp1/abc/lr=0.01"}
    assert len(await store.find_results(key_prefix="exp1/")) == 5
    assert len(await store.find_results(key_prefix="")) == 6
    assert await store.find_results(key_prefix="exp3/") == []
    # a result re-keyed by an overwrite is not found under its old key
    await store.put_results([result(rs[-2].task_id, key="exp3/moved")])
    assert found(await store.find_results(key_prefix="exp2/")) == set()
    assert found(await store.find_results(key_prefix="exp3/")) == {"exp3/moved"}


@pytest.mark.anyio
async def test_delete_results(store: FsspecBackend) -> None:
    a, b, c = result(key="k/a"), result(key="k/b", expires_at=5.0), result()
    await store.put_results([a, b, c])
    assert await store.delete_results([a.task_id, b.task_id, new_id()]) == 2
    assert await store.get_results([a.task_id, b.task_id, c.task_id]) == {c.task_id: c}
    assert await store.find_results(key_prefix="k/") == []
    assert await store.purge_results(now=10.0) == 0


@pytest.mark.anyio
async def test_purge_by_ttl(store: FsspecBackend) -> None:
    now = time.time()
    old = result(expires_at=now - 10, key="ttl/old")
    edge = result(expires_at=now)
    fresh = result(expires_at=now + 3600)
    forever = result()
    extended = result(expires_at=now - 5)
    await store.put_results([old, edge, fresh, forever, extended])
    await store.put_results([result(extended.task_id, expires_at=now + 3600)])  # a later TTL
    assert await store.purge_results(now=now) == 2
    left = await store.get_results([r.task_id for r in (old, edge, fresh, forever, extended)])
    assert set(left) == {fresh.task_id, forever.task_id, extended.task_id}
    assert await store.find_results(key_prefix="ttl/") == []
    assert await store.purge_results(now=now) == 0


@pytest.mark.anyio
async def test_truncated_object_is_not_a_result(
    store: FsspecBackend, caplog: pytest.LogCaptureFixture
) -> None:
    r = result(payload=b"z" * 1000)
    data = msgspec.msgpack.encode(r)
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        await store.files.put(store.result_path(r.task_id), data[:cut])
        assert await store.get_result(r.task_id) is None
        assert await store.get_results([r.task_id]) == {}
    assert "unreadable result" in caplog.text
    await store.put_results([r])
    assert same(await store.get_result(r.task_id), r)


@pytest.mark.anyio
async def test_local_writes_leave_no_temp_files(tmp_path: Path) -> None:
    b = FsspecBackend(f"file://{tmp_path}/s")
    await b.connect()
    await b.put_results([result() for _ in range(50)])
    await b.close()
    assert not [p for p in (tmp_path / "s").rglob("*") if p.name.startswith(".")]
    days = list((tmp_path / "s" / "results").iterdir())
    assert len(days) == 1 and len(list(days[0].iterdir())) == 50  # results/<yyyy-mm-dd>/<id>


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------
def ev(tid: str, type: str, ts: float, **kw: Any) -> TaskEvent:
    return TaskEvent(task_id=tid, type=type, timestamp=ts, **kw)


@pytest.mark.anyio
async def test_events_in_time_order_and_filters(store: FsspecBackend) -> None:
    await store.append_events([ev("a", "enqueued", 10.0), ev("b", "enqueued", 10.0)])
    await store.append_events([ev("a", "started", 12.0, worker="w"), ev("b", "started", 11.0)])
    await store.append_events([ev("a", "succeeded", 13.0, detail="ok"), ev("c", "enqueued", 9.0)])
    await store.append_events([ev("d", "enqueued", 86400.0 * 3)])  # another day
    await store.append_events([])
    got = await store.query_events()
    assert [(e.task_id, e.type) for e in got] == [
        ("c", "enqueued"),
        ("a", "enqueued"),
        ("b", "enqueued"),
        ("b", "started"),
        ("a", "started"),
        ("a", "succeeded"),
        ("d", "enqueued"),
    ]
    assert [e.type for e in await store.query_events(task_id="a")] == [
        "enqueued",
        "started",
        "succeeded",
    ]
    assert [e.timestamp for e in await store.query_events(since=12.0)] == [12.0, 13.0, 259200.0]
    assert [e.task_id for e in await store.query_events(types=["started"])] == ["b", "a"]
    assert len(await store.query_events(limit=2)) == 2
    assert (await store.query_events(task_id="a", types=["started"]))[0].worker == "w"


@pytest.mark.anyio
async def test_event_ties_keep_append_order(store: FsspecBackend) -> None:
    for i in range(5):
        await store.append_events([ev(f"t{i}", "enqueued", 50.0)])
    assert [e.task_id for e in await store.query_events()] == [f"t{i}" for i in range(5)]


@pytest.mark.anyio
async def test_event_batches_are_read_once(
    store: FsspecBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(20):
        await store.append_events([ev(f"t{i}", "enqueued", 100.0 + i)])
    fresh = open_fsspec(store.url, store.storage_options)
    assert isinstance(fresh, FsspecBackend)
    await fresh.connect()
    try:
        reads: list[int] = []
        real = fresh.files.get_many

        async def counting(paths: Any) -> dict[str, bytes]:
            reads.append(len(paths))
            return await real(paths)

        monkeypatch.setattr(fresh.files, "get_many", counting)
        assert len(await fresh.query_events()) == 20
        assert len(await fresh.query_events(task_id="t3")) == 1
        await store.append_events([ev("late", "enqueued", 500.0)])
        assert len(await fresh.query_events()) == 21
        assert reads == [20, 1]  # only the new batch was downloaded again
    finally:
        await fresh.close()


@pytest.mark.anyio
async def test_purge_events(store: FsspecBackend) -> None:
    await store.append_events([ev("a", "enqueued", 1.0), ev("a", "started", 2.0)])
    await store.append_events([ev("b", "enqueued", 3.0), ev("b", "started", 6.0)])
    await store.append_events([ev("c", "enqueued", 7.0)])
    assert await store.purge_events(before=5.0) == 3
    assert [(e.task_id, e.timestamp) for e in await store.query_events()] == [
        ("b", 6.0),
        ("c", 7.0),
    ]
    assert await store.purge_events(before=5.0) == 0


# --------------------------------------------------------------------------------------------
# Connection and errors
# --------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_missing_bucket_is_a_clear_storage_error(s3_env: str) -> None:
    b = FsspecBackend("s3://no-such-bucket-here/prefix")
    with pytest.raises(StorageError) as info:
        await b.connect()
    msg = str(info.value)
    assert "s3://no-such-bucket-here/prefix" in msg and "does not exist" in msg


@pytest.mark.anyio
async def test_wrong_credentials_are_a_clear_storage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:  # checks credentials
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        b = FsspecBackend(f"s3://{BUCKET}/p")
        with pytest.raises(StorageError) as info:
            await b.connect()
    msg = str(info.value)
    assert f"s3://{BUCKET}/p" in msg and "access denied" in msg and "credentials" in msg


@pytest.mark.anyio
async def test_unreachable_endpoint_is_a_clear_storage_error(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nobody listens
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    b = FsspecBackend(
        f"s3://{BUCKET}/p", storage_options={"config_kwargs": {"retries": {"max_attempts": 1}}}
    )
    with pytest.raises(StorageError) as info:
        await b.connect()
    msg = str(info.value)
    assert f"s3://{BUCKET}/p" in msg and "cannot reach the endpoint" in msg and endpoint in msg


@pytest.mark.anyio
async def test_storage_options_reach_the_filesystem(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unused")
    b = FsspecBackend(
        f"s3://{BUCKET}/opts",
        storage_options={"endpoint_url": s3_env, "key": "testing", "secret": "testing"},
    )
    await b.connect()
    r = result()
    await b.put_results([r])
    assert same(await b.get_result(r.task_id), r)
    await b.close()


@pytest.mark.anyio
async def test_a_write_that_fails_raises(s3_env: str) -> None:
    import fsspec

    bucket = f"gone-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(bucket)
    b = FsspecBackend(f"s3://{bucket}/p")
    await b.connect()
    fs.rm(f"{bucket}/p", recursive=True)
    fs.rmdir(bucket)
    with pytest.raises(StorageError, match="does not exist"):
        await b.put_results([result()])
    with pytest.raises(StorageError, match="does not exist"):
        await b.append_events([ev("a", "enqueued", 1.0)])
    await b.close()


# --------------------------------------------------------------------------------------------
# Google Cloud Storage and Azure: the same errors, in the same plain words
# --------------------------------------------------------------------------------------------
def _sync_fs(kind: str, options: dict[str, Any] | None) -> Any:
    """A synchronous filesystem on the test server, for setting up and tearing down buckets."""
    if kind in ("gs", "gcs"):
        from gcsfs.core import GCSFileSystem  # the plain JSON-API class (see fsspec._gcs_class)

        return GCSFileSystem(token="anon", skip_instance_cache=True)
    import adlfs

    return adlfs.AzureBlobFileSystem(skip_instance_cache=True, **(options or {}))


def _drop_client_retries(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a refused connection fail at once: gcsfs retries it 6 times over about 30 s and
    azure-storage-blob 3 times over about a minute, and neither takes a retry setting through
    ``storage_options`` (s3fs does: see the S3 test above)."""
    if kind == "gs":
        import gcsfs.retry

        monkeypatch.setattr(gcsfs.retry, "is_retriable", lambda exc: False)
        return
    import adlfs.spec
    from azure.storage.blob.aio import BlobServiceClient

    def no_retries(connection_string: str) -> Any:
        return BlobServiceClient.from_connection_string(connection_string, retry_total=0)

    monkeypatch.setattr(
        adlfs.spec, "_create_aio_blob_service_client_from_connection_string", no_retries
    )


def test_without_node_or_npm_the_azure_tests_skip_saying_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = shutil.which
    missing: set[str] = {"node"}
    monkeypatch.setattr(shutil, "which", lambda n, *a, **k: None if n in missing else real(n))
    with pytest.raises(pytest.skip.Exception, match="needs node, which is not installed"):
        azurite_blob_exe()
    missing = {"npm", "azurite-blob"}
    monkeypatch.setattr(cloud, "AZURITE_DIR", tmp_path / "none")
    with pytest.raises(pytest.skip.Exception, match="needs npm"):
        azurite_blob_exe()


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["gs", "abfs", "az"])
async def test_missing_bucket_or_container_is_a_clear_storage_error(
    kind: str, request: pytest.FixtureRequest
) -> None:
    options = cloud_storage_options(kind, request)
    url = f"{kind}://no-such-bucket-here/prefix"
    b = FsspecBackend(url, storage_options=options)
    with pytest.raises(StorageError) as info:
        await b.connect()
    msg = str(info.value)
    word = "bucket" if kind == "gs" else "container"
    assert (
        msg == f"cannot connect to {url}: the {word} 'no-such-bucket-here' does not exist: "
        "create it first"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["gs", "abfs"])
async def test_unreachable_gcs_or_azure_endpoint_is_a_clear_storage_error(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gcsfs" if kind == "gs" else "adlfs")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nobody listens
    _drop_client_retries(kind, monkeypatch)
    options: dict[str, Any] | None = None
    if kind == "gs":
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    else:
        options = {"connection_string": azurite_connection_string(endpoint)}
    b = FsspecBackend(f"{kind}://{BUCKET}/p", storage_options=options)
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        await b.connect()
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert msg.startswith(f"cannot connect to {kind}://{BUCKET}/p: cannot reach the endpoint")
    assert endpoint in msg and AZURITE_KEY not in msg


@pytest.mark.anyio
async def test_wrong_azure_key_is_a_clear_storage_error_without_the_key(
    azurite_endpoint: str,
) -> None:
    wrong = base64.b64encode(b"not the key" * 6).decode()
    options = {"connection_string": azurite_connection_string(azurite_endpoint, key=wrong)}
    b = FsspecBackend(f"abfs://{BUCKET}/p", storage_options=options)
    with pytest.raises(StorageError) as info:
        await b.connect()
    msg = str(info.value)
    assert msg.startswith(f"cannot connect to abfs://{BUCKET}/p: access denied")
    assert "connection_string, account_key, sas_token" in msg and wrong not in msg


def test_secrets_are_scrubbed_from_messages() -> None:
    conn = azurite_connection_string("http://h:1")
    text = f"boom {conn} https://a.blob.core.windows.net/c/x?sv=2024&sig=abc%2Fdef&se=1"
    out = scrub(text, {"connection_string": conn, "token": "anon"})
    assert AZURITE_KEY not in out and "abc%2Fdef" not in out and "sig=***" in out
    assert scrub(f"AccountKey={AZURITE_KEY};x") == "AccountKey=***;x"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["gs", "abfs"])
async def test_a_write_to_a_deleted_bucket_raises(
    kind: str, request: pytest.FixtureRequest
) -> None:
    options = cloud_storage_options(kind, request)
    bucket = f"gone-{uuid.uuid4().hex[:8]}"
    fs = _sync_fs(kind, options)
    fs.mkdir(bucket)
    b = FsspecBackend(f"{kind}://{bucket}/p", storage_options=options)
    await b.connect()
    for path in fs.find(bucket):
        fs.rm_file(path)
    fs.rmdir(bucket)
    with pytest.raises(StorageError, match="does not exist: create it first"):
        await b.put_results([result()])
    with pytest.raises(StorageError, match="does not exist: create it first"):
        await b.append_events([ev("a", "enqueued", 1.0)])
    assert await b.get_result(new_id()) is None  # a read of a missing object is just missing
    await b.close()


@pytest.mark.anyio
async def test_gcs_endpoint_and_token_in_storage_options(
    gcs_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    b = FsspecBackend(
        f"gs://{BUCKET}/opts", storage_options={"endpoint_url": gcs_server, "token": "anon"}
    )
    await b.connect()
    r = result()
    await b.put_results([r])
    assert same(await b.get_result(r.task_id), r)
    assert b.files.endpoint() == gcs_server
    await b.close()


@pytest.mark.anyio
async def test_azure_connection_string_from_the_environment(
    azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    b = FsspecBackend(f"az://{BUCKET}/env")  # the az:// spelling too
    await b.connect()
    r = result(key="k/1")
    await b.put_results([r])
    assert same(await b.get_result(r.task_id), r)
    assert [x.task_id for x in await b.find_results(key_prefix="k/")] == [r.task_id]
    await b.close()


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["gs", "abfs"])
async def test_objects_are_one_put_each_and_browsable(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The layout a person sees in the bucket: no directory markers, no temp objects."""
    options = cloud_storage_options(kind, request)
    url = fsspec_url(kind, tmp_path)
    b = FsspecBackend(url, storage_options=options)
    await b.connect()
    rs = [result(key=f"exp/{i}", expires_at=time.time() + 3600) for i in range(3)]
    await b.put_results(rs)
    await b.append_events([ev(rs[0].task_id, "succeeded", time.time())])
    await b.close()
    fs = _sync_fs(kind, options)
    names = sorted(p[len(b.root) + 1 :] for p in fs.find(b.root))
    tops = {n.split("/")[0] for n in names}
    assert tops == {"omniq-layout.json", "events", "expiry", "keys", "results"}
    assert sum(n.startswith("results/") for n in names) == 3
    assert not [n for n in names if n.endswith("/") or "tmp" in n]


def flaky_point(x: int, marker: str) -> int:
    """A sweep point that fails for odd ``x`` while ``marker`` exists."""
    if os.path.exists(marker) and x % 2:
        raise ValueError(f"x={x} failed")
    return x * 10


_RESUME = textwrap.dedent(
    """
    import json, sys
    from omniq import OmniQ
    from tests.storage.test_fsspec import flaky_point

    url, options, marker = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    with OmniQ(tasks="memory://", results=url, events=url, worker="thread", concurrency=2,
               storage_options=options) as oq:
        sw = oq.sweep(flaky_point, {"x": range(6), "marker": [marker]}, name="resume")
        submitted = sw.submitted
        sw.wait(60)
        print(json.dumps({"submitted": submitted, "values": sw.values(default=None)}))
    """
)


@pytest.mark.parametrize("kind", ["s3", "gs", "abfs"])
def test_a_sweep_resumes_from_results_in_a_fresh_process(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from omniq import OmniQ

    options = cloud_storage_options(kind, request)
    url = fsspec_url(kind, tmp_path)
    marker = tmp_path / "fail-odd"
    marker.touch()
    grid = {"x": range(6), "marker": [str(marker)]}
    with OmniQ(
        tasks="memory://",
        results=url,
        events=url,
        worker="thread",
        concurrency=2,
        storage_options=options,
    ) as oq:
        first = oq.sweep(flaky_point, grid, name="resume").wait(60)
        assert first.counts() == {"succeeded": 3, "failed": 3}
    marker.unlink()
    # a new process, a new (empty) task queue: only the results under the URL are shared
    out = subprocess.run(
        [sys.executable, "-c", _RESUME, url, json.dumps(options or {}), str(marker)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"submitted": 3, "values": [0, 10, 20, 30, 40, 50]}


@pytest.mark.anyio
async def test_local_directory_that_cannot_be_written(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(StorageError, match="access denied"):
            await FsspecBackend(f"file://{ro}/x").connect()
    finally:
        ro.chmod(0o700)


def test_errors_in_plain_words() -> None:
    local = PermissionError(13, "Permission denied", "/data/x")
    assert explain(local, local=True).startswith("access denied: this user may not write there")
    assert "disk is full" in explain(OSError(28, "No space left on device"), local=True)
    remote = PermissionError("The AWS Access Key Id you provided does not exist")
    assert "check the credentials" in explain(remote)
    gone = FileNotFoundError("The specified bucket does not exist")
    assert explain(gone, bucket="b") == "the bucket 'b' does not exist: create it first"
    refused = ConnectionRefusedError("connect failed")
    assert explain(refused, endpoint="http://h:1").startswith(
        "cannot reach the endpoint http://h:1"
    )
    no_container = Exception("The specified container does not exist.\nRequestId:1\nTime:x")
    assert explain(no_container, bucket="c", protocol="abfs") == (
        "the container 'c' does not exist: create it first"
    )
    denied = OSError("Forbidden: https://storage.googleapis.com/b/o\nno access")
    assert "service account" in explain(denied, protocol="gs")
    # a missing object is not a missing bucket, whatever the bucket is called
    assert not bucket_missing(FileNotFoundError("http://h/download/storage/v1/b/my-bucket/o/x"))


@pytest.mark.parametrize(
    ("url", "package", "extra"),
    [
        ("gs://b/p", "gcsfs", "gcs"),
        ("gcs://b/p", "gcsfs", "gcs"),
        ("abfs://c/p", "adlfs", "azure"),
        ("az://c/p", "adlfs", "azure"),
    ],
)
def test_missing_filesystem_package_is_a_config_error(
    url: str, package: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from omniq.storage.urls import open_backends

    registry = importlib.import_module("fsspec.registry")  # the module, not fsspec.registry

    # as if the extra were not installed: the import fails, fsspec has not registered it
    monkeypatch.setitem(sys.modules, package, None)
    protocol = url.split("://")[0]
    monkeypatch.delitem(registry._registry, protocol, raising=False)
    with pytest.raises(ConfigError, match=f"needs the {package} package") as info:
        open_fsspec(url)
    assert f"pip install 'omniq[{extra}]'" in str(info.value)
    with pytest.raises(ConfigError, match=package) as info:
        open_backends("memory://", url)
    assert f"pip install 'omniq[{extra}]'" in str(info.value)


@pytest.mark.parametrize("url", ["nope://x", "s3://", "memory://", "/plain/path"])
def test_unusable_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        open_fsspec(url)


def test_only_file_urls_hold_a_task_queue(tmp_path: Path) -> None:
    assert isinstance(open_fsspec(f"file://{tmp_path}/q"), FileTaskQueueBackend)
    assert isinstance(open_fsspec(f"file://{tmp_path}/q"), TaskQueue)
    for url in ("memory://bucket/p", "s3://bucket/p"):
        b = open_fsspec(url)
        assert isinstance(b, FsspecBackend) and not isinstance(b, TaskQueue)
        assert not b.can_hold_tasks
    assert no_task_queue_message("s3://b/p") == (
        "s3:// cannot hold a task queue (no atomic claim); use sqlite://, postgresql://, "
        "redis://, nats:// or file://"
    )
    with pytest.raises(ConfigError, match="cannot hold a task queue"):
        FileTaskQueueBackend("s3://bucket/p")


@pytest.mark.anyio
async def test_same_object_serves_all_roles(tmp_path: Path) -> None:
    b = open_fsspec(f"file://{tmp_path}/q")
    assert isinstance(b, FileTaskQueueBackend)
    for _ in range(3):
        await b.connect()
    for _ in range(2):
        await b.close()
    await b.put_results([result()])  # still open: connect/close are counted
    await b.close()
    with pytest.raises(StorageError, match="not connected"):
        await b.get_result(new_id())


# --------------------------------------------------------------------------------------------
# The file:// task queue
# --------------------------------------------------------------------------------------------
@pytest.fixture
async def tq(tmp_path: Path) -> AsyncIterator[FileTaskQueueBackend]:
    b = open_fsspec(f"file://{tmp_path}/tq")
    assert isinstance(b, FileTaskQueueBackend)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


def task(tid: str | None = None, **kw: Any) -> Task:
    kw.setdefault("created_at", time.time())
    return Task(id=tid or new_id(), payload=b"payload", **kw)


@pytest.mark.anyio
async def test_priority_then_fifo(tq: FileTaskQueueBackend) -> None:
    ts = [
        task("b", priority=0),
        task("a", priority=0),
        task("hi", priority=5),
        task("low", priority=-1),
        task("c", priority=0),
        task("hi2", priority=5),
    ]
    await tq.enqueue(ts[:3])
    await tq.enqueue(ts[3:])
    now = time.time()
    order: list[str] = []
    for _ in range(len(ts)):
        got = await tq.claim("w", queues=None, limit=1, lease=30, now=now)
        order.extend(t.id for t in got)
    assert order == ["hi", "hi2", "b", "a", "c", "low"]
    assert await tq.claim("w", queues=None, limit=5, lease=30, now=now) == []


@pytest.mark.anyio
async def test_claim_marks_running_with_lease(tq: FileTaskQueueBackend) -> None:
    t = task(queue="q1", metadata={"k": 1}, key="kk")
    await tq.enqueue([t])
    (c,) = await tq.claim("w1", queues=["q1"], limit=5, lease=30, now=1000.0)
    assert (c.status, c.worker, c.lease_until, c.deliveries) == (
        TaskStatus.RUNNING,
        "w1",
        1030.0,
        1,
    )
    assert (c.payload, c.metadata, c.key, c.queue) == (b"payload", {"k": 1}, "kk", "q1")
    got = await tq.get_task(t.id)
    assert got is not None and got.status is TaskStatus.RUNNING and got.lease_until == 1030.0
    assert await tq.statuses([t.id, "nope"]) == {t.id: TaskStatus.RUNNING}


@pytest.mark.anyio
async def test_queues_filter_and_limit(tq: FileTaskQueueBackend) -> None:
    await tq.enqueue([task(queue="a") for _ in range(3)] + [task(queue="b") for _ in range(2)])
    now = time.time()
    assert len(await tq.claim("w", queues=["b"], limit=10, lease=30, now=now)) == 2
    assert len(await tq.claim("w", queues=["a"], limit=2, lease=30, now=now)) == 2
    assert await tq.claim("w", queues=["c"], limit=2, lease=30, now=now) == []
    assert await tq.counts() == {"a": {"queued": 1, "running": 2}, "b": {"running": 2}}


@pytest.mark.anyio
async def test_lease_extend_and_reap(tq: FileTaskQueueBackend) -> None:
    a, b = task(max_deliveries=2), task(max_deliveries=1)
    await tq.enqueue([a, b])
    await tq.claim("w", queues=None, limit=2, lease=10, now=1000.0)
    early = await tq.reap(now=1005.0)
    assert early.requeued == [] and early.dead == []
    await tq.extend("w", [a.id], lease_until=1020.0)
    await tq.extend("someone-else", [b.id], lease_until=5000.0)  # not theirs: no effect
    reaped = await tq.reap(now=1011.0)
    assert [t.id for t in reaped.requeued] == [] and [t.id for t in reaped.dead] == [b.id]
    assert reaped.dead[0].status is TaskStatus.FAILED
    assert await tq.statuses([a.id, b.id]) == {a.id: TaskStatus.RUNNING, b.id: TaskStatus.FAILED}
    reaped = await tq.reap(now=1021.0)
    assert [t.id for t in reaped.requeued] == [a.id]
    assert reaped.requeued[0].status is TaskStatus.QUEUED
    (again,) = await tq.claim("w2", queues=None, limit=5, lease=10, now=1022.0)
    assert (again.id, again.deliveries, again.worker) == (a.id, 2, "w2")
    # the first worker lost its lease: its finish changes nothing
    await tq.finish("w", [(a.id, TaskStatus.SUCCEEDED)], now=1023.0)
    assert await tq.statuses([a.id]) == {a.id: TaskStatus.RUNNING}
    reaped = await tq.reap(now=1040.0)
    assert [t.id for t in reaped.dead] == [a.id]  # delivered max_deliveries times


@pytest.mark.anyio
async def test_finish_retry_release(tq: FileTaskQueueBackend) -> None:
    a, b, c = task(), task(), task()
    await tq.enqueue([a, b, c])
    now = time.time()
    await tq.claim("w", queues=None, limit=3, lease=30, now=now)
    fin = await tq.finish("w", [(a.id, TaskStatus.SUCCEEDED)], now=now)
    assert fin.released == [] and fin.cancelled == []
    await tq.retry("w", b.id, eta=now + 100, attempts=1)
    await tq.release("w", [c.id])
    st = await tq.statuses([a.id, b.id, c.id])
    assert st == {a.id: TaskStatus.SUCCEEDED, b.id: TaskStatus.PENDING, c.id: TaskStatus.QUEUED}
    rc = await tq.get_task(c.id)
    assert rc is not None and rc.deliveries == 0 and rc.worker is None
    got = await tq.claim("w", queues=None, limit=5, lease=30, now=now + 1)
    assert [t.id for t in got] == [c.id]  # b waits for its eta
    got = await tq.claim("w", queues=None, limit=5, lease=30, now=now + 101)
    assert [(t.id, t.attempts, t.deliveries) for t in got] == [(b.id, 1, 2)]
    await tq.retry("w", b.id, eta=0.0, attempts=2)  # eta long past: QUEUED at once
    assert await tq.statuses([b.id]) == {b.id: TaskStatus.QUEUED}
    got = await tq.claim("w", queues=None, limit=5, lease=30, now=now)
    assert [(t.id, t.attempts) for t in got] == [(b.id, 2)]
    done = await tq.get_task(a.id)
    assert done is not None and done.status is TaskStatus.SUCCEEDED and done.worker == "w"


@pytest.mark.anyio
async def test_cancel(tq: FileTaskQueueBackend) -> None:
    q, p, r, d = task(), task(status=TaskStatus.PENDING, eta=time.time() + 100), task(), task()
    await tq.enqueue([r])
    await tq.claim("w", queues=None, limit=1, lease=30, now=time.time())
    await tq.enqueue([q, p, d])
    assert await tq.statuses([p.id]) == {p.id: TaskStatus.PENDING}
    out = await tq.cancel([q.id, p.id, r.id, "unknown"], now=time.time())
    assert out == {q.id: TaskStatus.QUEUED, p.id: TaskStatus.PENDING, r.id: TaskStatus.RUNNING}
    assert await tq.statuses([q.id, p.id, r.id]) == {
        q.id: TaskStatus.CANCELLED,
        p.id: TaskStatus.CANCELLED,
        r.id: TaskStatus.RUNNING,
    }
    assert await tq.cancel_requests([r.id, q.id]) == [r.id]
    rt = await tq.get_task(r.id)
    assert rt is not None and rt.cancel_requested
    await tq.finish("w", [(r.id, TaskStatus.CANCELLED)], now=time.time())
    assert await tq.cancel_requests([r.id]) == []
    assert await tq.cancel([q.id], now=time.time()) == {q.id: TaskStatus.CANCELLED}
    got = await tq.claim("w", queues=None, limit=5, lease=30, now=time.time())
    assert [t.id for t in got] == [d.id]


@pytest.mark.anyio
async def test_expire(tq: FileTaskQueueBackend) -> None:
    a = task(expires_at=1000.0)
    b = task(expires_at=5000.0)
    c = task(status=TaskStatus.PENDING, expires_at=900.0, eta=950.0)
    await tq.enqueue([a, b, c])
    assert [t.id for t in await tq.claim("w", queues=None, limit=5, lease=1, now=1000.0)] == [b.id]
    expired = await tq.expire(now=1000.0)
    assert {t.id for t in expired} == {a.id, c.id}
    assert all(t.status is TaskStatus.EXPIRED for t in expired)
    assert await tq.expire(now=1000.0) == []


@pytest.mark.anyio
async def test_dependencies(tq: FileTaskQueueBackend) -> None:
    a, b = task("a"), task("b")
    c = task("c", depends_on=("a", "b"))
    d = task("d", depends_on=("c",))
    await tq.enqueue([a, b, c, d])
    assert await tq.statuses(["c", "d"]) == {"c": TaskStatus.PENDING, "d": TaskStatus.PENDING}
    now = time.time()
    got = await tq.claim("w", queues=None, limit=10, lease=30, now=now)
    assert {t.id for t in got} == {"a", "b"}
    fin = await tq.finish("w", [("a", TaskStatus.SUCCEEDED)], now=now)
    assert fin.released == []
    fin = await tq.finish("w", [("b", TaskStatus.SUCCEEDED)], now=now)
    assert [(t.id, t.status) for t in fin.released] == [("c", TaskStatus.QUEUED)]
    (ct,) = await tq.claim("w", queues=None, limit=10, lease=30, now=now)
    assert ct.id == "c"
    fin = await tq.finish("w", [("c", TaskStatus.FAILED)], now=now)
    assert [(t.id, cause) for t, cause in fin.cancelled] == [("d", "c")]
    assert await tq.statuses(["d"]) == {"d": TaskStatus.CANCELLED}


@pytest.mark.anyio
async def test_failed_dependency_cancels_transitively(tq: FileTaskQueueBackend) -> None:
    await tq.enqueue([task("x"), task("y", depends_on=("x",)), task("z", depends_on=("y",))])
    await tq.claim("w", queues=None, limit=10, lease=30, now=time.time())
    fin = await tq.cancel(["x"], now=time.time())  # running: only a request
    assert fin == {"x": TaskStatus.RUNNING}
    fin2 = await tq.finish("w", [("x", TaskStatus.CANCELLED)], now=time.time())
    assert [(t.id, c) for t, c in fin2.cancelled] == [("y", "x"), ("z", "y")]
    assert all(t.status is TaskStatus.CANCELLED for t, _ in fin2.cancelled)


@pytest.mark.anyio
async def test_dependency_rules_at_enqueue(tq: FileTaskQueueBackend) -> None:
    with pytest.raises(ConfigError, match="unknown task"):
        await tq.enqueue([task(depends_on=("ghost",))])
    await tq.enqueue([task("ok"), task("bad")])
    await tq.claim("w", queues=None, limit=10, lease=30, now=time.time())
    await tq.finish(
        "w", [("ok", TaskStatus.SUCCEEDED), ("bad", TaskStatus.FAILED)], now=time.time()
    )
    await tq.enqueue([task("after-ok", depends_on=("ok",)), task("after-bad", depends_on=("bad",))])
    assert await tq.statuses(["after-ok", "after-bad"]) == {
        "after-ok": TaskStatus.QUEUED,
        "after-bad": TaskStatus.CANCELLED,
    }


@pytest.mark.anyio
async def test_eta_and_pending_released_on_eta(tq: FileTaskQueueBackend) -> None:
    later = task(status=TaskStatus.PENDING, eta=2000.0)
    dep = task("dep")
    waits = task("waits", status=TaskStatus.PENDING, depends_on=("dep",), eta=3000.0)
    await tq.enqueue([later, dep, waits])
    got = await tq.claim("w", queues=None, limit=10, lease=30, now=1000.0)
    assert [t.id for t in got] == ["dep"]
    fin = await tq.finish("w", [("dep", TaskStatus.SUCCEEDED)], now=1001.0)
    assert [(t.id, t.status) for t in fin.released] == [("waits", TaskStatus.PENDING)]
    got = await tq.claim("w", queues=None, limit=10, lease=30, now=2500.0)
    assert [t.id for t in got] == [later.id]
    got = await tq.claim("w", queues=None, limit=10, lease=30, now=3000.0)
    assert [t.id for t in got] == ["waits"]


@pytest.mark.anyio
async def test_counts_oldest_purge(tq: FileTaskQueueBackend) -> None:
    a, b, c = task(queue="x", created_at=10.0), task(queue="x", created_at=20.0), task(queue="y")
    await tq.enqueue([a, b, c])
    assert (await tq.oldest_queued())["x"] == 10.0
    await tq.claim("w", queues=["x"], limit=1, lease=30, now=time.time())
    await tq.finish("w", [(a.id, TaskStatus.SUCCEEDED)], now=100.0)
    fresh = open_fsspec(tq.url)  # another process's view: nothing cached
    assert isinstance(fresh, FileTaskQueueBackend)
    await fresh.connect()
    assert await fresh.counts() == {"x": {"succeeded": 1, "queued": 1}, "y": {"queued": 1}}
    await fresh.close()
    assert await tq.purge(before=50.0) == 0
    assert await tq.purge(before=101.0) == 1
    assert await tq.get_task(a.id) is None
    assert (await tq.oldest_queued())["x"] == 20.0


@pytest.mark.anyio
async def test_schedules(tq: FileTaskQueueBackend) -> None:
    s = Schedule(id="s1", name="every", payload=b"p", interval=60.0, next_run=100.0, created_at=1.0)
    await tq.add_schedule(s)
    await tq.add_schedule(msgspec.structs.replace(s, name="renamed"))
    (got,) = await tq.get_schedules()
    assert got.name == "renamed"
    assert (
        await tq.fire_schedule("s1", expected_next_run=99.0, next_run=160.0, now=100.0, task=task())
        is False
    )
    t = task()
    assert await tq.fire_schedule("s1", expected_next_run=100.0, next_run=160.0, now=100.0, task=t)
    assert (
        await tq.fire_schedule(
            "s1", expected_next_run=100.0, next_run=160.0, now=100.0, task=task()
        )
        is False
    )
    (got,) = await tq.get_schedules()
    assert (got.next_run, got.last_run, got.last_task_id) == (160.0, 100.0, t.id)
    assert await tq.statuses([t.id]) == {t.id: TaskStatus.QUEUED}
    assert await tq.set_schedule_paused("s1", True, None)
    assert (
        await tq.fire_schedule(
            "s1", expected_next_run=160.0, next_run=220.0, now=160.0, task=task()
        )
        is False
    )
    assert await tq.set_schedule_paused("s1", False, 300.0)
    (got,) = await tq.get_schedules()
    assert (got.paused, got.next_run) == (False, 300.0)
    assert await tq.set_schedule_paused("nope", True, None) is False
    assert await tq.delete_schedule("s1")
    assert await tq.delete_schedule("s1") is False
    assert await tq.get_schedules() == []


@pytest.mark.anyio
async def test_schedule_fires_once_under_contention(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/sched"
    backends = [open_fsspec(url) for _ in range(8)]
    for b in backends:
        await b.connect()
    first = backends[0]
    assert isinstance(first, FileTaskQueueBackend)
    await first.add_schedule(Schedule(id="s", name="s", payload=b"p", interval=1.0, next_run=5.0))
    wins: list[str] = []

    async def fire(b: Any) -> None:
        t = task()
        if await b.fire_schedule("s", expected_next_run=5.0, next_run=6.0, now=5.0, task=t):
            wins.append(t.id)

    async with anyio.create_task_group() as tg:
        for b in backends:
            tg.start_soon(fire, b)
    assert len(wins) == 1
    got = await first.claim("w", queues=None, limit=10, lease=5, now=time.time())
    assert [t.id for t in got] == wins
    for b in backends:
        await b.close()


@pytest.mark.anyio
async def test_heartbeats(tq: FileTaskQueueBackend) -> None:
    info = WorkerInfo(
        id="w/1",
        kind="process",
        host="h",
        pid=1,
        slots=2,
        queues=None,
        started_at=1.0,
        last_heartbeat=2.0,
    )
    await tq.heartbeat(info)
    await tq.heartbeat(msgspec.structs.replace(info, last_heartbeat=3.0))
    assert [(w.id, w.last_heartbeat) for w in await tq.workers()] == [("w/1", 3.0)]
    await tq.remove_worker("w/1")
    assert await tq.workers() == []


@pytest.mark.anyio
async def test_an_unreadable_worker_record_is_skipped_with_a_warning(
    tq: FileTaskQueueBackend, caplog: pytest.LogCaptureFixture
) -> None:
    def info(wid: str) -> WorkerInfo:
        return WorkerInfo(id=wid, kind="thread", host="h", pid=1, slots=1, queues=None,
                          started_at=1.0, last_heartbeat=2.0)  # fmt: skip

    await tq.heartbeat(info("w/2"))
    await tq.heartbeat(info("w/1"))
    with open(os.path.join(tq._tasks.workers_dir, "torn.msgpack"), "wb") as f:
        f.write(b"\x93not a worker")
    assert [w.id for w in await tq.workers()] == ["w/1", "w/2"]
    assert "ignoring unreadable worker record torn.msgpack" in caplog.text


_RACER = textwrap.dedent(
    """
    import random, sys, time, anyio
    from omniq.models import TaskStatus
    from omniq.storage.fsspec import open_fsspec

    url, worker, go = sys.argv[1], sys.argv[2], float(sys.argv[3])

    async def main():
        b = open_fsspec(url)
        await b.connect()
        while time.time() < go:
            time.sleep(0.001)
        got, empty = [], 0
        while empty < 3:
            ts = await b.claim(worker, queues=None, limit=random.randint(1, 4), lease=60,
                               now=time.time())
            got.extend(t.id for t in ts)
            empty = 0 if ts else empty + 1
        await b.finish(worker, [(t, TaskStatus.SUCCEEDED) for t in got], now=time.time())
        await b.close()
        print("\\n".join(got))

    anyio.run(main)
    """
)


@pytest.mark.anyio
async def test_four_processes_claim_each_task_exactly_once(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/race"
    b = open_fsspec(url)
    assert isinstance(b, FileTaskQueueBackend)
    await b.connect()
    ids = new_ids(600)
    await b.enqueue([Task(id=i, payload=b"p", priority=int(i[-1], 16) % 3) for i in ids])
    go = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, url, f"racer-{n}", str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    claimed = [i for out in outs for i in out]
    assert len(claimed) == len(set(claimed)) == len(ids)
    assert set(claimed) == set(ids)
    assert sum(1 for out in outs if out) >= 2  # they really raced
    assert await b.counts() == {"default": {"succeeded": len(ids)}}
    await b.close()


@pytest.mark.anyio
async def test_results_and_events_on_the_task_queue_url(tq: FileTaskQueueBackend) -> None:
    r = result()
    await tq.put_results([r])
    await tq.append_events([ev(r.task_id, "succeeded", 5.0)])
    assert same(await tq.get_result(r.task_id), r)
    assert len(await tq.query_events(task_id=r.task_id)) == 1


_DIES = textwrap.dedent(
    """
    import os, sys, time, anyio
    from omniq.storage.fsspec import open_fsspec

    async def main():
        b = open_fsspec(sys.argv[1])
        await b.connect()
        got = await b.claim("doomed", queues=None, limit=10, lease=1.0, now=time.time())
        print(" ".join(t.id for t in got), flush=True)
        os._exit(9)  # dies holding the leases

    anyio.run(main)
    """
)


@pytest.mark.anyio
async def test_a_killed_worker_process_loses_its_lease(tq: FileTaskQueueBackend) -> None:
    ts = [task() for _ in range(3)]
    await tq.enqueue(ts)
    proc = subprocess.run(
        [sys.executable, "-c", _DIES, tq.url], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 9
    assert sorted(proc.stdout.split()) == sorted(t.id for t in ts)
    assert await tq.counts() == {"default": {"running": 3}}
    assert (await tq.reap(now=time.time())).requeued == []  # leases still run
    reaped = await tq.reap(now=time.time() + 2)
    assert sorted(t.id for t in reaped.requeued) == sorted(t.id for t in ts)
    again = await tq.claim("heir", queues=None, limit=10, lease=30, now=time.time())
    assert [(t.id, t.deliveries) for t in again] == [(t.id, 2) for t in ts]


@pytest.mark.anyio
async def test_enqueue_by_another_process_wakes_a_waiter(tq: FileTaskQueueBackend) -> None:
    other = open_fsspec(tq.url)  # another object: no shared in-process wake-up
    assert isinstance(other, FileTaskQueueBackend)
    await other.connect()
    assert await tq.claim("w", queues=["q"], limit=1, lease=30, now=time.time()) == []

    async def later() -> None:
        await anyio.sleep(0.2)
        await other.enqueue([task(queue="q")])

    start = time.monotonic()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(later)
            await tq.wait_for_tasks(30.0)
    assert time.monotonic() - start < 2.0
    assert len(await tq.claim("w", queues=["q"], limit=1, lease=30, now=time.time())) == 1
    await tq.wait_for_tasks(0.05)  # nothing claimable: waits out its timeout
    await other.close()


@pytest.mark.anyio
async def test_a_crash_between_winning_a_slot_and_enqueueing_is_repaired(
    tq: FileTaskQueueBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await tq.add_schedule(Schedule(id="s", name="s", payload=b"p", interval=1.0, next_run=5.0))
    t = task()
    tasks_dir = tq._tasks

    def crash(*args: Any) -> bool:
        raise OSError("power cut")

    monkeypatch.setattr(tasks_dir, "_commit_staged", crash)
    with pytest.raises(StorageError, match="power cut"):
        await tq.fire_schedule("s", expected_next_run=5.0, next_run=6.0, now=5.0, task=t)
    monkeypatch.undo()
    (s,) = await tq.get_schedules()
    assert s.last_task_id == t.id  # the slot is taken...
    assert await tq.get_task(t.id) is None  # ...but the task is not queued yet
    await tq.reap(now=time.time())
    assert await tq.get_task(t.id) is None  # a firing may still be under way: left alone
    staged = Path(tasks_dir.staged)
    for f in staged.iterdir():
        os.utime(f, (time.time() - 3600, time.time() - 3600))
    await tq.reap(now=time.time())
    assert await tq.statuses([t.id]) == {t.id: TaskStatus.QUEUED}
    assert list(staged.iterdir()) == []


@pytest.mark.anyio
async def test_s3_reads_are_one_request_per_result(s3_env: str, tmp_path: Path) -> None:
    b = FsspecBackend(fsspec_url("s3", tmp_path))
    await b.connect()
    try:
        rs = [result(key=f"k/{i}") for i in range(5)]
        await b.put_results(rs)
        fs = cast(Any, b.files).fs  # the s3fs filesystem behind the backend
        calls: list[str] = []
        real = fs._call_s3

        async def spy(method: str, *a: Any, **kw: Any) -> Any:
            calls.append(method)
            return await real(method, *a, **kw)

        fs._call_s3 = spy
        assert await b.get_result(rs[0].task_id) is not None
        assert calls == ["get_object"]
        calls.clear()
        assert len(await b.get_results([r.task_id for r in rs])) == 5
        assert calls == ["get_object"] * 5
        calls.clear()
        assert len(await b.find_results(key_prefix="k/")) == 5
        assert calls.count("get_object") == 5 and "head_object" not in calls
    finally:
        await b.close()


@pytest.mark.anyio
async def test_gcs_reads_are_one_request_per_result(gcs_env: str, tmp_path: Path) -> None:
    b = FsspecBackend(fsspec_url("gs", tmp_path))
    await b.connect()
    try:
        rs = [result(key=f"k/{i}") for i in range(5)]
        await b.put_results(rs)
        fs = cast(Any, b.files).fs  # the gcsfs filesystem behind the backend
        calls: list[tuple[str, str]] = []
        real = fs._call

        async def spy(method: str, path: str, *a: Any, **kw: Any) -> Any:
            calls.append((method, path))
            return await real(method, path, *a, **kw)

        fs._call = spy
        assert await b.get_result(rs[0].task_id) is not None
        assert [m for m, _ in calls] == ["GET"]
        calls.clear()
        assert len(await b.get_results([r.task_id for r in rs])) == 5
        assert [m for m, _ in calls] == ["GET"] * 5
        calls.clear()
        assert len(await b.find_results(key_prefix="k/")) == 5
        assert len(calls) == 6  # one listing of keys/k/, then one GET per result
    finally:
        await b.close()


# --- idempotency keys on the file:// queue -----------------------------------------------------


@pytest.mark.anyio
async def test_a_key_marker_whose_task_never_came_is_taken_over_after_the_grace(
    tq: FileTaskQueueBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A marker is written before its task's file: one whose task is not there is a write in
    progress (waited for), until ``KEY_WRITE_GRACE`` says its writer died in between."""
    from omniq.storage import enqueue

    monkeypatch.setattr(enqueue, "KEY_WRITE_GRACE", 0.3)  # (key_marker_verdict reads it)
    kdir = tq._tasks.key_marks.dir("k")
    assert tq._tasks.key_marks.cas(kdir, 0, "ghost-task", time.time())  # a writer that died here
    t = Task(id=new_id(), payload=b"x", key="k")
    t0 = time.monotonic()
    assert await tq.enqueue([t]) == {}  # waited for the ghost, then took the key
    assert 0.2 < time.monotonic() - t0 < 5
    again = Task(id=new_id(), payload=b"x", key="k")
    assert await tq.enqueue([again]) == {again.id: t.id}


@pytest.mark.anyio
async def test_a_key_marker_of_a_task_being_written_is_waited_for(
    tq: FileTaskQueueBackend,
) -> None:
    kdir = tq._tasks.key_marks.dir("k")
    first = Task(id=new_id(), payload=b"x", key="k")
    assert tq._tasks.key_marks.cas(kdir, 0, first.id, time.time())  # its writer is on its way

    async def writer() -> None:
        await anyio.sleep(0.3)
        assert await tq.enqueue([first]) == {}  # its own marker: takes it as its own

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        second = Task(id=new_id(), payload=b"x", key="k")
        assert await tq.enqueue([second]) == {second.id: first.id}
