"""Chunked map: items per task, each item with its own handle, value and error."""

from __future__ import annotations

import asyncio

import pytest

from omniq import AsyncOmniQ, OmniQ, TaskError, TaskStatus
from omniq._chunks import chunk_length, item_result, run_chunk, split_item_id
from omniq.errors import ConfigError, TaskCancelled
from omniq.models import TaskResult
from omniq.serialization import dumps, dumps_call

from . import helpers

OFFSET = 100  # a notebook-style global the lambda below closes over


def odd_fails(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def generator_or_value(x):
    return (i for i in range(3)) if x == 0 else x


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path}/q.db"


def chunk_ids(handles):
    return list(dict.fromkeys(h.id.rpartition(".")[0] for h in handles))


@pytest.mark.parametrize("worker", ["process", "thread", "async"])
def test_items_keep_order_and_fail_alone(db, worker):
    with OmniQ(tasks=db, worker=worker, concurrency=2) as oq:
        hs = oq.map(odd_fails, range(10), chunksize=4)
        assert len(hs) == 10 and len(chunk_ids(hs)) == 3  # 4 + 4 + 2 items
        assert [h.id for h in hs[:5]] == [f"{chunk_ids(hs)[0]}.{i}" for i in range(4)] + [f"{chunk_ids(hs)[1]}.0"]
        assert [hs[i].result(30) for i in range(0, 10, 2)] == [0, 2, 4, 6, 8]
        with pytest.raises(TaskError) as ei:
            hs[3].result(30)
        assert ei.value.type == "ValueError" and ei.value.message == "odd 3"
        assert "in odd_fails" in ei.value.traceback
        assert hs[3].status() is TaskStatus.FAILED and hs[2].status() is TaskStatus.SUCCEEDED
        # the same answers through the instance, by item id
        assert oq.status(hs[5].id) is TaskStatus.FAILED
        assert oq.get_result(hs[4].id).value == 4
        assert oq.get_result(hs[9].id).error.message == "odd 9"
        assert oq.handle(hs[6].id).result(10) == 6


def test_auto_makes_four_chunks_per_slot_and_stores_one_task_each(db):
    with OmniQ(tasks=db, worker="process", concurrency=2) as oq:
        hs = oq.map(helpers.square, range(2000), chunksize="auto")
        assert [h.result(60) for h in hs] == [i * i for i in range(2000)]
        chunks = chunk_ids(hs)
        assert len(chunks) == 8  # ceil(2000 / (4 * 2)) = 250 items each
        enqueued = [e for e in oq.events(types=["enqueued"])]
        assert sorted(e.task_id for e in enqueued) == sorted(chunks)
        started = oq.events(task_id=chunks[0], types=["started", "succeeded"])
        assert [e.type for e in started] == ["started", "succeeded"]


def test_a_closure_over_a_notebook_global_travels_by_value(db):
    with OmniQ(tasks=db, worker="process", concurrency=2) as oq:
        hs = oq.map(lambda v: v + OFFSET, range(7), chunksize=3)
        assert [h.result(30) for h in hs] == [v + OFFSET for v in range(7)]


def test_coroutine_functions_run_per_item_on_the_async_worker():
    async def main():
        async with AsyncOmniQ(tasks="memory://", worker="async", concurrency=2) as oq:
            hs = await oq.map(helpers.async_double, range(9), chunksize=4)
            return [await h for h in hs]

    assert asyncio.run(main()) == [2 * i for i in range(9)]


def test_retries_retry_the_raising_item_in_place(db, tmp_path):
    markers = [str(tmp_path / f"m{i}") for i in range(3)]
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        hs = oq.map(helpers.boom_once_then, markers, chunksize=3, retries=1, retry_delay=0)
        assert [h.result(30) for h in hs] == ["ok"] * 3
        hs = oq.map(helpers.boom_once_then, [str(tmp_path / "fresh")], chunksize=2)  # no retries
        with pytest.raises(TaskError, match="first attempt fails"):
            hs[0].result(30)


def test_timeout_is_per_item(db):
    with OmniQ(tasks=db, worker="process", concurrency=1) as oq:
        ok = oq.map(helpers.sleep_return, [0.3, 0.3, 0.3], chunksize=3, timeout=0.5)
        assert [h.result(30) for h in ok] == [0.3] * 3  # 0.9 s in all: within 3 x 0.5 s
        late = oq.map(helpers.sleep_return, [30], chunksize=2, timeout=0.3)
        with pytest.raises(TaskError) as ei:
            late[0].result(30)
        assert ei.value.type == "TaskTimeout"


def test_cancelling_an_item_cancels_its_chunk_only(db):
    with OmniQ(tasks=db, concurrency=0) as producer:
        hs = producer.map(helpers.square, range(10), chunksize=5)
        producer.flush()
        assert producer.cancel(hs[2].id) is True
        for h in hs[:5]:
            with pytest.raises(TaskCancelled):
                h.result(10)
            assert h.status() is TaskStatus.CANCELLED
        assert hs[7].status() is TaskStatus.QUEUED
        # another process's worker runs the rest; the producer's handles see it
        with OmniQ(tasks=db, worker="thread", concurrency=1):
            assert [h.result(30) for h in hs[5:]] == [i * i for i in range(5, 10)]


def test_a_handle_outliving_its_instance_reads_its_item(db):
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        hs = oq.map(helpers.square, range(6), chunksize=4)
        oq.flush()
    with OmniQ(tasks=db, worker="thread", concurrency=1) as runner:
        assert runner.get_result(hs[5].id, wait=True, timeout=30).value == 25
    assert hs[5].result(30) == 25 and hs[1].get(30).status is TaskStatus.SUCCEEDED


@pytest.mark.parametrize("bad", [0, -2, 2.5, "big", None])
def test_a_bad_chunksize_is_refused_at_the_call(db, bad):
    with OmniQ(tasks=db, concurrency=0) as oq, pytest.raises(ConfigError, match="chunksize="):
        oq.map(helpers.square, range(4), chunksize=bad)


def test_options_are_checked_for_chunks_too(db):
    with OmniQ(tasks=db, concurrency=0) as oq:
        with pytest.raises(ConfigError, match="retries="):
            oq.map(helpers.square, range(4), chunksize=2, retries=-1)
        with pytest.raises(ConfigError, match="timeout="):
            oq.map(helpers.square, range(4), chunksize=2, timeout="soon")
        with pytest.raises(ConfigError, match="fn="):
            oq.map(42, range(4), chunksize=2)
        assert oq.map(helpers.square, [], chunksize="auto") == []
        item = oq.map(helpers.square, range(4), chunksize=2)[3]
        with pytest.raises(ConfigError, match=r"depends_on contains .*an item of a chunked map"):
            oq.enqueue(helpers.square, args=(1,), depends_on=[item])


def test_run_chunk_records_errors_and_item_result_cuts_them_out():
    payloads, errors = run_chunk(dumps_call(odd_fails), [0, 1, 2])
    assert payloads == [dumps(0), None, dumps(2)] and [e[:3] for e in errors] == [[1, "ValueError", "odd 1"]]
    chunk = TaskResult(task_id="c", status=TaskStatus.SUCCEEDED, payload=dumps([payloads, errors]))
    assert item_result(chunk, 2).value == 2 and item_result(chunk, 2).task_id == "c.2"
    assert item_result(chunk, 1).status is TaskStatus.FAILED
    # a task that is not a chunk, or an item it does not have: the item says so
    plain = TaskResult(task_id="t", status=TaskStatus.SUCCEEDED, payload=dumps(5))
    assert item_result(plain, 0).error.type == "ConfigError"
    assert item_result(chunk, 9).status is TaskStatus.FAILED
    # a chunk that never finished: its items share its end
    dead = TaskResult(task_id="d", status=TaskStatus.CANCELLED)
    assert item_result(dead, 3).status is TaskStatus.CANCELLED and item_result(dead, 3).task_id == "d.3"


def test_item_ids_are_told_apart_from_task_ids():
    assert split_item_id("18ec53e1ead4644b09d6fc9d") is None
    assert split_item_id("18ec53e1ead4644b09d6fc9d.12") == ("18ec53e1ead4644b09d6fc9d", 12)
    assert split_item_id("a.b") is None and split_item_id(".3") is None and split_item_id("x.3") is None
    assert chunk_length("auto", 2000, 2) == 250 and chunk_length("auto", 3, 8) == 1


def test_a_handle_by_id_resolves_every_item_of_its_chunk(db):
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        hs = oq.map(helpers.square, range(8), chunksize=4)
        assert [oq.handle(h.id).result(30) for h in hs] == [i * i for i in range(8)]


def test_an_item_whose_value_cannot_travel_fails_alone(db):
    with OmniQ(tasks=db, worker="process", concurrency=1) as oq:
        hs = oq.map(generator_or_value, [1, 0, 2], chunksize=3)
        assert hs[0].result(30) == 1 and hs[2].result(30) == 2
        with pytest.raises(TaskError) as ei:
            hs[1].result(30)
        assert ei.value.type == "SerializationError" and "generator" in ei.value.message


def test_a_callable_returning_a_coroutine_has_it_awaited_per_item(db):
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        hs = oq.map(lambda x: helpers.async_double(x), range(5), chunksize=2)
        assert [h.result(30) for h in hs] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("bad", [True, 1.0])
def test_chunksize_one_must_be_the_int(db, bad):
    with OmniQ(tasks=db, concurrency=0) as oq, pytest.raises(ConfigError, match="chunksize="):
        oq.map(helpers.square, range(4), chunksize=bad)


def test_callbacks_are_refused_with_chunks(db):
    with OmniQ(tasks=db, concurrency=0) as oq, pytest.raises(ConfigError, match="on_success is not valid with chunksize"):
        oq.map(helpers.square, range(4), chunksize=2, on_success=print)


def test_only_an_omniq_id_and_an_index_make_an_item_id(db):
    assert split_item_id("report.2024") is None and split_item_id("18ec53e1ead4644b09d6fc9d.²") is None
    with OmniQ(tasks=db, concurrency=0) as oq:
        assert oq.get_result("report.2024") is None
        with pytest.raises(ConfigError, match="is not known"):
            oq.status("report.2024")
