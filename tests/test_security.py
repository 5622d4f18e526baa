"""Issue 21: each proof of concept of the security review, turned into a test that fails safe."""

from __future__ import annotations

import pytest

from omniq.errors import ConfigError
from omniq.serialization import dumps, get_secret_keys, set_secret_keys

KEY = "k" * 40


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OMNIQ_SECRET_KEY", raising=False)
    monkeypatch.delenv("OMNIQ_SECRET_KEYS", raising=False)
    set_secret_keys(None)
    yield
    set_secret_keys(None)


# ------------------------------------------------------------------------------ 1. keys


@pytest.mark.parametrize("value", ["", " ", "\t\n"])
def test_blank_key_is_a_config_error_not_signing_off(monkeypatch, value: str) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", value)
    with pytest.raises(ConfigError, match=r"OMNIQ_SECRET_KEY is empty or blank.*at least 32 bytes"):
        dumps(1)
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        get_secret_keys()


def test_short_key_is_a_config_error_naming_the_rule(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "s3cret")
    with pytest.raises(
        ConfigError, match=r"OMNIQ_SECRET_KEY is 6 bytes long.*at least 32 bytes"
    ) as ei:
        dumps(1)
    assert "s3cret" not in str(ei.value)  # the key itself is never shown


def test_short_older_key_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    monkeypatch.setenv("OMNIQ_SECRET_KEYS", "old")
    with pytest.raises(ConfigError, match="OMNIQ_SECRET_KEYS entry #1 is 3 bytes long"):
        dumps(1)


def test_short_key_passed_in_code_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        set_secret_keys("short")
    with pytest.raises(ConfigError, match="empty or blank"):
        set_secret_keys(["  "])


def test_long_key_signs(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    assert dumps(1)[:1] == b"S"


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and "signing" in r.getMessage()
    ]


def test_shared_storage_without_a_key_warns_once_saying_what_an_attacker_could_do(
    tmp_path, caplog
) -> None:
    from omniq import OmniQ

    caplog.set_level("WARNING", logger="omniq")
    url = f"file://{tmp_path}/queue"
    with OmniQ(tasks=url, concurrency=0):
        pass
    (msg,) = _warnings(caplog)
    assert "OMNIQ_SECRET_KEY is not set" in msg and url in msg
    assert "run code" in msg and ".value" in msg and "require_signing" in msg


def test_local_storage_without_a_key_does_not_warn(tmp_path, caplog) -> None:
    from omniq import OmniQ

    caplog.set_level("WARNING", logger="omniq")
    with OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", concurrency=0):
        pass
    with OmniQ(tasks="memory://", concurrency=0):
        pass
    assert _warnings(caplog) == []


def test_require_signing_refuses_shared_storage_without_a_key(tmp_path, monkeypatch) -> None:
    from omniq import OmniQ

    url = f"file://{tmp_path}/queue"
    oq = OmniQ(tasks=url, concurrency=0, require_signing=True)
    with pytest.raises(ConfigError, match="require_signing is set but OMNIQ_SECRET_KEY is not"):
        oq.open()
    oq.close()
    monkeypatch.setenv("OMNIQ_REQUIRE_SIGNING", "yes")  # the config key, from the environment
    oq = OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", results=url, concurrency=0)
    assert oq.config.require_signing is True
    with pytest.raises(ConfigError, match="refusing to open shared storage"):
        oq.open()
    oq.close()
    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)  # with a key it opens, signed
    with OmniQ(tasks=url, concurrency=0) as oq:
        task_id = oq.enqueue(len, args=([1, 2],))
        assert oq.core.config.require_signing and task_id


def test_require_signing_config_value_is_checked(monkeypatch) -> None:
    from omniq import OmniQ

    monkeypatch.setenv("OMNIQ_REQUIRE_SIGNING", "maybe")
    with pytest.raises(ConfigError, match="OMNIQ_REQUIRE_SIGNING='maybe' is not valid"):
        OmniQ(tasks="memory://", concurrency=0)


# ------------------------------------------------------------------------------ 4. secrets


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user@db.example/q?password=PW0rdXyzzy&sslmode=require",
        "postgresql://user@db.example/q?sslmode=require&sslpassword=PW0rdXyzzy",
        "redis://db.example:6379/0?Password=PW0rdXyzzy",
        "nats://db.example:4222?token=PW0rdXyzzy",
        "s3://bucket/results?secret=PW0rdXyzzy",
        "postgresql://user:PW0rdXyzzy@db.example/q",
    ],
)
def test_masked_hides_query_passwords_tokens_and_secrets(url: str) -> None:
    from omniq.storage.base import masked

    shown = masked(url)
    assert "PW0rdXyzzy" not in shown and "***" in shown
    assert shown.split("://")[0] == url.split("://")[0]  # still says which storage


def test_connection_error_does_not_show_a_query_password() -> None:
    from omniq import OmniQ
    from omniq.errors import StorageError

    url = "postgresql://nobody@127.0.0.1:1/q?password=PW0rdXyzzy&connect_timeout=1"
    oq = OmniQ(tasks=url, concurrency=0)
    assert "PW0rdXyzzy" not in repr(oq)
    with pytest.raises((StorageError, ConfigError)) as ei:
        oq.open()
    oq.close()
    assert "PW0rdXyzzy" not in str(ei.value)


def test_config_repr_masks_urls_and_secret_storage_options() -> None:
    from omniq import OmniQ

    oq = OmniQ(
        tasks="postgresql://user:PW0rdXyzzy@db.example/q",
        results="redis://db.example/0?password=PW0rdXyzzy",
        storage_options={"secret": "PW0rdXyzzy", "anon": False},
        concurrency=0,
    )
    for text in (repr(oq.config), str(oq.config), repr(oq), f"{oq.config}"):
        assert "PW0rdXyzzy" not in text
    assert "postgresql://user:***@db.example/q" in repr(oq.config)
    assert "'anon': False" in repr(oq.config)
    assert oq.config.task_queue_type == "postgresql://user:PW0rdXyzzy@db.example/q"  # still usable


def test_cli_commands_take_urls_from_config_file_or_environment(tmp_path, monkeypatch, capsys):
    """No password needs to be on a command line (where ``ps`` shows it to every user)."""
    from omniq import OmniQ
    from omniq.cli import build_parser, main

    db = f"sqlite:///{tmp_path}/q.db"
    with OmniQ(tasks=db, concurrency=0) as oq:
        oq.enqueue(len, args=([1],))
    cfg = tmp_path / "omniq.yaml"
    cfg.write_text(f"task_queue_type: {db}\n")
    assert main(["status", "--config", str(cfg), "--json"]) == 0
    assert '"queued": 1' in capsys.readouterr().out.replace(" ", "").replace('":', '": ')
    monkeypatch.setenv("OMNIQ_TASK_QUEUE_TYPE", db)
    assert main(["status", "--json"]) == 0
    assert '"queued": 1' in capsys.readouterr().out.replace(" ", "").replace('":', '": ')
    parser = build_parser()
    for command in ("worker", "status"):
        args = parser.parse_args([command, "--config", str(cfg)])
        assert args.tasks is None and args.config == str(cfg)


# ------------------------------------------------------------------------------ 6. permissions


def _mode(path) -> int:
    import os
    import stat

    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask():
    import os

    old = os.umask(0)  # the worst case: nothing taken away by the umask
    yield
    os.umask(old)


def test_sqlite_files_are_private_whatever_the_umask(tmp_path, open_umask) -> None:
    import os

    from omniq import OmniQ

    db = tmp_path / "q.db"
    with OmniQ(tasks=f"sqlite:///{db}", concurrency=0) as oq:
        oq.enqueue(len, args=([1],))
        made = [p for p in (db, f"{db}-wal", f"{db}-shm") if os.path.exists(p)]
        assert str(db) in map(str, made) and len(made) >= 2
        for p in made:
            assert _mode(p) == 0o600, p


def test_sqlite_does_not_create_a_database_through_a_dangling_symlink(tmp_path) -> None:
    import os

    from omniq import OmniQ
    from omniq.errors import StorageError

    target = tmp_path / "elsewhere.db"
    os.symlink(target, tmp_path / "q.db")
    oq = OmniQ(tasks=f"sqlite:///{tmp_path / 'q.db'}", concurrency=0)
    with pytest.raises(StorageError, match="symlink to nothing"):
        oq.open()
    oq.close()
    assert not target.exists()


def test_file_queue_files_and_folders_are_private_whatever_the_umask(
    tmp_path, open_umask, monkeypatch
) -> None:
    import os

    from omniq import OmniQ

    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    root = tmp_path / "shared" / "queue"
    with OmniQ(tasks=f"file://{root}", worker="thread", concurrency=1) as oq:
        assert oq.get_result(oq.enqueue(len, args=([1, 2],)), wait=True, timeout=30).value == 2
    assert _mode(root) == 0o700
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    assert files
    for f in files:
        assert _mode(f) == 0o600, f


def test_storage_root_of_another_user_or_world_writable_warns(tmp_path, caplog) -> None:
    import os

    from omniq import OmniQ

    caplog.set_level("WARNING", logger="omniq")
    root = tmp_path / "open"
    root.mkdir()
    os.chmod(root, 0o777)
    with OmniQ(tasks=f"file://{root}", concurrency=0):
        pass
    assert any("writable by every user" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ 3. bad records

DEEP = b"\x91" * 200_000 + b"\xc0"  # 200,000 nested one-element arrays: RecursionError to decode
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _deep_record(blob: bytes) -> bytes:
    """A task record whose metadata is nested too deep to decode (the review's proof of concept)."""
    import msgspec

    from omniq.models import Task

    t = msgspec.msgpack.decode(blob, type=Task)
    t.metadata = {"deep": "@@DEEP@@"}
    out = msgspec.msgpack.encode(t)
    assert out.count(b"\xa8@@DEEP@@") == 1
    return out.replace(b"\xa8@@DEEP@@", DEEP)


BAD_RECORDS = {"deep": _deep_record, "garbage": lambda blob: b"\xc1 not msgpack at all"}


def _run_with_one_bad(url: str, overwrite) -> None:
    """Six tasks, the fourth's stored record overwritten: it fails alone with a TaskResult
    saying why; the other five run; get_result(wait=True) returns for every one."""
    from omniq import OmniQ, TaskStatus

    with OmniQ(tasks=url, concurrency=0) as producer:
        ids = [producer.enqueue(abs, args=(-i,)) for i in range(6)]
    overwrite(ids[3])
    with OmniQ(tasks=url, worker="thread", concurrency=6) as oq:
        results = {t: oq.get_result(t, wait=True, timeout=30) for t in ids}
        bad = results[ids[3]]
        assert bad.status is TaskStatus.FAILED, bad
        assert bad.error is not None and "cannot be read" in bad.error.message, bad.error
        assert {t: r.value for t, r in results.items() if t != ids[3]} == {
            t: i for i, t in enumerate(ids) if i != 3
        }
        assert oq.submit(abs, -5).result(30) == 5  # the queue keeps going


@pytest.mark.parametrize("how", list(BAD_RECORDS))
def test_bad_record_fails_alone_sqlite(tmp_path, how: str) -> None:
    import sqlite3

    db = tmp_path / "q.db"

    def overwrite(tid: str) -> None:
        conn = sqlite3.connect(db, isolation_level=None, timeout=30)
        try:
            (blob,) = conn.execute("SELECT task FROM omniq_tasks WHERE id = ?", (tid,)).fetchone()
            conn.execute(
                "UPDATE omniq_tasks SET task = ? WHERE id = ?", (BAD_RECORDS[how](blob), tid)
            )
        finally:
            conn.close()

    _run_with_one_bad(f"sqlite:///{db}", overwrite)


@pytest.fixture
def pg_schema_url():
    import asyncio
    import uuid

    asyncpg = pytest.importorskip("asyncpg")
    schema = f"omniq_sec_{uuid.uuid4().hex[:12]}"

    async def run(sql: str, *args):
        conn = await asyncpg.connect(PG_URL, timeout=5)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    try:
        asyncio.run(run("SELECT 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {exc}")
    yield f"{PG_URL}?schema={schema}", schema, lambda sql, *a: asyncio.run(run(sql, *a))
    asyncio.run(run(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.mark.parametrize("how", list(BAD_RECORDS))
def test_bad_record_fails_alone_postgres(pg_schema_url, how: str) -> None:
    url, schema, run = pg_schema_url

    def overwrite(tid: str) -> None:
        blob = run(f'SELECT task FROM "{schema}".omniq_tasks WHERE id = $1', tid)
        run(
            f'UPDATE "{schema}".omniq_tasks SET task = $1 WHERE id = $2',
            BAD_RECORDS[how](blob),
            tid,
        )

    _run_with_one_bad(url, overwrite)


@pytest.fixture
def redis_prefix_url():
    import uuid

    redis = pytest.importorskip("redis")
    r = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=5)
    try:
        r.ping()
    except Exception as exc:
        pytest.skip(f"Redis at 127.0.0.1:6379 is unreachable: {exc}")
    prefix = f"omniq-sec-{uuid.uuid4().hex[:12]}"
    yield f"redis://127.0.0.1:6379/0?prefix={prefix}", prefix, r
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.mark.parametrize("how", list(BAD_RECORDS))
def test_bad_record_fails_alone_redis(redis_prefix_url, how: str) -> None:
    url, prefix, r = redis_prefix_url

    def overwrite(tid: str) -> None:
        key = f"{prefix}:t:{tid}"
        r.hset(key, "b", BAD_RECORDS[how](r.hget(key, "b")))

    _run_with_one_bad(url, overwrite)


def _deep_file_record(data: bytes) -> bytes:
    import msgspec

    from omniq.storage.fsspec import _Record

    rec = msgspec.msgpack.decode(data, type=_Record)
    deep = _deep_record(msgspec.msgpack.encode(rec.task))
    return msgspec.msgpack.encode({"seq": rec.seq, "task": "@@T@@"}).replace(b"\xa5@@T@@", deep)


@pytest.mark.parametrize("how", list(BAD_RECORDS))
def test_bad_record_fails_alone_file_queue(tmp_path, monkeypatch, how: str) -> None:
    import os

    from omniq.storage.fsspec import encode_name

    root = tmp_path / "queue"

    def overwrite(tid: str) -> None:
        (path,) = [
            os.path.join(d, f)
            for d, _, fs in os.walk(root / "tasks" / "queued")
            for f in fs
            if encode_name(tid) in f
        ]
        with open(path, "rb") as fh:
            data = fh.read()
        bad = _deep_file_record(data) if how == "deep" else BAD_RECORDS[how](data)
        with open(path, "wb") as fh:
            fh.write(bad)

    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)  # (shared storage: signed)
    _run_with_one_bad(f"file://{root}", overwrite)


def _deep_nats_record(data: bytes) -> bytes:
    import msgspec

    from omniq.storage.nats import _decode_rec

    rec = _decode_rec(data)
    rec.task.metadata = {"deep": "@@DEEP@@"}
    out = msgspec.msgpack.encode(rec)
    assert out.count(b"\xa8@@DEEP@@") == 1
    return out.replace(b"\xa8@@DEEP@@", DEEP)


@pytest.mark.parametrize("how", list(BAD_RECORDS))
def test_bad_record_fails_alone_nats(monkeypatch, how: str) -> None:
    import asyncio
    import socket
    import uuid

    pytest.importorskip("nats")
    try:
        socket.create_connection(("127.0.0.1", 4222), 1.0).close()
    except OSError as exc:
        pytest.skip(f"no NATS server at 127.0.0.1:4222: {exc}")
    url = f"nats://127.0.0.1:4222?namespace=sec{uuid.uuid4().hex[:12]}"

    async def overwrite_async(tid: str) -> None:
        from omniq.storage.urls import open_backends

        q, _, _ = open_backends(url)
        await q.connect()
        try:
            subject = q._task_subject(tid)  # type: ignore[attr-defined]
            m = await q._get_last(f"KV_{q.tasks_bucket}", subject)  # type: ignore[attr-defined]
            bad = _deep_nats_record(m.data) if how == "deep" else BAD_RECORDS[how](m.data)
            assert await q._cas(subject, bad, m.seq)  # type: ignore[attr-defined]
        finally:
            await q.close()

    from tests.storage.backends import drop_nats

    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)  # (shared storage: signed)
    try:
        _run_with_one_bad(url, lambda tid: asyncio.run(overwrite_async(tid)))
    finally:
        asyncio.run(drop_nats(url))


@pytest.mark.parametrize("payload", [b"\xc1 garbage", b"M" + DEEP, b"C" + DEEP, b"D" + DEEP])
def test_bad_record_fails_alone_memory(payload: bytes) -> None:
    """The memory backend keeps Task objects (nothing to decode): what can be garbage is the
    payload, which the worker opens; that task fails alone, with a TaskResult."""
    import asyncio
    import uuid

    from omniq import AsyncOmniQ, TaskStatus
    from omniq.models import Task
    from omniq.serialization import dumps_call

    url = f"memory://sec-{uuid.uuid4().hex[:8]}"
    good = [
        Task(id=f"good{i}", payload=dumps_call(abs, (-i,), {}), created_at=1.0) for i in range(5)
    ]
    bad = Task(id="bad", payload=payload, created_at=1.0)

    async def main() -> None:
        async with AsyncOmniQ(tasks=url, worker="thread", concurrency=6) as oq:
            await oq.session.queue.enqueue([*good[:3], bad, *good[3:]])
            oq.intake.wake()
            r = await oq.get_result("bad", wait=True, timeout=30)
            assert r.status is TaskStatus.FAILED and r.error is not None, r
            values = {t.id: (await oq.get_result(t.id, wait=True, timeout=30)).value for t in good}
            assert values == {f"good{i}": i for i in range(5)}

    asyncio.run(main())


# ------------------------------------------------------------------------------ least privilege


def _child_secrets() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k.startswith("OMNIQ_SECRET")}


def test_process_children_do_not_get_the_key_and_results_still_verify(tmp_path, monkeypatch):
    from omniq import OmniQ

    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    monkeypatch.setenv("OMNIQ_SECRET_KEYS", "o" * 40)
    with OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", worker="process", concurrency=1) as oq:
        assert oq.submit(_child_secrets).result(60) == {}  # task code cannot read the key
        assert oq.submit(abs, -3).result(60) == 3  # its result is signed and verifies here
        # a chunked map: the chunk loads its function, a signed payload nested in the task
        hs = oq.map(abs, [-1, -2, -3, -4], chunksize=2)
        assert [h.result(60) for h in hs] == [1, 2, 3, 4]
        hs = oq.map(lambda v: v * 10, [1, 2, 3], chunksize=2)  # a function sent by value
        assert [h.result(60) for h in hs] == [10, 20, 30]


def test_process_child_refuses_what_its_parent_could_not_verify(tmp_path, monkeypatch):
    """A task written by someone without the key (the review's forged task) never reaches a
    child as something it would open: it fails with SignatureError and is not retried."""
    from omniq import OmniQ, TaskStatus

    url = f"sqlite:///{tmp_path}/q.db"
    with OmniQ(tasks=url, concurrency=0) as forger:  # no key: an unsigned payload
        forged = forger.enqueue(abs, args=(-7,), retries=2)
    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    with OmniQ(tasks=url, worker="process", concurrency=1) as oq:
        r = oq.get_result(forged, wait=True, timeout=60)
        assert r.status is TaskStatus.FAILED and r.error.type == "SignatureError", r
        assert "not signed" in r.error.message and r.attempts == 1


def test_signed_result_does_not_run_as_a_task(tmp_path, monkeypatch):
    """The review's proof of concept: a task's signed result ``(operator.add, (40, 2), {})``
    planted as a task payload ran and returned 42. Results are signed for their role now."""
    import operator

    from omniq import OmniQ, TaskStatus
    from omniq.errors import SignatureError
    from omniq.serialization import dumps, loads, loads_call

    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    value = (operator.add, (40, 2), {})
    assert loads(dumps(value)) == value
    with pytest.raises(SignatureError):
        loads_call(dumps(value))
    for worker in ("thread", "process"):
        db = tmp_path / f"{worker}.db"
        url = f"sqlite:///{db}"
        with OmniQ(tasks=url, worker=worker, concurrency=1) as oq:
            made = oq.enqueue(_triple, args=(operator.add, (40, 2), {}))
            assert oq.get_result(made, wait=True, timeout=60).value == value
        with OmniQ(tasks=url, concurrency=0) as oq:
            planted = oq.enqueue(abs, args=(-1,))
        _plant_result_as_task(db, made, planted)
        with OmniQ(tasks=url, worker=worker, concurrency=1) as oq:
            r = oq.get_result(planted, wait=True, timeout=60)
            assert r.status is TaskStatus.FAILED and r.error.type == "SignatureError", (worker, r)


def _plant_result_as_task(db, result_of: str, task_id: str) -> None:
    """Someone with write access copies a task's signed result payload into another task."""
    import sqlite3

    import msgspec

    from omniq.models import Task, TaskResult

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        (raw,) = conn.execute(
            "SELECT result FROM omniq_results WHERE task_id = ?", (result_of,)
        ).fetchone()
        payload = msgspec.msgpack.decode(raw, type=TaskResult).payload
        assert payload[:1] == b"S"
        (blob,) = conn.execute("SELECT task FROM omniq_tasks WHERE id = ?", (task_id,)).fetchone()
        t = msgspec.msgpack.decode(blob, type=Task)
        t.payload = payload
        conn.execute(
            "UPDATE omniq_tasks SET task = ? WHERE id = ?", (msgspec.msgpack.encode(t), task_id)
        )
    finally:
        conn.close()


def _triple(fn, args, kwargs):
    return fn, args, kwargs


def test_roles_survive_key_rotation(monkeypatch) -> None:
    from omniq.errors import SignatureError
    from omniq.serialization import dumps, dumps_call, loads, loads_call

    monkeypatch.setenv("OMNIQ_SECRET_KEY", "old" * 11)
    value, call = dumps([1, 2]), dumps_call(abs, (-1,))
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "new" * 11)
    monkeypatch.setenv("OMNIQ_SECRET_KEYS", "old" * 11)
    assert loads(value) == [1, 2] and loads_call(call) == (abs, (-1,), {})
    with pytest.raises(SignatureError):
        loads_call(value)  # still a value, whichever key signed it
    monkeypatch.delenv("OMNIQ_SECRET_KEYS")
    with pytest.raises(SignatureError):
        loads(value)


def test_a_child_key_signs_results_but_no_task(monkeypatch) -> None:
    """What task code in a process worker's child holds (the result-role key) cannot make a
    payload any worker runs."""
    from omniq.errors import SignatureError
    from omniq.serialization import _signing, dumps, dumps_call, loads, loads_call

    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    child_key = _signing.derive(KEY.encode())
    forged = _signing.sign(dumps_call(abs, (-1,))[33:], child_key, b"S")
    with pytest.raises(SignatureError):
        loads_call(forged)
    assert _signing.for_child(forged)[:1] == _signing.TAG_REFUSED
    result = _signing.sign(dumps(7)[33:], child_key, b"S")
    assert loads(result) == 7


# ------------------------------------------------------------------------------ 2. records sealed


def _sqlite_edit(db, table: str, id_col: str, blob_col: str, type_, record_id: str, edit,
                 **columns) -> None:
    """Someone with write access to the database rewrites one record (decoded, edited, encoded
    again, so only what ``edit`` changes differs; ``columns``: index columns to match)."""
    import sqlite3

    import msgspec

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        (raw,) = conn.execute(f"SELECT {blob_col} FROM {table} WHERE {id_col} = ?", (record_id,)).fetchone()
        rec = msgspec.msgpack.decode(raw, type=type_)
        edit(rec)
        conn.execute(f"UPDATE {table} SET {blob_col} = ? WHERE {id_col} = ?",
                     (msgspec.msgpack.encode(rec), record_id))
        for col, value in columns.items():
            conn.execute(f"UPDATE {table} SET {col} = ? WHERE {id_col} = ?", (value, record_id))
    finally:
        conn.close()


def _sqlite_read(db, table: str, id_col: str, blob_col: str, type_, record_id: str):
    import sqlite3

    import msgspec

    conn = sqlite3.connect(db)
    try:
        (raw,) = conn.execute(f"SELECT {blob_col} FROM {table} WHERE {id_col} = ?", (record_id,)).fetchone()
    finally:
        conn.close()
    return msgspec.msgpack.decode(raw, type=type_)


def _ran(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _mark(path: str, word: str) -> str:
    with open(path, "a") as f:
        f.write(word + "\n")
    return word


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_a_signed_task_payload_moved_to_another_task_does_not_run(tmp_path, monkeypatch, worker):
    """The review's replay: a signed task payload re-enqueued under a new id ran again. The
    seal binds it to its id: the copy fails with SignatureError, never opened."""
    from omniq import OmniQ, TaskStatus
    from omniq.models import Task

    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    db, log = tmp_path / "q.db", tmp_path / "ran.txt"
    url = f"sqlite:///{db}"
    with OmniQ(tasks=url, concurrency=0) as oq:
        original = oq.enqueue(_mark, args=(str(log), "original"))
        other = oq.enqueue(_mark, args=(str(log), "other"))
    src = _sqlite_read(db, "omniq_tasks", "id", "task", Task, original)

    def replay(t):
        t.payload, t.seal = src.payload, src.seal

    _sqlite_edit(db, "omniq_tasks", "id", "task", Task, other, replay)
    with OmniQ(tasks=url, worker=worker, concurrency=1) as oq:
        assert oq.get_result(original, wait=True, timeout=60).value == "original"
        r = oq.get_result(other, wait=True, timeout=60)
    assert r.status is TaskStatus.FAILED and r.error.type == "SignatureError", r
    assert "seal does not match" in r.error.message and r.attempts == 1
    assert _ran(log) == ["original"]  # once: the copy never ran


@pytest.mark.parametrize(
    "field, value",
    [("timeout", 3600.0), ("retries", 50), ("memory_limit", 1 << 40), ("key", "someone-else"),
     ("on_success", dumps(None))],
)
def test_a_task_field_changed_in_storage_is_refused(tmp_path, monkeypatch, field, value):
    from omniq import OmniQ, TaskStatus
    from omniq.models import Task

    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    db, log = tmp_path / "q.db", tmp_path / "ran.txt"
    url = f"sqlite:///{db}"
    with OmniQ(tasks=url, concurrency=0) as oq:
        tid = oq.enqueue(_mark, args=(str(log), "ran"), timeout=5)
    _sqlite_edit(db, "omniq_tasks", "id", "task", Task, tid, lambda t: setattr(t, field, value))
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        r = oq.get_result(tid, wait=True, timeout=60)
    assert r.status is TaskStatus.FAILED and r.error.type == "SignatureError", r
    assert _ran(log) == []


def test_an_untouched_task_runs_after_a_round_trip_through_storage(tmp_path, monkeypatch):
    """The seal is made from what storage gives back (floats stay floats, tuples tuples)."""
    from omniq import OmniQ

    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    url = f"sqlite:///{tmp_path}/q.db"
    with OmniQ(tasks=url, concurrency=0) as oq:
        a = oq.enqueue(abs, args=(-2,), timeout=5, retries=1, retry_delay=0, memory_limit="1GB",
                       key="k1", result_ttl=3600, on_success=abs)
        b = oq.enqueue(abs, args=(-3,), depends_on=[a])
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        assert oq.get_result(b, wait=True, timeout=60).value == 3
        assert oq.get_result(a, wait=True, timeout=60).value == 2


def test_results_swapped_between_tasks_or_sweep_keys_are_refused(tmp_path, monkeypatch):
    """The review: results could be swapped between tasks, and a sweep could reuse planted
    results. A result's seal binds its value to its task id and key."""
    from omniq import OmniQ
    from omniq.errors import SignatureError
    from omniq.models import TaskResult

    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    db = tmp_path / "q.db"
    url = f"sqlite:///{db}"
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        a = oq.enqueue(abs, args=(-1,), key="point-a")
        b = oq.enqueue(abs, args=(-2,), key="point-b")
        assert [oq.get_result(t, wait=True, timeout=60).value for t in (a, b)] == [1, 2]
    ra = _sqlite_read(db, "omniq_results", "task_id", "result", TaskResult, a)

    def swap(r):
        r.payload, r.seal = ra.payload, ra.seal

    _sqlite_edit(db, "omniq_results", "task_id", "result", TaskResult, b, swap)
    _sqlite_edit(db, "omniq_results", "task_id", "result", TaskResult, a,
                 lambda r: setattr(r, "key", "point-c"), key="point-c")  # planted as another point
    with OmniQ(tasks=url, concurrency=0) as oq:
        for tid in (a, b):
            r = oq.get_result(tid)
            with pytest.raises(SignatureError, match="seal does not match"):
                _ = r.value
        (found,) = oq.find_results("point-c")
        with pytest.raises(SignatureError):
            _ = found.value


def test_a_schedule_given_another_call_does_not_fire_it(tmp_path, monkeypatch, caplog):
    """A schedule's call is sealed with its id and options: a signed task payload written
    into a schedule record is refused when the slot comes, and nothing of it runs."""
    import time

    from omniq import OmniQ
    from omniq.models import Schedule, Task

    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    db, log = tmp_path / "q.db", tmp_path / "ran.txt"
    url = f"sqlite:///{db}"
    with OmniQ(tasks=url, concurrency=0) as oq:
        planted = oq.enqueue(_mark, args=(str(log), "planted"))
        sid = oq.schedule(_mark, interval=0.2, args=(str(log), "scheduled"), name="tick")
        oq.pause_schedule(sid)
    src = _sqlite_read(db, "omniq_tasks", "id", "task", Task, planted)
    _sqlite_edit(db, "omniq_schedules", "id", "schedule", Schedule, sid,
                 lambda s: setattr(s, "payload", src.payload))
    with OmniQ(tasks=url, concurrency=0) as oq:  # takes the planted task out of the way
        oq.cancel(planted)
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        oq.resume_schedule(sid)
        time.sleep(1.5)
    assert _ran(log) == []
    assert any("SignatureError" in r.getMessage() or (r.exc_info and "seal" in str(r.exc_info[1]))
               for r in caplog.records)


def test_seals_survive_key_rotation(tmp_path, monkeypatch):
    from omniq import OmniQ

    url = f"sqlite:///{tmp_path}/q.db"
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "old" * 11)
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        done = oq.enqueue(abs, args=(-5,))
        assert oq.get_result(done, wait=True, timeout=60).value == 5
    with OmniQ(tasks=url, concurrency=0) as oq:
        queued = oq.enqueue(abs, args=(-6,))
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "new" * 11)
    monkeypatch.setenv("OMNIQ_SECRET_KEYS", "old" * 11)
    with OmniQ(tasks=url, worker="process", concurrency=1) as oq:
        assert oq.get_result(queued, wait=True, timeout=60).value == 6
        assert oq.get_result(done).value == 5


# ------------------------------------------------------------------------------ 5. planted module


def test_module_planted_in_the_working_directory_does_not_run_in_children(tmp_path, monkeypatch):
    """The review's proof of concept: a ``dill.py`` where the worker started ran in every child
    (``-m`` puts the working directory first on ``sys.path``); children start with ``-P``."""
    from omniq import OmniQ

    marker = tmp_path / "planted-ran"
    (tmp_path / "dill.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    with OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", worker="process", concurrency=1) as oq:
        assert oq.submit(abs, -2).result(60) == 2
    assert not marker.exists()
