"""omniq.Executor and oq.executor(): a concurrent.futures.Executor over OmniQ (issue #16).

Everything runs on process workers over SQLite files. The last part runs CPython's own
executor tests (``test_concurrent_futures``: ExecutorTest, WaitTests, AsCompletedTests and the
generic ExecutorShutdownTest) against ``omniq.Executor``; it is marked ``slow`` and needs the
suite on disk (the interpreter's own, or Debian's ``libpython3.X-testsuite``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures as cf
import gc
import importlib
import itertools
import operator
import os
import shutil
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
import weakref
from pathlib import Path

import pytest

import omniq
from omniq import AsyncOmniQ, ConfigError, Executor, OmniQ, TaskError, TaskStatus
from tests.helpers import sleep_return, square

IN_CHILD = "OMNIQ_CHILD_PARENT" in os.environ  # imported by a worker child for a task function


# --- task functions (imported by reference in the children) -----------------------------------
class Oops(Exception):
    pass


class NeedsTwo(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}+{b}")
        self.a, self.b = a, b


def raise_oops(msg):
    raise Oops(msg)  # the line the remote traceback shows


def raise_key(k):
    return {}[k]


def raise_needs_two():
    raise NeedsTwo(1, 2)


def add(a, b=0, *, c=0):
    return a + b + c


class Blob:
    def __init__(self, n):
        self.n = n


def make_blob(n):
    return Blob(n)


def payload_len(obj):
    return obj.n


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path}/ex.db"


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    path = tmp_path_factory.mktemp("executor") / "shared.db"
    with Executor(max_workers=2, tasks=f"sqlite:///{path}") as e:
        yield e


def reader(url):
    """A storage-only instance on the same file: what OmniQ recorded."""
    return OmniQ(tasks=url, concurrency=0)


# --- submit, futures, the standard library's tools --------------------------------------------
def test_submit_returns_a_real_future(ex):
    f = ex.submit(square, 7)
    assert isinstance(f, cf.Future)
    assert f.result(timeout=30) == 49
    assert f.done() and not f.cancelled() and f.exception() is None
    assert ex.submit(add, 1, 2, c=3).result(timeout=30) == 6
    assert ex.submit(lambda x: x + 1, 1).result(timeout=30) == 2  # by value
    with pytest.raises(TypeError):
        ex.submit(fn=add, a=1)  # fn is positional-only, as in the standard library


def test_wait_and_as_completed(ex):
    slow = ex.submit(sleep_return, 1.5, "slow")
    quick = ex.submit(square, 3)
    done, not_done = cf.wait([slow, quick], return_when=cf.FIRST_COMPLETED, timeout=30)
    assert quick in done and slow in not_done
    fs = [ex.submit(square, i) for i in range(20)]
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=60)) == sorted(i * i for i in range(20))
    done, not_done = cf.wait([slow], timeout=30)
    assert slow in done and slow.result() == "slow"


def test_first_exception(ex):
    ok = ex.submit(square, 2)
    bad = ex.submit(raise_oops, "x")
    slow = ex.submit(sleep_return, 2)
    done, not_done = cf.wait([ok, bad, slow], return_when=cf.FIRST_EXCEPTION, timeout=30)
    assert bad in done and slow in not_done


def test_asyncio_wrap_future_and_run_in_executor(ex):
    async def main():
        loop = asyncio.get_running_loop()
        a = await loop.run_in_executor(ex, square, 6)
        b = await asyncio.wrap_future(ex.submit(add, 2, 3))
        c = await asyncio.gather(*(loop.run_in_executor(ex, square, i) for i in range(5)))
        with pytest.raises(Oops):
            await loop.run_in_executor(ex, raise_oops, "async")
        return a, b, c

    assert asyncio.run(main()) == (36, 5, [0, 1, 4, 9, 16])


def test_running_state(ex):
    f = ex.submit(sleep_return, 1.0)
    deadline = time.monotonic() + 10
    while not f.running() and not f.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f.running()
    assert f.cancel() is False  # a task a worker holds runs on, as in the standard library
    assert f.result(timeout=30) == 1.0


# --- map ----------------------------------------------------------------------------------------------
def test_map_keeps_order(ex):
    assert list(ex.map(square, range(30))) == [i * i for i in range(30)]
    assert list(ex.map(pow, range(10), range(10))) == [pow(i, i) for i in range(10)]
    assert list(ex.map(square, (i for i in range(5)))) == [0, 1, 4, 9, 16]
    assert list(ex.map(square, [])) == []


@pytest.mark.parametrize("chunksize", [2, 7, 50, "auto"])
def test_map_chunks(ex, chunksize):
    assert list(ex.map(square, range(40), chunksize=chunksize)) == [i * i for i in range(40)]
    assert list(ex.map(operator.add, range(40), range(40), chunksize=chunksize)) == [2 * i for i in range(40)]


def test_map_chunks_are_one_task_each(db):
    with Executor(max_workers=1, tasks=db) as e:
        assert list(e.map(square, range(12), chunksize=5)) == [i * i for i in range(12)]
    with reader(db) as r:
        started = [ev for ev in r.events() if ev.type == "started"]
    assert len(started) == 3  # 5 + 5 + 2 items


def test_map_chunksize_below_one(ex):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            ex.map(square, range(3), chunksize=bad)


def test_map_exception_in_order(ex):
    it = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(it) == (0, 1)
    assert next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_timeout_counts_from_the_call(db):
    # a slot per call: a process child that runs a quick task and then a long one may hold
    # the quick one's result back until the long one ends (see the report on issue #16)
    with Executor(max_workers=3, tasks=db) as e:
        t0 = time.monotonic()
        it = e.map(sleep_return, [0.0, 0.0, 6.0], timeout=3)
        time.sleep(1.5)  # the clock started at the call, not at the first next()
        got = []
        with pytest.raises(TimeoutError):
            for v in it:
                got.append(v)
        assert got == [0.0, 0.0]
        assert 2.9 < time.monotonic() - t0 < 5.5
        e.shutdown(wait=True, cancel_futures=True)


def test_map_results_are_not_kept(ex):
    """Not even for the moment OmniQ's loop thread still runs the finished future's callbacks:
    thread switches every 10 µs make that moment likely (a quarter to half of the values were
    still held before)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        kept = 0
        for obj in ex.map(make_blob, range(100)):
            wr = weakref.ref(obj)
            del obj
            gc.collect()
            kept += wr() is not None
    finally:
        sys.setswitchinterval(interval)
    assert kept == 0


def test_arguments_are_not_kept(ex):
    obj = Blob(3)
    wr = weakref.ref(obj)
    f = ex.submit(payload_len, obj)
    del obj
    gc.collect()
    assert wr() is None  # the task holds its own copy; the future never held the argument
    assert f.result(timeout=30) == 3


# --- exceptions ------------------------------------------------------------------------------------
def test_exception_keeps_its_type_and_remote_traceback(ex):
    with pytest.raises(Oops, match="bad thing") as info:
        ex.submit(raise_oops, "bad thing").result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, TaskError) and cause.type == "Oops"
    assert "raise Oops(msg)  # the line the remote traceback shows" in cause.traceback
    with pytest.raises(KeyError) as k:
        ex.submit(raise_key, "missing").result(timeout=30)
    assert k.value.args == ("missing",)
    with pytest.raises(ZeroDivisionError):
        ex.submit(divmod, 1, 0).result(timeout=30)
    f = ex.submit(raise_needs_two)  # a constructor that wants other arguments: type and message
    assert isinstance(f.exception(timeout=30), NeedsTwo)
    assert str(f.exception()) == "1+2"


def test_an_unknown_exception_type_stays_a_task_error(ex):
    def local():
        class Hidden(Exception):
            pass

        raise Hidden("nowhere to be found here")

    with pytest.raises(TaskError, match="Hidden: nowhere to be found here"):
        ex.submit(local).result(timeout=30)


def test_a_timed_out_task_is_a_task_error(db):
    with Executor(max_workers=1, tasks=db, timeout=0.5) as e:
        with pytest.raises(TaskError) as info:
            e.submit(sleep_return, 5).result(timeout=30)
        assert info.value.type == "TaskTimeout"


# --- cancel and shutdown -------------------------------------------------------------------------
def test_cancel_a_queued_call_cancels_its_task(db):
    with Executor(max_workers=1, tasks=db) as e:
        first = e.submit(sleep_return, 1.5)
        queued = [e.submit(square, i) for i in range(3)]
        while not first.running():
            time.sleep(0.01)
        assert queued[-1].cancel() is True
        assert queued[-1].cancelled()
        with pytest.raises(cf.CancelledError):
            queued[-1].result()
        assert [f.result(timeout=30) for f in queued[:-1]] == [0, 1]
        tid = queued[-1].task_id
    with reader(db) as r:
        assert r.get_result(tid).status is TaskStatus.CANCELLED


def test_submit_after_shutdown(db):
    e = Executor(max_workers=1, tasks=db)
    e.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        e.submit(square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        e.map(square, [1])
    e.shutdown()  # twice is fine
    assert not e.oq.core.is_open


def test_shutdown_waits(db):
    e = Executor(max_workers=2, tasks=db)
    fs = [e.submit(sleep_return, 0.2, i) for i in range(6)]
    e.shutdown(wait=True)
    assert all(f.done() for f in fs)
    assert [f.result() for f in fs] == list(range(6))
    assert not e.oq.core.is_open


def test_shutdown_without_waiting_still_finishes(db):
    e = Executor(max_workers=2, tasks=db)
    fs = [e.submit(sleep_return, 0.3, i) for i in range(4)]
    t0 = time.monotonic()
    e.shutdown(wait=False)
    assert time.monotonic() - t0 < 0.3
    assert [f.result(timeout=30) for f in fs] == list(range(4))
    deadline = time.monotonic() + 30
    while e.oq.core.is_open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not e.oq.core.is_open


def test_shutdown_cancel_futures_cancels_queued_tasks(db):
    e = Executor(max_workers=1, tasks=db)
    fs = [e.submit(sleep_return, 0.3, i) for i in range(10)]
    e.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    others = [f for f in fs if not f.cancelled()]
    assert len(cancelled) >= 7 and others
    assert all(f.done() and f.exception() is None for f in others)
    with reader(db) as r:
        statuses = {f.task_id: r.get_result(f.task_id).status for f in fs}
    assert all(statuses[f.task_id] is TaskStatus.CANCELLED for f in cancelled)
    assert all(statuses[f.task_id] is TaskStatus.SUCCEEDED for f in others)


def test_context_manager_and_dropped_executor(db):
    with Executor(max_workers=1, tasks=db) as e:
        f = e.submit(square, 5)
    assert f.result() == 25 and not e.oq.core.is_open
    e2 = Executor(max_workers=1, tasks=db)
    oq = e2.oq
    g = e2.submit(sleep_return, 0.2, "late")
    del e2
    gc.collect()
    assert g.result(timeout=30) == "late"  # dropped executors finish their calls, then close
    deadline = time.monotonic() + 30
    while oq.core.is_open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not oq.core.is_open


# --- construction and bad input --------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, -1])
def test_max_workers_must_be_positive(n, db):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        Executor(max_workers=n, tasks=db)


def test_bad_input_is_named(db, ex):
    with pytest.raises(ConfigError, match="'flavour'"):
        Executor(max_workers=1, tasks=db, flavour="mint")
    with pytest.raises(ConfigError, match="worker"):
        Executor(max_workers=1, tasks=db, worker="cloud")
    with pytest.raises(ConfigError, match="priority"):
        Executor(max_workers=1, tasks=db, priority="high")
    with pytest.raises(TypeError, match="not callable"):
        ex.submit(42)
    with pytest.raises(TypeError, match="not callable"):
        ex.map("fn", [1])


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OMNIQ_CONCURRENCY", raising=False)
    monkeypatch.delenv("OMNIQ_DEFAULT_WORKER", raising=False)
    monkeypatch.delenv("OMNIQ_TASK_QUEUE_TYPE", raising=False)
    with Executor() as e:
        assert e.oq.config.default_worker == "process"
        assert e.oq.config.concurrency == (os.cpu_count() or 1)
        assert e.submit(square, 3).result(timeout=30) == 9
    assert (tmp_path / ".omniq" / "omniq.db").exists()  # the configured default storage
    assert omniq.Executor is Executor


# --- oq.executor() -----------------------------------------------------------------------------------
def test_executor_over_an_open_omniq(db):
    with OmniQ(tasks=db, worker="process", concurrency=2) as oq:
        e = oq.executor(priority=5, retries=1, metadata={"via": "executor"})
        assert e.oq is oq
        assert e.submit(square, 4).result(timeout=30) == 16
        assert list(e.map(square, range(4))) == [0, 1, 4, 9]
        f = e.submit(square, 5)
        e.shutdown()
        assert f.result() == 25
        assert oq.core.is_open  # its shutdown leaves the OmniQ open
        assert oq.submit(square, 6).result(timeout=30) == 36
        with pytest.raises(RuntimeError, match="after shutdown"):
            e.submit(square, 1)
        with oq.executor(queue="elsewhere") as e2:
            g = e2.submit(square, 7)
            assert g.result(timeout=30) == 49
        assert oq.get_result(g.task_id).queue == "elsewhere"
        assert oq.get_result(f.task_id).metadata == {"via": "executor"}


def test_executor_over_a_closed_omniq_or_bad_options(db):
    oq = OmniQ(tasks=db, concurrency=0)
    with pytest.raises(ConfigError, match="not open"):
        oq.executor()
    with oq:
        with pytest.raises(ConfigError, match="'max_workers'"):
            oq.executor(max_workers=3)
        with pytest.raises(ConfigError, match="retries"):
            oq.executor(retries=-1)


def test_executor_over_an_async_omniq(db):
    async def main():
        async with AsyncOmniQ(tasks=db, worker="process", concurrency=2) as aoq:
            e = aoq.executor()
            loop = asyncio.get_running_loop()
            got = await asyncio.gather(*(loop.run_in_executor(e, square, i) for i in range(6)))
            with pytest.raises(KeyError):
                await asyncio.wrap_future(e.submit(raise_key, "k"))
            slow = e.submit(sleep_return, 0.2, "done")
            e.shutdown(wait=False)
            return got, await asyncio.wrap_future(slow)

    got, slow = asyncio.run(main())
    assert got == [0, 1, 4, 9, 16, 25] and slow == "done"


# =====================================================================================================
# CPython's own executor tests against omniq.Executor
# =====================================================================================================
def _find_cpython_suite() -> Path | None:
    """``test_concurrent_futures`` for the running Python: the interpreter's own test package,
    or Debian's ``libpython3.X-testsuite`` under /usr/lib/python3.X/test."""
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for base in (Path(sysconfig.get_paths()["stdlib"]) / "test", Path(f"/usr/lib/python{ver}/test")):
        for p in (base / "test_concurrent_futures.py", base / "test_concurrent_futures"):
            if p.exists():
                return p
    return None


CPYTHON_MODULE = "cpython_test_concurrent_futures"
_SUITE = None if IN_CHILD else _find_cpython_suite()
_SUITE_DIR: str | None = None
_cpy = None
if _SUITE is not None:
    # a copy under its own name on sys.path (children inherit the path), so the suite's
    # functions (mul, sleep_and_raise, ...) are imported by reference in the worker children
    _SUITE_DIR = tempfile.mkdtemp(prefix="omniq-cpython-tests-")
    atexit.register(shutil.rmtree, _SUITE_DIR, ignore_errors=True)
    if _SUITE.is_dir():
        shutil.copytree(_SUITE, Path(_SUITE_DIR) / CPYTHON_MODULE)
    else:
        shutil.copy(_SUITE, Path(_SUITE_DIR) / f"{CPYTHON_MODULE}.py")
    sys.path.insert(0, _SUITE_DIR)
    try:
        _cpy = importlib.import_module(CPYTHON_MODULE)
    except Exception:  # e.g. test.support missing from this interpreter
        _cpy = None


def _suite_part(name: str, module: str) -> type | None:
    if _cpy is None:
        return None
    if _SUITE is not None and _SUITE.is_dir():
        return getattr(importlib.import_module(f"{CPYTHON_MODULE}.{module}"), name, None)
    return getattr(_cpy, name, None)


_db_dir = None if _cpy is None else tempfile.mkdtemp(prefix="omniq-cpython-dbs-")
if _db_dir is not None:
    atexit.register(shutil.rmtree, _db_dir, ignore_errors=True)
_db_n = itertools.count()


class _SuiteExecutor(Executor):
    """``omniq.Executor`` on a fresh SQLite file per instance (the suite makes many)."""

    def __init__(self, max_workers=None, **options):
        options.setdefault("tasks", f"sqlite:///{_db_dir}/ex{next(_db_n)}.db")
        super().__init__(max_workers, **options)


_ExecutorTest = _suite_part("ExecutorTest", "executor")
_WaitTests = _suite_part("WaitTests", "test_wait")
_AsCompletedTests = _suite_part("AsCompletedTests", "test_as_completed")
_ShutdownTest = _suite_part("ExecutorShutdownTest", "test_shutdown")
_util = _cpy if _SUITE is None or not _SUITE.is_dir() else (
    importlib.import_module(f"{CPYTHON_MODULE}.util") if _cpy is not None else None)

if _cpy is None or None in (_ExecutorTest, _WaitTests, _AsCompletedTests, _ShutdownTest, _util):

    @pytest.mark.slow
    def test_cpython_executor_suite():
        pytest.skip("CPython's test_concurrent_futures is not installed for this Python "
                    f"(apt-get install libpython{sys.version_info[0]}.{sys.version_info[1]}-testsuite)")

else:
    _Mixin = type("OmniQExecutorMixin", (_util.ExecutorMixin,), {"executor_type": _SuiteExecutor})
    _Base = _util.BaseTestCase

    # where sleep_and_print lives: the module, or (3.12+) the package's test_shutdown
    _SLEEPER = f"{CPYTHON_MODULE}.test_shutdown" if _SUITE is not None and _SUITE.is_dir() else CPYTHON_MODULE

    def _script(body: str, db: str) -> str:
        return textwrap.dedent(body).format(module=_SLEEPER, db=db)

    @pytest.mark.slow
    class TestCPythonExecutor(_Mixin, _ExecutorTest, _Base):  # type: ignore[misc,valid-type]
        """ExecutorTest: submit, keywords, map (order, exception, timeout, chunksize), the
        shutdown race, stale references, max_workers <= 0, free references."""

    @pytest.mark.slow
    class TestCPythonWait(_Mixin, _WaitTests, _Base):  # type: ignore[misc,valid-type]
        """WaitTests: FIRST_COMPLETED / FIRST_EXCEPTION / ALL_COMPLETED / timeout."""

    @pytest.mark.slow
    class TestCPythonAsCompleted(_Mixin, _AsCompletedTests, _Base):  # type: ignore[misc,valid-type]
        """AsCompletedTests: no timeout, zero timeout, duplicates, freed references, message."""

    @pytest.mark.slow
    class TestCPythonShutdown(_Mixin, _ShutdownTest, _Base):  # type: ignore[misc,valid-type]
        """ExecutorShutdownTest's generic tests. The three that start a fresh interpreter build
        their executor with ``from concurrent.futures import <executor_type>``: here the same
        scripts import ``omniq.Executor`` instead. A process worker's child writes what a task
        prints to its owner's stderr (its stdout carries the protocol), so "apple" is looked for
        in the interpreter's whole output, and nothing else may be written."""

        def _run(self, body):
            from test.support.script_helper import assert_python_ok

            db = f"{_db_dir}/sub{next(_db_n)}.db"
            return assert_python_ok("-c", _script(body, db), PYTHONPATH=_SUITE_DIR)

        def test_interpreter_shutdown(self):
            _rc, out, err = self._run("""\
                from omniq import Executor
                from {module} import sleep_and_print
                t = Executor(5, tasks="sqlite:///{db}")
                t.submit(sleep_and_print, 1.0, "apple")
                """)
            self.assertEqual((out + err).strip(), b"apple")

        def test_submit_after_interpreter_shutdown(self):
            _rc, out, err = self._run("""\
                import atexit
                @atexit.register
                def run_last():
                    try:
                        t.submit(id, None)
                    except RuntimeError:
                        print("runtime-error")
                        raise
                from omniq import Executor
                t = Executor(5, tasks="sqlite:///{db}")
                t.submit(id, 42).result()
                """)
            self.assertIn("RuntimeError: cannot schedule new futures", err.decode())
            self.assertEqual(out.strip(), b"runtime-error")

        def test_hang_gh83386(self):
            _rc, out, err = self._run("""\
                from omniq import Executor
                from {module} import sleep_and_print
                t = Executor(max_workers=3, tasks="sqlite:///{db}")
                t.submit(sleep_and_print, 1.0, "apple")
                t.shutdown(wait=False)
                """)
            self.assertEqual((out + err).strip(), b"apple")


def test_threads_left_behind():
    """No executor of this module leaves a thread running (checked last in this file)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        names = [t.name for t in threading.enumerate() if t.name.startswith("omniq-executor")]
        if not names:
            return
        time.sleep(0.05)
    raise AssertionError(names)
