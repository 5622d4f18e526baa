"""The public API end to end: sync facade, async core, process/thread/async workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import anyio
import pytest

from omniq import AsyncOmniQ, OmniQ, TaskError, TaskStatus
from omniq.errors import ConfigError, OmniQClosed, TaskCancelled

from . import helpers


def add(a, b):
    return a + b


def boom(msg):
    raise ValueError(f"bad value: {msg}")


def slow(seconds):
    time.sleep(seconds)
    return seconds


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path}/q.db"


@pytest.mark.parametrize("worker", ["process", "thread", "async"])
def test_submit_result_roundtrip(db, worker):
    with OmniQ(tasks=db, worker=worker, concurrency=2) as oq:
        h = oq.submit(add, 2, 3)
        assert h.result(timeout=30) == 5
        assert h.status() is TaskStatus.SUCCEEDED
        hs = oq.map(helpers.square, range(20))
        assert [x.result(30) for x in hs] == [i * i for i in range(20)]


def test_failure_carries_remote_type_message_traceback(db):
    with OmniQ(tasks=db, worker="process", concurrency=1) as oq:
        h = oq.submit(boom, "x")
        with pytest.raises(TaskError) as ei:
            h.result(timeout=30)
        err = ei.value
        assert err.type == "ValueError"
        assert err.message == "bad value: x"
        assert "in boom" in err.traceback and 'raise ValueError(f"bad value: {msg}")' in err.traceback
        r = oq.get_result(h.id)
        assert r.status is TaskStatus.FAILED and r.error.type == "ValueError"
        assert r.attempts == 1 and r.started_at <= r.finished_at


def test_enqueue_is_durable_and_get_result_waits(tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    with OmniQ(tasks=url, concurrency=0) as producer:
        tid = producer.enqueue(add, args=(40, 2))
        assert producer.get_result(tid) is None
        assert producer.status(tid) is TaskStatus.QUEUED
    # a different instance (its own workers) on the same file runs it
    with OmniQ(tasks=url, worker="thread", concurrency=1) as consumer:
        r = consumer.get_result(tid, wait=True, timeout=30)
        assert r.status is TaskStatus.SUCCEEDED and r.value == 42


def test_get_result_wait_timeout(db):
    with OmniQ(tasks=db, concurrency=0) as oq:
        tid = oq.enqueue(add, args=(1, 1))
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            oq.get_result(tid, wait=True, timeout=0.3)
        assert time.monotonic() - t0 < 5


def test_handle_result_finished_by_another_process_resolves(tmp_path):
    """A handle waits for a task an `omniq worker` elsewhere ran (no local workers)."""
    url = f"sqlite:///{tmp_path}/x.db"
    with OmniQ(tasks=url, concurrency=0) as oq:
        h = oq.submit(add, 1, 2)
        oq.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "thread", "-c", "1"],
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), stderr=subprocess.PIPE, text=True,
        )
        try:
            assert h.result(timeout=60) == 3
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err


def test_sync_facade_inside_running_event_loop(db):
    """A Jupyter cell runs synchronously inside the kernel's running loop."""

    async def cell():
        oq = OmniQ(tasks=db, worker="thread", concurrency=1)
        try:
            h = oq.submit(add, 1, 2)
            tid = oq.enqueue(add, args=(3, 4))
            return h.result(timeout=30), oq.get_result(tid, wait=True, timeout=30).value
        finally:
            oq.close()

    assert asyncio.run(cell()) == (3, 7)


def test_queues_filter(db):
    with OmniQ(tasks=db, worker="thread", concurrency=1, queues=["a"]) as oq:
        ta = oq.enqueue(add, args=(1, 1), queue="a")
        tb = oq.enqueue(add, args=(2, 2), queue="b")
        assert oq.get_result(ta, wait=True, timeout=30).value == 2
        time.sleep(0.5)
        assert oq.status(tb) is TaskStatus.QUEUED
        assert oq.get_result(tb) is None


def test_cancel_queued_task(db):
    with OmniQ(tasks=db, concurrency=0) as oq:
        h = oq.submit(add, 1, 1)
        assert h.cancel() is True
        assert h.status() is TaskStatus.CANCELLED
        with pytest.raises(TaskCancelled):
            h.result(timeout=5)
        assert h.cancel() is False


def test_events_in_time_order(db):
    with OmniQ(tasks=db, worker="process", concurrency=1) as oq:
        h = oq.submit(add, 1, 1)
        h.result(30)
        evs = oq.events(task_id=h.id)
        types = [e.type for e in evs]
        assert types[0] == "enqueued" and "started" in types and types[-1] == "succeeded"
        assert [e.timestamp for e in evs] == sorted(e.timestamp for e in evs)
        assert all(e.task_id == h.id for e in evs)


def test_timeout_kills_child_and_replaces_it(db):
    with OmniQ(tasks=db, worker="process", concurrency=1) as oq:
        tid = oq.enqueue(slow, args=(30,), timeout=0.5)
        t0 = time.monotonic()
        r = oq.get_result(tid, wait=True, timeout=30)
        assert r.status is TaskStatus.FAILED and r.error.type == "TaskTimeout"
        assert "timed out after 0.5 s" in r.error.message
        assert time.monotonic() - t0 < 15
        assert oq.submit(add, 2, 2).result(30) == 4  # the replacement child works


def test_dead_child_is_redelivered_then_fails_with_worker_died(db):
    with OmniQ(tasks=db, worker="process", concurrency=1, max_deliveries=2) as oq:
        tid = oq.enqueue(helpers.die)
        r = oq.get_result(tid, wait=True, timeout=60)
        assert r.status is TaskStatus.FAILED and r.error.type == "WorkerDied"
        types = [e.type for e in oq.events(task_id=tid)]
        assert types.count("requeued") == 1  # delivered twice in all
        assert oq.submit(add, 1, 1).result(30) == 2


def test_retries_record_attempts(db):
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        tid = oq.enqueue(boom, args=("r",), retries=2, retry_delay=0.01)
        r = oq.get_result(tid, wait=True, timeout=30)
        assert r.status is TaskStatus.FAILED and r.attempts == 3
        assert [e.type for e in oq.events(task_id=tid)].count("retry") == 2


def test_submit_from_many_threads(db):
    with OmniQ(tasks=db, worker="process", concurrency=2) as oq:
        out: list = []

        def producer(k):
            out.extend(oq.submit(add, k, i) for i in range(200))

        threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(out) == 800
        assert sorted(h.result(60) for h in out) == sorted(k + i for k in range(4) for i in range(200))


def test_bad_arguments_are_named(db):
    oq = OmniQ(tasks=db, concurrency=0)
    try:
        with pytest.raises(ConfigError, match="fn="):
            oq.submit(42)
        with pytest.raises(ConfigError, match="priority="):
            oq.enqueue(add, args=(1, 2), priority="high")
        with pytest.raises(ConfigError, match="timeout="):
            oq.enqueue(add, args=(1, 2), timeout=-1)
        with pytest.raises(ConfigError, match="args="):
            oq.enqueue(add, args=5)
        with pytest.raises(ConfigError, match="queue="):
            oq.enqueue(add, args=(1, 2), queue="")
    finally:
        oq.close()
    with pytest.raises(ConfigError, match="worker="):
        OmniQ(tasks=db, worker="fork")
    with pytest.raises(ConfigError, match="ftp"):
        OmniQ(tasks="ftp://nowhere").open()


def test_from_config_dict_and_yaml(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/c.db"
    oq = OmniQ.from_config({"task_queue_type": url, "default_worker": "thread", "concurrency": 1})
    assert oq.config.default_worker == "thread"
    with oq:
        assert oq.submit(add, 1, 1).result(30) == 2
    y = tmp_path / "omniq.yaml"
    y.write_text(f"task_queue_type: {url}\ndefault_worker: thread\nconcurrency: 3\n")
    monkeypatch.setenv("OMNIQ_CONCURRENCY", "1")
    oq2 = OmniQ.from_config(str(y))
    assert oq2.config.concurrency == 1  # env beats file
    assert OmniQ.from_config(str(y), concurrency=0).config.concurrency == 0  # argument beats env


def test_async_api(tmp_path):
    async def main():
        async with AsyncOmniQ(tasks=f"sqlite:///{tmp_path}/a.db", worker="async", concurrency=4) as oq:
            h = await oq.submit(helpers.async_double, 21)
            assert await h.result(timeout=30) == 42
            hs = await oq.map(helpers.square, [1, 2, 3])
            assert [await x for x in hs] == [1, 4, 9]
            tid = await oq.enqueue(add, args=(1, 2))
            assert (await oq.get_result(tid, wait=True, timeout=30)).value == 3

    asyncio.run(main())


def _run_script(tmp_path, body: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=timeout
    )


def test_notebook_style_closures_lambdas_globals_through_process_workers(tmp_path):
    """Functions defined in __main__ (like a notebook) travel by value, with the globals they use.
    No `if __name__ == "__main__"` guard: workers start through omniq's own entry point."""
    p = _run_script(
        tmp_path,
        f"""
        import json, math
        from omniq import OmniQ

        SCALE = 10
        table = {{"a": 1, "b": 2}}

        def uses_globals(k):
            return table[k] * SCALE + math.floor(2.5)

        def make_adder(n):
            def inner(x):
                return x + n + SCALE
            return inner

        class Point:
            def __init__(self, x): self.x = x
            def norm(self): return abs(self.x)

        oq = OmniQ(tasks="sqlite:///{tmp_path}/nb.db", worker="process", concurrency=2)
        out = {{
            "globals": oq.submit(uses_globals, "b").result(60),
            "closure": oq.submit(make_adder(5), 1).result(60),
            "lambda": oq.submit(lambda x: x * SCALE, 4).result(60),
            "class": oq.submit(lambda p: p.norm(), Point(-3)).result(60),
            "map": [h.result(60) for h in oq.map(lambda v: v + SCALE, [1, 2])],
        }}
        print(json.dumps(out))
        """,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {
        "globals": 22, "closure": 16, "lambda": 40, "class": 3, "map": [11, 12],
    }


def test_left_open_instance_closes_quietly_at_exit_and_keeps_tasks(tmp_path):
    p = _run_script(
        tmp_path,
        f"""
        from omniq import OmniQ
        oq = OmniQ(tasks="sqlite:///{tmp_path}/open.db", worker="process", concurrency=1)
        h = oq.submit(pow, 2, 10)
        assert h.result(60) == 1024
        ids = [oq.submit(pow, 2, i).id for i in range(50)]
        print(ids[-1])
        # no close, no drain: the interpreter exits with the instance open
        """,
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == ""
    last = p.stdout.strip().splitlines()[-1]
    # what its worker had claimed went back at exit (a claim still on its way included), so
    # the next instance runs it now, not once 30 s leases lapse
    conn = sqlite3.connect(tmp_path / "open.db")
    try:
        assert conn.execute("SELECT count(*) FROM omniq_tasks WHERE status = 'running'").fetchone() == (0,)
    finally:
        conn.close()
    with OmniQ(tasks=f"sqlite:///{tmp_path}/open.db", worker="thread", concurrency=1) as oq:
        assert oq.get_result(last, wait=True, timeout=60).value == 2**49


def test_signed_payloads_and_an_unsigned_task_is_refused_not_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "s3cret-0123456789abcdef0123456789abcdef")
    with OmniQ(tasks=f"sqlite:///{tmp_path}/s.db", worker="process", concurrency=1) as oq:
        assert oq.submit(add, 1, 2).result(30) == 3  # children verify with the same key
        monkeypatch.delenv("OMNIQ_SECRET_KEY")  # someone without the key writes a task
        tid = oq.enqueue(add, args=(5, 5), retries=3, retry_delay=0.01)
        r = oq.get_result(tid, wait=True, timeout=30)
        assert r.status is TaskStatus.FAILED and r.error.type == "SignatureError"
        assert "not signed" in r.error.message
        assert r.attempts == 1  # never retried


def test_a_producer_keeps_no_waiters_for_tasks_it_does_not_run(db):
    with OmniQ(tasks=db, concurrency=0) as oq:
        for i in range(50):
            oq.enqueue(add, args=(i, i))
        assert len(oq.core.waiters.futures) == 0
        h = oq.submit(add, 1, 1)  # a handle asked for: its waiter stays until the result
        assert h.id in oq.core.waiters.futures


# --- enqueue() from sync code stores on the caller's thread ----------------------------------
def test_sync_enqueue_is_in_the_file_when_it_returns_and_keeps_submit_order(tmp_path):
    import sqlite3

    db = tmp_path / "fast.db"
    with OmniQ(tasks=f"sqlite:///{db}", concurrency=0) as oq:
        first = oq.enqueue(helpers.square, args=(1,))
        with contextlib.closing(sqlite3.connect(db)) as conn:
            row = conn.execute("SELECT status FROM omniq_tasks WHERE id = ?", (first,)).fetchone()
        assert row == ("queued",)  # durable on return, no flush()
        assert [e.type for e in oq.events(task_id=first)] == ["enqueued"]
        # a submit still on its way to storage: the enqueue after it must not overtake it,
        # and may depend on it
        a = oq.submit(helpers.square, 2)
        b = oq.enqueue(helpers.square, args=(3,), depends_on=[a.id])
        c = oq.enqueue(helpers.square, args=(4,))
    with OmniQ(tasks=f"sqlite:///{db}", worker="thread", concurrency=1) as oq:
        results = {t: oq.get_result(t, wait=True, timeout=30) for t in (first, a.id, b, c)}
    assert [results[t].value for t in (first, a.id, b, c)] == [1, 4, 9, 16]
    starts = sorted((results[t].started_at, t) for t in (first, a.id, c))
    assert [t for _, t in starts] == [first, a.id, c]  # FIFO: in the order the calls returned


def test_sync_enqueue_from_many_threads_with_a_local_worker(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/threads.db", worker="thread", concurrency=2) as oq:
        ids: list[str] = []
        lock = threading.Lock()

        def producer(k: int) -> None:
            mine = [oq.enqueue(helpers.square, args=(k * 100 + i,)) for i in range(50)]
            with lock:
                ids.extend(mine)

        threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        values = sorted(oq.get_result(t, wait=True, timeout=30).value for t in ids)
    assert values == sorted((k * 100 + i) ** 2 for k in range(4) for i in range(50))


def test_a_handle_kept_past_close_still_gets_its_result(tmp_path):
    url = f"sqlite:///{tmp_path}/late.db"
    with OmniQ(tasks=url, concurrency=0) as producer:
        h = producer.submit(helpers.square, 7)
    with OmniQ(tasks=url, worker="thread", concurrency=1) as worker:
        assert worker.get_result(h.id, wait=True, timeout=30).value == 49
    assert h.result(timeout=30) == 49  # producer is closed: the handle reads storage
    producer.close()


CLOSE_RACE = """
import faulthandler, sys, threading, time
faulthandler.enable()
sys.path.insert(0, sys.argv[2])
from omniq import OmniQ
from omniq.errors import OmniQClosed
from tests import helpers

oq = OmniQ(tasks=sys.argv[1], concurrency=0)
oq.open()
returned, errors, closed = [], [], []

def producer():
    for i in range(300):
        try:
            returned.append(oq.enqueue(helpers.square, args=(i,)))
        except OmniQClosed:  # a call after the close: refused, never stored, not reopened
            closed.append(i)
        except Exception as exc:  # none expected
            errors.append(repr(exc))

threads = [threading.Thread(target=producer) for _ in range(4)]
for t in threads:
    t.start()
time.sleep(0.05)
oq.close()  # while the producers are mid-enqueue (later calls raise OmniQClosed)
for t in threads:
    t.join()
assert not oq.core.is_open  # not reopened by the producers
oq.close()
print(len(returned), len(set(returned)), len(errors), len(closed))
print(",".join(returned))
"""


def test_closing_while_threads_enqueue_neither_crashes_nor_loses_or_duplicates(tmp_path):
    import sqlite3

    db = tmp_path / "race.db"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", CLOSE_RACE, f"sqlite:///{db}", root],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]  # (a segfault was -11)
    counts, ids = p.stdout.splitlines()
    n, unique, errors, closed = map(int, counts.split())
    assert (n + closed, unique, errors) == (1200, n, 0)  # each call stored once or refused
    assert n > 0 and closed > 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM omniq_tasks")}
    assert stored == set(ids.split(","))  # every returned id stored, nothing stored unreturned


def test_threads_handing_over_batches_never_stop_the_result_pickup(tmp_path):
    url = f"sqlite:///{tmp_path}/pick.db"
    with OmniQ(tasks=url, concurrency=0) as oq:
        stop = time.monotonic() + 2.0

        def producer() -> None:
            while time.monotonic() < stop:
                oq.map(helpers.square, range(200))  # handles dropped at once

        threads = [threading.Thread(target=producer) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        crashed = [t for t in oq.core.session.bg if t.done()]
        assert not crashed, [t.exception() for t in crashed]
        kept = oq.handle(oq.enqueue(helpers.square, args=(6,), priority=10))  # runs first
        with OmniQ(tasks=url, worker="thread", concurrency=1):
            assert kept.result(timeout=60) == 36  # seen by this instance's pickup loop


def test_a_flush_cut_short_loses_no_task(tmp_path):
    """A caller that gives up waiting (a timeout around flush(), an enqueue cancelled by its
    task) must not take the batch it was storing down with it."""
    async def main() -> None:
        async with AsyncOmniQ(tasks=f"sqlite:///{tmp_path}/cut.db", concurrency=0) as oq:
            real = oq.session.queue.enqueue

            async def slow(tasks):  # a store that takes its time (a far-away server)
                await asyncio.sleep(0.5)
                await real(tasks)

            oq.session.queue.enqueue = slow
            h = await oq.submit(helpers.square, 3)
            # (asyncio.TimeoutError: the caller's own wait_for raises it, builtin from 3.11)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(oq.flush(), 0.1)
            await oq.flush()
            assert await oq.status(h.id) == "queued"
            h2 = await oq.submit(helpers.square, 4)
            with anyio.move_on_after(0.1) as scope:  # an anyio scope cancels the same way
                await oq.flush()
            assert scope.cancelled_caught
            enqueuer = asyncio.ensure_future(oq.enqueue(helpers.square, (5,)))
            await asyncio.sleep(0.05)
            enqueuer.cancel()  # an enqueue() whose task is cancelled
            await oq.flush()
            assert await oq.status(h2.id) == "queued"
            assert len({e.task_id for e in await oq.events() if e.type == "enqueued"}) == 3

    asyncio.run(main())


@pytest.mark.parametrize("cut", ["wait_for", "cancel"])
def test_a_close_cut_short_loses_no_task(tmp_path, cut):
    """close() under a caller's timeout, or cancelled, while the store of what it accepted is
    slow: the tasks are stored before the storage closes (on every Python: 3.12 changed how
    asyncio.wait_for cancels)."""
    url = f"sqlite:///{tmp_path}/cutclose.db"

    async def main() -> list[str]:
        oq = AsyncOmniQ(tasks=url, concurrency=0)
        await oq.open()
        real = oq.session.queue.enqueue

        async def slow(tasks):
            await asyncio.sleep(0.5)
            await real(tasks)

        oq.session.queue.enqueue = slow
        hs = await oq.map(helpers.square, range(3))
        if cut == "wait_for":
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(oq.close(), 0.1)
        else:
            closer = asyncio.ensure_future(oq.close())
            await asyncio.sleep(0.1)
            closer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closer
        assert not oq.is_open
        return [h.id for h in hs]

    ids = asyncio.run(main())

    async def check() -> None:
        async with AsyncOmniQ(tasks=url, concurrency=0) as oq:
            assert [await oq.status(i) for i in ids] == ["queued"] * 3

    asyncio.run(check())


def test_a_callback_on_a_dropped_handle_still_runs(tmp_path):
    seen: list[int] = []
    with OmniQ(tasks=f"sqlite:///{tmp_path}/cb.db", worker="thread", concurrency=1) as oq:
        for i in range(5):
            oq.submit(helpers.square, i).future.add_done_callback(lambda f: seen.append(f.result().value))
        import gc

        gc.collect()
        deadline = time.monotonic() + 30
        while len(seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert sorted(seen) == [0, 1, 4, 9, 16]


def test_every_timeout_is_the_builtin_timeout_error(tmp_path):
    """On every Python (before 3.11 asyncio's and concurrent.futures' TimeoutError are other
    classes): a handle, its future, get_result and an async handle all raise TimeoutError."""
    import concurrent.futures as cf

    with OmniQ(tasks=f"sqlite:///{tmp_path}/to.db", concurrency=0) as oq:
        h = oq.submit(helpers.square, 2)
        for wait in (lambda: h.result(timeout=0.05), lambda: h.future.result(timeout=0.05),
                     lambda: oq.get_result(h.id, wait=True, timeout=0.05)):
            with pytest.raises(TimeoutError):
                wait()
        with pytest.raises(cf.TimeoutError):  # and still what a concurrent.futures caller catches
            h.future.result(timeout=0.01)

    async def main() -> None:
        async with AsyncOmniQ(tasks=f"sqlite:///{tmp_path}/to.db", concurrency=0) as aoq:
            ah = await aoq.submit(helpers.square, 3)
            with pytest.raises(TimeoutError):
                await ah.result(timeout=0.05)

    asyncio.run(main())


def test_a_handle_of_a_closed_instance_waits_without_reopening_its_workers(tmp_path):
    url = f"sqlite:///{tmp_path}/noreopen.db"
    oq = OmniQ(tasks=url, worker="thread", concurrency=0)
    h = oq.submit(helpers.sleep_return, 0.01, "v")
    oq.close()
    with pytest.raises(TimeoutError):
        h.result(timeout=0.5)  # nobody runs it: a timeout, not a reopened instance running it
    assert not oq.core.is_open
    with OmniQ(tasks=url, worker="thread", concurrency=1):
        assert h.result(timeout=30) == "v"


# --- bad input: every enqueue option either works or names itself in a ConfigError ----------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ODD = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.timedeltas(), st.lists(st.integers(), max_size=2), st.binary(max_size=4),
)
_OPTIONS = ("priority", "delay", "ttl", "retries", "retry_delay", "timeout", "result_ttl", "queue", "key")
_CORE = AsyncOmniQ(tasks="memory://", concurrency=0)  # building a task opens nothing


@settings(max_examples=helpers.examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(_OPTIONS), value=_ODD)
def test_every_enqueue_option_works_or_names_itself(option: str, value: object) -> None:
    try:
        task = _CORE.intake.make_task(helpers.square, (1,), None, **{option: value})
    except ConfigError as exc:
        assert option in str(exc), f"{option}={value!r}: {exc}"
        return
    # accepted: the stored task says what was asked, in storable types
    if option == "priority":
        assert isinstance(task.priority, int) and not isinstance(task.priority, bool)
    if option in ("ttl", "delay") and isinstance(value, (int, float)) and value > 0:
        assert (task.expires_at if option == "ttl" else task.eta) is not None
    for name in ("timeout", "retry_delay", "result_ttl"):
        got = getattr(task, name)
        assert got is None or (isinstance(got, float) and got == got and got >= 0), (name, got)


def test_close_returns_when_a_storage_stops_answering(tmp_path, monkeypatch, caplog):
    """A frozen events server costs close() a WARNING per step naming it, not a hang; the
    tasks and results on the healthy storage are all there."""
    import signal

    import omniq.client.session

    from .servers import private_redis

    monkeypatch.setattr(omniq.client.session, "CLOSE_STEP", 1.0)
    with private_redis() as server:
        db = f"sqlite:///{tmp_path}/t.db"
        oq = OmniQ(tasks=db, events=server.url(), worker="thread", concurrency=1).open()
        try:
            ids = [h.id for h in oq.map(helpers.square, range(20))]
            assert oq.gather([oq.handle(i) for i in ids], timeout=30) == [i * i for i in range(20)]
            os.kill(server.proc.pid, signal.SIGSTOP)  # answers nothing, closes nothing
            oq.submit(helpers.square, 5)  # its events cannot be written now
            t0 = time.monotonic()
            with caplog.at_level("WARNING", logger="omniq"):
                oq.close()
            assert time.monotonic() - t0 < 20
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        warned = [r.getMessage() for r in caplog.records if "did not finish within" in r.getMessage()]
        assert warned and all(f"127.0.0.1:{server.port}" in m for m in warned)
        with OmniQ(tasks=db, concurrency=0) as again:
            assert [again.get_result(i).value for i in ids] == [i * i for i in range(20)]


# --- an id never stored: waiting on it raises at once, as status() does (issue 22, item 2) -----
_UNKNOWN_ID_URLS = ["memory://", "sqlite:///{tmp}/u.db", "sqlite://:memory:", "file://{tmp}/fq"]


@pytest.mark.parametrize("template", _UNKNOWN_ID_URLS)
def test_waiting_on_an_unknown_task_id_raises_at_once_sync(tmp_path, template):
    url = template.format(tmp=tmp_path)
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match="'typo'"):
            oq.get_result("typo", wait=True)
        with pytest.raises(ConfigError, match="'typo'"):
            oq.handle("typo").result()
        with pytest.raises(ConfigError, match=r"'typo\.3'"):  # an item id of a chunk never stored
            oq.get_result("typo.3", wait=True, timeout=30)
        assert time.monotonic() - t0 < 10
        assert oq.get_result("typo") is None  # without wait: "not final yet", as before
        h = oq.submit(add, 1, 2)  # a real id, even one still buffered, is waited for
        assert oq.handle(h.id).result(timeout=30) == 3
        assert oq.get_result(oq.enqueue(add, args=(2, 2)), wait=True, timeout=30).value == 4


@pytest.mark.parametrize("template", _UNKNOWN_ID_URLS)
def test_waiting_on_an_unknown_task_id_raises_at_once_async(tmp_path, template):
    url = template.format(tmp=tmp_path)

    async def main():
        async with AsyncOmniQ(tasks=url, worker="async", concurrency=1) as oq:
            with anyio.fail_after(10):
                with pytest.raises(ConfigError, match="'typo'"):
                    await oq.get_result("typo", wait=True)
                with pytest.raises(ConfigError, match="'typo'"):
                    await oq.handle("typo").result()
                h = await oq.submit(helpers.async_double, 4)
                assert await oq.handle(h.id).result(timeout=30) == 8

    asyncio.run(main())


# --- a closed instance is not reopened behind its owner's back (issue 22, item 3) --------------
def test_a_closed_instance_refuses_calls_until_opened_again(tmp_path):
    url = f"sqlite:///{tmp_path}/closed.db"
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        h = oq.submit(add, 1, 2)
        assert h.result(timeout=30) == 3
    for call in (lambda: oq.submit(add, 1, 1), lambda: oq.enqueue(add, args=(1, 1)),
                 lambda: oq.map(helpers.square, [1]), lambda: oq.get_result(h.id), lambda: oq.handle(h.id),
                 lambda: oq.status(h.id), lambda: oq.health()):
        with pytest.raises(OmniQClosed, match=r"is closed: reopen it with oq\.open\(\)"):
            call()
    assert not oq.core.is_open and "closed" in repr(oq)
    assert h.result(timeout=30) == 3  # its handles still read their results
    assert isinstance(OmniQClosed("x"), RuntimeError)
    with oq:  # a new `with` reopens it, as does oq.open()
        assert oq.submit(add, 2, 2).result(timeout=30) == 4
    oq.open()
    try:
        assert oq.get_result(h.id).value == 3
    finally:
        oq.close()
    lazy = OmniQ(tasks=url, concurrency=0)  # never opened: the first call opens it
    try:
        assert lazy.get_result(h.id).value == 3
    finally:
        lazy.close()


def test_a_closed_async_instance_refuses_calls_until_opened_again(tmp_path):
    async def main():
        async with AsyncOmniQ(tasks=f"sqlite:///{tmp_path}/aclosed.db", worker="async", concurrency=1) as oq:
            tid = await oq.enqueue(add, args=(1, 2))
            assert (await oq.get_result(tid, wait=True, timeout=30)).value == 3
        with pytest.raises(OmniQClosed):
            await oq.submit(add, 1, 1)
        with pytest.raises(OmniQClosed):
            await oq.get_result(tid)
        async with oq:
            assert (await oq.get_result(tid)).value == 3

    asyncio.run(main())


@pytest.mark.parametrize(
    ("module", "never"),
    [
        ("omniq.sweep", ("omniq.notebook", "omniq.client", "omniq.core")),  # a display hook, not widgets
        ("omniq.progress", ("omniq.notebook", "omniq.client", "omniq.core")),
        ("omniq.models", ("omniq.storage", "omniq.serialization")),
        ("omniq.workers.base", ("omniq.workers.aio", "omniq.workers.thread", "omniq.workers.process",
                                "omniq.workers.gevent")),  # the runners import it (registry.py builds them)
        ("omniq.services.janitor", ("omniq.client", "omniq.core")),
        ("omniq.services.health", ("omniq.client", "omniq.core")),
        ("omniq.notebook.cells", ("IPython", "omniq.client", "omniq.core")),  # what a worker loads for a cell
    ],
)
def test_each_layer_imports_nothing_above_it(module: str, never: tuple[str, ...]) -> None:
    """The layers the architecture promises (ARCHITECTURE.md), checked in a fresh interpreter."""
    code = f"import sys, {module}; print(sorted(n for n in sys.modules if n.startswith({never!r})))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", f"importing {module} loads {p.stdout.strip()}"
