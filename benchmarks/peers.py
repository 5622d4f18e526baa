"""One small adapter per system under test, all with the same five verbs.

``start()`` starts the pool (2 process workers), ``submit(fn, *args)`` sends one task and
returns a future-like, ``gather(futures, timeout)`` reads the values back in order,
``map(fn, items, timeout, chunksize)`` runs ``fn`` over ``items`` with the system's own bulk
call, and ``stop()`` ends every process the adapter started. ``Peer`` holds what is common
(first result, warm-up, timed gather, submit-then-gather); an adapter only says how its system
does each verb.

Functions reach the workers the way each system ships them: OmniQ, loky, joblib, Dask and
ipyparallel (with cloudpickle) by value when they live in ``__main__``; ProcessPoolExecutor and
huey through the ``workloads.call_dill`` trampoline with ``dill.dumps(fn, recurse=True)``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import workloads

WORKERS = 2
AUTO = "auto"  # map chunksize: the multiprocessing.Pool rule, ceil(n / (4 * workers))


class NotSupported(Exception):
    """The peer has no such operation (joblib has no per-task submit)."""


def auto_chunksize(n: int) -> int:
    return max(1, math.ceil(n / (4 * WORKERS)))


def dill_blob(fn: Callable[..., Any]) -> bytes:
    import dill

    return dill.dumps(fn, recurse=True)


class Peer:
    """Base adapter. Subclasses implement ``_start``, ``_stop``, ``submit``, ``_result`` and
    ``map``; ``gather`` may be overridden where the system has a bulk read."""

    name = ""
    title = ""
    submits = True  # has a per-task submit
    restartable = False  # cheap to start afresh: the "ready" workload repeats it
    map_chunksizes: tuple[int | str | None, ...] = (None,)  # None = the system's default
    note = ""
    ready_note = ""
    modules: tuple[str, ...] = ()  # imported before the start is timed

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started = False

    # --- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float) -> float:
        """Start the pool; seconds until a first trivial task's result is back (the system's
        modules are imported first, outside the timing)."""
        for m in self.modules:
            importlib.import_module(m)
        t0 = time.perf_counter()
        self._start()
        self.started = True
        self.run(workloads.noop, [0], timeout)
        return time.perf_counter() - t0

    def stop(self) -> float:
        t0 = time.perf_counter()
        if self.started:
            self.started = False
            self._stop()
        return time.perf_counter() - t0

    def warm(self, timeout: float) -> set[int]:
        """Make every worker take a task (lazy pools spawn here, not in the timed runs) and
        load what tasks need; returns the worker pids seen."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < WORKERS and time.monotonic() < deadline:
            seen.update(self.run(workloads.pid, [0.05] * (2 * WORKERS), timeout))
        self.run(workloads.noop, range(50), timeout)
        return seen

    # --- tasks ----------------------------------------------------------------------------
    def run(self, fn: Callable[..., Any], items: Sequence[Any], timeout: float) -> list[Any]:
        """``fn(x)`` for each item: submitted one by one, then gathered (map if no submit)."""
        if not self.submits:
            return self.map(fn, items, timeout)
        return self.gather([self.submit(fn, x) for x in items], timeout)

    def gather(self, futures: Sequence[Any], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        return [self._result(f, max(0.001, deadline - time.monotonic())) for f in futures]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotSupported(f"{self.name} has no per-task submit")

    def _result(self, future: Any, timeout: float) -> Any:
        raise NotImplementedError

    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        timeout: float,
        chunksize: int | str | None = None,
    ) -> list[Any]:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------
# OmniQ
# ------------------------------------------------------------------------------------------
class OmniQPeer(Peer):
    restartable = True
    map_chunksizes = (1, AUTO)  # a task per item, or chunks as joblib batches
    modules = (
        "omniq.core",
        "omniq.storage.sqlite",
        "omniq.storage.memory",
        "omniq.workers.process",
    )

    def __init__(self, workdir: Path, name: str, url: Callable[[], str], title: str) -> None:
        super().__init__(workdir)
        self.name, self.title, self._url = name, title, url
        self.oq: Any = None

    def _start(self) -> None:
        from omniq import OmniQ

        self.oq = OmniQ(tasks=self._url(), worker="process", concurrency=WORKERS)
        self.oq.open()

    def _stop(self) -> None:
        self.oq.close()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.oq.submit(fn, *args)

    def _result(self, future: Any, timeout: float) -> Any:
        return future.result(timeout)

    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        timeout: float,
        chunksize: int | str | None = None,
    ) -> list[Any]:
        return self.gather(self.oq.map(fn, items, chunksize=chunksize or 1), timeout)


# ------------------------------------------------------------------------------------------
# concurrent.futures executors: ProcessPoolExecutor + dill, loky
# ------------------------------------------------------------------------------------------
class ExecutorPeer(Peer):
    """A ``concurrent.futures.Executor``; ``_call(fn)`` says what to send for ``fn``."""

    map_chunksizes = (1, AUTO)
    ex: Any = None

    def _call(self, fn: Callable[..., Any]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """(callable, leading args) that run ``fn`` in a worker."""
        return fn, ()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        call, lead = self._call(fn)  # per task, as a loop of submit() calls pays it
        return self.ex.submit(call, *lead, *args)

    def _result(self, future: Any, timeout: float) -> Any:
        return future.result(timeout)

    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        timeout: float,
        chunksize: int | str | None = None,
    ) -> list[Any]:
        call, lead = self._call(fn)
        n = len(items)
        cs = auto_chunksize(n) if chunksize == AUTO else int(chunksize or 1)
        iterables = [repeat(a, n) for a in lead]
        return list(self.ex.map(call, *iterables, items, chunksize=cs, timeout=timeout))


class PPEDill(ExecutorPeer):
    name = "ppe"
    title = "ProcessPoolExecutor (spawn) + dill"
    restartable = True
    modules = ("concurrent.futures", "multiprocessing", "dill")
    note = "fn as dill.dumps(fn, recurse=True) per submit, run by a trampoline"
    ready_note = "spawns workers lazily: the first result waits for one worker only"

    def _call(self, fn: Callable[..., Any]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return workloads.call_dill, (dill_blob(fn),)

    def _start(self) -> None:
        import concurrent.futures as cf
        import multiprocessing as mp

        self.ex = cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("spawn"))

    def _stop(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


class Loky(ExecutorPeer):
    name = "loky"
    title = "loky reusable executor"
    restartable = True
    modules = ("loky",)

    def _start(self) -> None:
        from loky import get_reusable_executor

        self.ex = get_reusable_executor(max_workers=WORKERS, timeout=600)

    def _stop(self) -> None:
        self.ex.shutdown(wait=True, kill_workers=True)


# ------------------------------------------------------------------------------------------
# joblib
# ------------------------------------------------------------------------------------------
class Joblib(Peer):
    name = "joblib"
    title = "joblib Parallel(n_jobs=2), loky backend"
    submits = False
    restartable = True
    modules = ("joblib",)
    note = "no per-task submit: runs go through Parallel (auto batching)"

    def _start(self) -> None:
        from joblib import Parallel

        self.par = Parallel(n_jobs=WORKERS, backend="loky")
        self.par.__enter__()  # keeps one pool for every call

    def _stop(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        self.par.__exit__(None, None, None)
        get_reusable_executor().shutdown(wait=True, kill_workers=True)

    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        timeout: float,
        chunksize: int | str | None = None,
    ) -> list[Any]:
        from joblib import delayed

        return list(self.par(delayed(fn)(x) for x in items))


# ------------------------------------------------------------------------------------------
# Dask distributed
# ------------------------------------------------------------------------------------------
class Dask(Peer):
    name = "dask"
    title = "Dask LocalCluster (2 procs x 1 thread) + Client"
    modules = ("distributed",)

    def _start(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = Client(self.cluster)
        self.client.wait_for_workers(WORKERS, timeout=60)

    def _stop(self) -> None:
        try:
            self.client.close()
        finally:
            self.cluster.close()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def gather(self, futures: Sequence[Any], timeout: float) -> list[Any]:
        from distributed import wait

        wait(list(futures), timeout=timeout)
        return list(self.client.gather(list(futures)))

    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        timeout: float,
        chunksize: int | str | None = None,
    ) -> list[Any]:
        return self.gather(self.client.map(fn, list(items), pure=False), timeout)


# ------------------------------------------------------------------------------------------
# ipyparallel
# ------------------------------------------------------------------------------------------
class IPyParallel(Peer):
    name = "ipyparallel"
    title = "ipyparallel Cluster(n=2), load-balanced view"
    note = "cloudpickle enabled (use_cloudpickle) so __main__ globals travel"
    modules = ("ipyparallel",)

    def _start(self) -> None:
        import ipyparallel as ipp

        self.cluster = ipp.Cluster(n=WORKERS, log_level=logging.ERROR)
        try:
            self.rc = self.cluster.start_and_connect_sync()
            self.rc.wait_for_engines(WORKERS, timeout=60)
            self.rc[:].use_cloudpickle()
            self.view = self.rc.load_balanced_view()
        except BaseException:
            with contextlib.suppress(Exception):
                self.cluster.stop_cluster_sync()
            raise

    def _stop(self) -> None:
        try:
            self.rc.close()
        finally:
            self.cluster.stop_cluster_sync()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.view.apply_async(fn, *args)

    def _result(self, future: Any, timeout: float) -> Any:
        return future.get(timeout)

    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        timeout: float,
        chunksize: int | str | None = None,
    ) -> list[Any]:
        return list(self.view.map_async(fn, list(items)).get(timeout))


# ------------------------------------------------------------------------------------------
# huey (SqliteHuey, consumer with 2 process workers in a subprocess)
# ------------------------------------------------------------------------------------------
HUEY_POLL = ["--delay", "0.001", "--backoff", "1.1", "--max-delay", "0.02"]


class Huey(Peer):
    name = "huey"
    title = "huey SqliteHuey + huey_consumer -k process -w 2"
    note = "consumer polls 1-20 ms (-d 0.001 -m 0.02); fn via dill trampoline"
    proc: subprocess.Popen[bytes] | None = None
    modules = ("huey", "dill")

    def _start(self) -> None:
        db = self.workdir / "huey.db"
        os.environ["OMNIQ_BENCH_HUEY_DB"] = str(db)  # read by _huey_app, here and in the consumer
        import _huey_app

        self.app = importlib.reload(_huey_app)  # fresh SqliteHuey on this run's file
        self.log = open(self.workdir / "huey-consumer.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "huey.bin.huey_consumer",
                "_huey_app.huey",
                "-k",
                "process",
                "-w",
                str(WORKERS),
                "-C",  # no health check
                "-n",  # no periodic tasks
                "-q",  # warnings only: logging two lines per task would slow it down
                *HUEY_POLL,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopping it reaches its worker processes
        )

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # huey's graceful shutdown
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # any worker left in its group
        finally:
            self.log.close()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.app.call_dill(dill_blob(fn), args)

    def _result(self, future: Any, timeout: float) -> Any:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"huey_consumer exited with {self.proc.returncode}")
        return future.get(blocking=True, timeout=timeout, backoff=1.0, max_delay=0.002)

    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        timeout: float,
        chunksize: int | str | None = None,
    ) -> list[Any]:
        blob = dill_blob(fn)
        return self.gather(list(self.app.call_dill.map([(blob, (x,)) for x in items])), timeout)


def all_peers(workdir: Path) -> list[Peer]:
    """Every peer, PPE+dill (the baseline) first."""
    counter = iter(range(1_000_000))

    def sqlite_url() -> str:
        return f"sqlite:///{workdir}/omniq-{next(counter)}.db"

    return [
        PPEDill(workdir),
        OmniQPeer(workdir, "omniq-sqlite", sqlite_url, "OmniQ, SQLite file, process x2"),
        OmniQPeer(workdir, "omniq-memory", lambda: "memory://", "OmniQ, memory://, process x2"),
        Loky(workdir),
        Joblib(workdir),
        Dask(workdir),
        IPyParallel(workdir),
        Huey(workdir),
    ]
