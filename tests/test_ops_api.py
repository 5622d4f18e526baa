"""The operators' API through ``OmniQ`` on every task-queue backend: ``oq.tasks()``, ``oq.task()``,
``oq.retry()``, ``oq.purge()``, with real workers (threads) and real storage (a SQLite file, a
file:// folder, the shared PostgreSQL, Redis and NATS servers in a namespace of the test's own).
The storage half of the contract is tests/storage/test_admin_contract.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omniq import OmniQ, TaskDetail, TaskNotFound, TaskStatus, TaskSummary
from omniq.errors import ConfigError, TaskError
from omniq.ids import new_id
from omniq.serialization import BLOB_THRESHOLD, set_secret_keys

from .storage.backends import SERVERS

# How pickle names the builtin open: io.open up to 3.11, _io.open from 3.12.
OPEN = f"<object {open.__module__}.{open.__qualname__}>"

NAME = __name__  # the module part of the functions' names


def double(x: int) -> int:
    return 2 * x


def boom(message: str) -> None:
    raise ValueError(message)


def flaky(marker: str) -> str:
    """Fails the first time (leaving ``marker``), succeeds after."""
    p = Path(marker)
    if not p.exists():
        p.write_text("ran")
        raise RuntimeError("first run fails")
    return "second run"


def size(data: bytes) -> int:
    return len(data)


class Planted:
    """What someone who can write to the storage might plant: unpickling it opens (creates)
    a file. Nothing that only reads a task may run it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def make_planted(marker: str) -> Planted:
    return Planted(marker)


@pytest.fixture(params=["sqlite", "memory", "file", "postgresql", "redis", "nats"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    kind = request.param
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/q.db"
    elif kind == "memory":
        yield f"memory://ops-{new_id()}"
    elif kind == "file":
        yield f"file://{tmp_path}/fq"
    else:
        problem, fresh = SERVERS[kind]
        why = problem()
        if why is not None:
            pytest.skip(why)
        with fresh() as u:
            yield u


def wait_final(oq: OmniQ, ids: list[str], timeout: float = 30.0) -> None:
    """Until each task's result is stored and its record final (a worker stores the result
    first, then ends the record)."""
    deadline = time.monotonic() + timeout
    for i in ids:
        oq.get_result(i, wait=True, timeout=timeout)
        while not oq.status(i).is_final:
            assert time.monotonic() < deadline, f"task {i} stayed {oq.status(i)}"
            time.sleep(0.01)


def test_tasks_newest_first_filtered_and_paged(url: str) -> None:
    with OmniQ(tasks=url, worker="thread", concurrency=2) as oq:
        ok = [oq.enqueue(double, args=(i,)) for i in range(4)]
        bad = oq.enqueue(boom, args=("nope",), queue="other")
        wait_final(oq, [*ok, bad])
        page = oq.tasks()
        assert all(isinstance(s, TaskSummary) for s in page)
        assert [s.id for s in page] == [bad, *reversed(ok)]
        failed = page[0]
        assert (failed.queue, failed.name, failed.status) == ("other", f"{NAME}.boom", TaskStatus.FAILED)
        assert failed.attempts == 1 and failed.created > 0
        assert failed.started is not None and failed.finished is not None
        assert failed.finished >= failed.started and failed.duration is not None
        assert [s.id for s in oq.tasks(status="failed")] == [bad]
        assert [s.id for s in oq.tasks(status=TaskStatus.FAILED)] == [bad]
        assert [s.id for s in oq.tasks(status=["succeeded", "failed"], limit=2)] == [bad, ok[3]]
        assert [s.id for s in oq.tasks(queue="default", limit=2)] == [ok[3], ok[2]]
        assert [s.id for s in oq.tasks(queue="default", before=ok[2])] == [ok[1], ok[0]]
        assert [s.id for s in oq.tasks(name=f"{NAME}.double", before=ok[1])] == [ok[0]]
        assert oq.tasks(status="running") == []
        with pytest.raises(ConfigError, match="status='finished' is not a task status; valid: pending"):
            oq.tasks(status="finished")
        with pytest.raises(ConfigError, match="limit must be an int from 0"):
            oq.tasks(limit=-1)


def test_task_detail_reads_arguments_errors_and_events(url: str) -> None:
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        good = oq.enqueue(double, args=(21,), metadata={"who": "me"}, priority=3)
        bad = oq.enqueue(boom, kwargs={"message": "it broke"})
        wait_final(oq, [good, bad])
        d = oq.task(good)
        assert isinstance(d, TaskDetail)
        assert (d.args, d.kwargs, d.value, d.status, d.priority) == ("(21,)", "{}", "42", TaskStatus.SUCCEEDED, 3)
        assert d.metadata == {"who": "me"} and d.error_type is None and d.result is not None
        e = oq.task(bad)
        assert (e.args, e.kwargs) == ("()", "{'message': 'it broke'}")
        assert (e.error_type, e.error_message) == ("ValueError", "it broke")
        assert e.traceback is not None and "ValueError: it broke" in e.traceback
        types = [str(ev.type) for ev in e.events]
        assert types[0] == "enqueued" and "started" in types and types[-1] == "failed"
        with pytest.raises(TaskNotFound, match="no task 0000feedbeef in") as caught:
            oq.task("0000feedbeef")
        assert isinstance(caught.value, KeyError) and caught.value.task_id == "0000feedbeef"


def test_retry_runs_a_failed_task_again_under_its_id(url: str, tmp_path: Path) -> None:
    marker = str(tmp_path / "flaky-ran")
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        tid = oq.enqueue(flaky, args=(marker,))
        first = oq.get_result(tid, wait=True, timeout=30)
        assert first is not None and first.status is TaskStatus.FAILED and first.attempts == 1
        done = oq.enqueue(double, args=(1,))
        wait_final(oq, [done])
        assert oq.retry(done) is False  # succeeded: nothing to do
        with pytest.raises(TaskNotFound):
            oq.retry("0000feedbeef")
    with OmniQ(tasks=url, concurrency=0) as admin:  # no worker: see the state between
        assert admin.retry(tid) is True
        assert admin.get_result(tid) is None  # the old result is gone: no waiter takes it
        assert admin.task(tid).status is TaskStatus.QUEUED
        assert admin.retry(tid) is False  # queued already
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        again = oq.get_result(tid, wait=True, timeout=30)
        assert again is not None and again.status is TaskStatus.SUCCEEDED
        assert again.value == "second run" and again.attempts == 2  # attempts go on
        assert oq.task(tid).status is TaskStatus.SUCCEEDED
        assert [str(e.type) for e in oq.task(tid).events].count("started") == 2


def test_retry_of_a_sealed_task_with_a_signing_key(tmp_path: Path) -> None:
    set_secret_keys("s" * 32)
    try:
        with OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", worker="thread", concurrency=1) as oq:
            tid = oq.enqueue(flaky, args=(str(tmp_path / "m"),), ttl=60)
            with pytest.raises(TaskError):
                oq.handle(tid).result(timeout=30)
            assert oq.retry(tid) is True
            assert oq.handle(tid).result(timeout=30) == "second run"  # its seal still holds
    finally:
        set_secret_keys(None)


def test_purge_removes_final_tasks_results_events_and_blobs(url: str) -> None:
    big = b"x" * (BLOB_THRESHOLD * 2)
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        oq.core.janitor.blob_grace = 0.0  # (blobs are kept an hour however unreferenced)
        ok = oq.enqueue(double, args=(1,))
        bad = oq.enqueue(boom, args=("x",))
        blobbed = oq.enqueue(size, args=(big,))
        wait_final(oq, [ok, bad, blobbed])
        waiting = oq.enqueue(double, args=(2,), delay=3600)
        time.sleep(0.05)
        with pytest.raises(ConfigError, match="older_than='7x' is not valid"):
            oq.purge(older_than="7x")
        with pytest.raises(ConfigError, match="cannot be purged: only final tasks"):
            oq.purge(older_than=0, statuses=["running"])
        assert oq.purge(older_than="1h") == {"tasks": 0, "results": 0, "events": 0, "blobs": 0}
        only_failed = oq.purge(older_than=0, statuses="failed")
        assert only_failed["tasks"] == 1 and only_failed["results"] == 1 and only_failed["events"] >= 3
        with pytest.raises(TaskNotFound):
            oq.task(bad)
        rest = oq.purge(older_than=0)
        assert rest["tasks"] == 2 and rest["results"] == 2 and rest["events"] >= 6
        # the big argument: a final task holds no blob, so the first purge's sweep took it
        assert only_failed["blobs"] + rest["blobs"] >= 1
        assert [s.id for s in oq.tasks()] == [waiting]
        assert oq.events(ok) == []


def test_reading_a_planted_payload_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "planted-ran"
    with OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", concurrency=0) as oq:
        tid = oq.enqueue(double, args=(Planted(str(marker)),), kwargs={"n": [1, {"a": b"b"}]})
        assert not marker.exists()  # (pickling it ran nothing either)
        d = oq.task(tid)
        assert d.args == f"({OPEN},)" and d.kwargs == "{'n': [1, {'a': b'b'}]}"
        assert [s.id for s in oq.tasks()] == [tid]
    with OmniQ(tasks=f"sqlite:///{tmp_path}/other.db", worker="thread", concurrency=1) as oq:
        made = oq.enqueue(make_planted, args=(str(tmp_path / "result-ran"),))
        oq.get_result(made, wait=True, timeout=30)
        d = oq.task(made)
        assert d.status is TaskStatus.SUCCEEDED and d.value == OPEN
        assert not (tmp_path / "result-ran").exists()
    assert not marker.exists()


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail_with(data: bytes) -> None:
    raise ValueError(f"{len(data)} bytes")


def test_a_running_task_shows_when_it_started(tmp_path: Path) -> None:
    with OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", worker="thread", concurrency=1) as oq:
        tid = oq.enqueue(nap, args=(3.0,))
        deadline = time.monotonic() + 30
        while oq.status(tid) is not TaskStatus.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # (the started event is written in a batch)
        (row,) = oq.tasks()
        assert row.status is TaskStatus.RUNNING and row.started is not None and row.finished is None
        assert oq.task(tid).started == row.started
        oq.cancel(tid)


def test_retry_refuses_a_task_whose_large_values_were_swept(tmp_path: Path) -> None:
    with OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", worker="thread", concurrency=1) as oq:
        tid = oq.enqueue(fail_with, args=(b"z" * (BLOB_THRESHOLD * 2),))
        oq.get_result(tid, wait=True, timeout=30)
        oq.core.janitor.blob_grace = 0.0
        assert oq.sweep_blobs() >= 1  # a final task holds no blob: the sweep takes it
        with pytest.raises(ConfigError, match=f"task {tid} cannot run again: 1 of the large values"):
            oq.retry(tid)
        assert oq.status(tid) is TaskStatus.FAILED  # left as it was


def test_retry_leaves_a_key_to_the_task_that_succeeded_with_it(tmp_path: Path) -> None:
    marker = str(tmp_path / "m")
    with OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", worker="thread", concurrency=1) as oq:
        first = oq.enqueue(flaky, args=(marker,), key="point-1")
        oq.get_result(first, wait=True, timeout=30)
        second = oq.enqueue(flaky, args=(marker,), key="point-1")  # failed: a new task takes the key
        assert second != first and oq.get_result(second, wait=True, timeout=30).value == "second run"
        with pytest.raises(ConfigError, match=f"task {second} with the same key 'point-1' succeeded"):
            oq.retry(first)
        assert oq.status(first) is TaskStatus.FAILED
