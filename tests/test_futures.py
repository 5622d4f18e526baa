"""The per-task future: a drop-in ``concurrent.futures.Future`` on one shared condition."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import threading
import time

import pytest

from omniq._futures import ResultFuture, bulk, resolve_many


def test_it_is_a_future_for_every_stdlib_consumer():
    a, b = ResultFuture(), ResultFuture()
    seen: list[object] = []
    a.add_done_callback(lambda f: seen.append(f.result()))
    threading.Timer(0.05, resolve_many, args=([(a, 1), (b, 2)],)).start()
    done, _ = cf.wait([a, b], timeout=10)
    assert done == {a, b} and seen == [1]
    assert sorted(f.result() for f in cf.as_completed([a, b], timeout=10)) == [1, 2]

    async def awaited() -> int:
        c = ResultFuture()
        asyncio.get_running_loop().call_later(0.01, c.set_result, 3)
        return await asyncio.wrap_future(c)

    assert asyncio.run(awaited()) == 3


def test_a_wake_up_for_another_future_is_not_a_timeout():
    mine, other = ResultFuture(), ResultFuture()

    def later() -> None:
        other.set_result("x")  # wakes every waiter on the shared condition
        time.sleep(0.2)
        mine.set_result("mine")

    threading.Thread(target=later).start()
    assert mine.result(timeout=5) == "mine"


def test_timeout_exception_and_cancel():
    f = ResultFuture()
    t0 = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.1)
    assert time.monotonic() - t0 >= 0.1
    g = ResultFuture()
    g.set_exception(ValueError("bad"))
    assert isinstance(g.exception(timeout=1), ValueError)
    with pytest.raises(ValueError, match="bad"):
        g.result()
    h = ResultFuture()
    assert h.cancel() and h.cancelled()
    with pytest.raises(cf.CancelledError):
        h.result(timeout=1)


def test_resolve_many_leaves_final_futures_alone_and_takes_stock_ones():
    done = ResultFuture()
    done.set_result("first")
    stock: cf.Future[str] = cf.Future()
    fresh = ResultFuture()
    resolve_many([(done, "second"), (stock, "s"), (fresh, "f")])
    assert (done.result(), stock.result(), fresh.result()) == ("first", "s", "f")


def test_bulk_pauses_the_collector_and_restores_it():
    assert gc.isenabled()
    with bulk():
        assert not gc.isenabled()
        with bulk():  # nested: the outer one turns it back on
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with bulk():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()


def test_bulk_from_many_threads_leaves_the_collector_as_it_found_it():
    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        def churn() -> None:
            for _ in range(300):
                with bulk(), bulk():
                    pass

        threads = [threading.Thread(target=churn) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert gc.isenabled()


def test_a_pending_future_with_a_callback_outlives_its_last_reference():
    import weakref

    seen: list[object] = []
    f = ResultFuture()
    f.add_done_callback(lambda fut: seen.append(fut.result()))
    ref = weakref.ref(f)
    del f
    gc.collect()
    f = ref()
    assert f is not None  # kept alive by its callback until done
    resolve_many([(f, "x")])
    assert seen == ["x"]
    del f
    gc.collect()
    assert ref() is None  # done: no longer pinned
