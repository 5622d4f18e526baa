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


def test_bulk_moves_what_it_made_to_the_oldest_generation_and_keeps_an_app_freeze():
    class Node:
        pass

    gc.collect()
    with bulk():
        made = [Node() for _ in range(5000)]
    # already in the oldest generation: the young collections to come walk none of them
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(n) in oldest for n in made[::500])
    gc.freeze()  # an application that froze its start-up objects keeps them frozen
    try:
        frozen = gc.get_freeze_count()
        with bulk():
            _ = [Node() for _ in range(100)]
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_weak_futures_hold_only_what_callers_keep_and_sweep_the_rest():
    from omniq._futures import WeakFutures

    w = WeakFutures()
    kept = [ResultFuture() for _ in range(10)]
    w.add_many((f"k{i}", f) for i, f in enumerate(kept))
    w.add_many((f"d{i}", ResultFuture()) for i in range(10_000))  # dropped at once
    assert len(w) == 10 and "k3" in w and "d3" not in w and w.get("d3") is None
    assert len(w._data) < 5_000  # swept as it grew, not left to hold 10,000 dead refs
    assert w.get("k1") is kept[1] and w.pop("k1") is kept[1] and "k1" not in w
    w["k1"] = kept[1]
    assert sorted(k for k, _ in w.live()) == sorted(f"k{i}" for i in range(10)) and w.pop("nope") is None


def test_weak_futures_take_adds_from_many_threads_while_sweeping():
    from omniq._futures import WeakFutures

    w = WeakFutures()
    keep: list[ResultFuture] = []
    lock = threading.Lock()

    def add(t: int) -> None:
        for i in range(3000):
            f = ResultFuture()
            if i % 3 == 0:
                with lock:
                    keep.append(f)
            w[f"{t}-{i}"] = f  # every 4096 entries the adding thread sweeps

    threads = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(w) == len(keep) == 4000
    assert all(w.get(k) is not None for k in (f"{t}-{i}" for t in range(4) for i in range(0, 3000, 3)))


def test_bulk_runs_a_full_collection_after_ten_million_promoted_objects():
    import weakref

    import omniq._futures as F

    class Node:
        pass

    old = F._promoted
    F._promoted = F.PROMOTED_LIMIT - 1
    try:
        with bulk():
            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle: only the collector frees it
            ref = weakref.ref(a)
            del a, b
            _ = [Node() for _ in range(2000)]
        assert ref() is None and F._promoted == 0
    finally:
        F._promoted = old
