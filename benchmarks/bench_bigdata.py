"""Big data in notebook globals, arguments and results: OmniQ against its peers, one run.

    uv run python benchmarks/bench_bigdata.py [--quick] [--reps 3] [--no-profile]

The functions below live in this script, which is ``__main__``: like a notebook's, they
cannot be imported by a worker and travel *by value*, together with the module globals they
read (a 40 MB numpy array, a small ``SCALE``). Every system has 2 process workers, started
once per workload set and warmed before anything is timed (every worker answers, then 50
no-ops), exactly as ``run.py`` does; systems run one after another. Workloads (issue #13):

1. big global, map    -- 30 tasks reading ``DATA`` (40 MB): ``oq.map`` vs ``joblib.Parallel``
                         (loky backend) and Dask ``client.map``
2. big global, submit -- the same 30 tasks submitted one by one, then gathered: ``oq.submit``
                         vs loky's reusable executor and ProcessPoolExecutor(spawn) + dill
3. stored bytes       -- OmniQ's fresh SQLite file (+ ``-wal``) after the 30 tasks of (1), and
                         the Redis keys of a fresh prefix (sum of ``MEMORY USAGE``), as
                         multiples of one copy of ``DATA``
4. RSS growth         -- the owning process's peak RSS (VmHWM, reset through
                         ``/proc/self/clear_refs``) during OmniQ's (1)+(2), over the data size;
                         then one cold map per backend (SQLite, memory://, Redis), each in a
                         fresh Python process, whose allocator nothing else has used
5. small submit       -- 2,000 submits of a tiny ``__main__`` function over ``SCALE``, then
                         gathered: OmniQ vs loky vs Dask LocalCluster
6. big results        -- 16 tasks each returning a 25 MB array, read back and touched
                         (``.sum()``) in this process: OmniQ with results on ``file://`` and on
                         SQLite vs ``joblib.Parallel`` and ProcessPoolExecutor, in MB/s (new
                         values every run: OmniQ would store an equal result only once)
7. big argument       -- one 32 MB array passed as an argument to 20 submits: OmniQ's stored
                         bytes on a fresh SQLite file, and time vs loky (joblib, which
                         memory-maps large arguments by itself, for reference)

Timings are the best of ``--reps`` (default 3); every run's time is in the notes, and the bar
column adds OmniQ's first run against the peer's best, since OmniQ stores a blob once and its
workers keep it: the later runs of (1), (2) and (7) find the global / argument stored already.
Every result is checked against a local computation; a wrong one fails the row. A missed
speed bar of OmniQ is profiled afterwards (cProfile, one warm run in a fresh instance: the
calling thread and the instance's event-loop thread) and the top cumulative entries printed.
Writes ``benchmarks/results/bigdata.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
USER_PYTHONPATH = os.environ.get("PYTHONPATH", "")  # as given (e.g. a snapshot of src/), for the record
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
# every peer's children import ``workloads`` (the warm-up tasks); spawned children inherit this
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)

import numpy as np  # noqa: E402

import peers  # noqa: E402
import workloads  # noqa: E402

X = "\N{MULTIPLICATION SIGN}"
MB = 1e6
REDIS_URL = "redis://127.0.0.1:6379/0"
RESULTS = HERE / "results" / "bigdata.md"
COMMAND = "uv run python benchmarks/bench_bigdata.py"

# ------------------------------------------------------------------------------------------
# the notebook: globals and functions of __main__ (shipped by value)
# ------------------------------------------------------------------------------------------
# Filled in by main(), not at import: spawned children of PPE and loky run this module as
# __mp_main__, and must not build 40 MB of random numbers each.
DATA: Any = None  # the big global (40 MB)
SCALE = 3  # the small global
BIG_LEN = 3_125_000  # a big result: 25 MB of float64


def read_global(i: int) -> float:
    return float(DATA[i::1000].sum())


def scaled(x: int) -> int:
    return x * SCALE


def make_big(x: int) -> Any:
    return np.full(BIG_LEN, float(x))


def read_arg(arr: Any, i: int) -> float:
    return float(arr[i::1000].sum())


# ------------------------------------------------------------------------------------------
# sizes, rows, bars
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    data_len: int = 5_000_000  # 40 MB
    n_global: int = 30
    n_small: int = 2000
    n_big: int = 16
    big_len: int = 3_125_000  # 25 MB
    n_arg: int = 20
    arg_len: int = 4_000_000  # 32 MB
    reps: int = 3
    timeout: float = 180.0  # one measurement


FULL = Sizes()
QUICK = Sizes(data_len=1_000_000, n_global=10, n_small=200, n_big=4, big_len=500_000, n_arg=5,
              arg_len=500_000, reps=1, timeout=60.0)

W_MAP = "1 big global, map"
W_SUBMIT = "2 big global, submit"
W_STORED = "3 stored bytes (big global)"
W_RSS = "4 RSS growth, OmniQ (1)+(2)"
W_RSS_FRESH = "4 RSS growth, one cold map, fresh process"
W_SMALL = "5 small __main__ fn, submit"
W_RESULTS = "6 big results"
W_ARG = "7 big argument, submit"
W_ARG_STORED = "7 stored bytes (big argument)"


@dataclass
class Row:
    workload: str
    system: str
    kind: str = "time"  # "time": seconds (runs); "size": a multiple of the data (value)
    runs: list[float] = field(default_factory=list)
    count: int = 0  # tasks, for tasks/s
    mbytes: float = 0.0  # MB moved per run, for MB/s (big results)
    value: float | None = None  # kind "size": multiple of one copy of the data
    note: str = ""
    error: str | None = None
    ratio: float | None = None  # speed vs `vs`
    vs: str = ""
    bars: list[tuple[str, bool | None, str]] = field(default_factory=list)  # label, met, measured

    @property
    def best(self) -> float | None:
        return min(self.runs) if self.runs and not self.error else None

    @property
    def speed(self) -> float | None:
        b = self.best
        return None if not b else 1.0 / b

    def add_note(self, text: str) -> None:
        self.note = "; ".join(n for n in (self.note, text) if n)


@dataclass(frozen=True)
class Bar:
    workload: str
    system: str
    label: str
    vs: str | None = None  # speed ratio against this system >= factor
    factor: float = 1.0
    below: float | None = None  # kind "size": value < below
    primary: bool = True  # its ratio goes in the ratio column


BARS = [
    Bar(W_MAP, "omniq-sqlite", f"≥1.0{X} joblib", vs="joblib"),
    Bar(W_MAP, "omniq-sqlite", "vs dask (no bar)", vs="dask", factor=0.0, primary=False),
    Bar(W_MAP, "omniq-redis", "vs joblib (no bar)", vs="joblib", factor=0.0),
    Bar(W_MAP, "dask", "vs joblib (no bar)", vs="joblib", factor=0.0),
    Bar(W_SUBMIT, "omniq-sqlite", f"≥1.0{X} loky", vs="loky"),
    Bar(W_SUBMIT, "omniq-sqlite", "vs ppe (no bar)", vs="ppe", factor=0.0, primary=False),
    Bar(W_SUBMIT, "ppe", "vs loky (no bar)", vs="loky", factor=0.0),
    Bar(W_STORED, "omniq-sqlite", f"< 1.5{X} data", below=1.5),
    Bar(W_STORED, "omniq-sqlite, closed", f"< 1.5{X} data", below=1.5),
    Bar(W_STORED, "omniq-redis", f"< 1.5{X} data", below=1.5),
    Bar(W_RSS, "omniq-sqlite", f"< 2{X} data", below=2.0),
    Bar(W_RSS_FRESH, "omniq-sqlite", f"< 2{X} data", below=2.0),
    Bar(W_RSS_FRESH, "omniq-memory", f"< 2{X} data", below=2.0),
    Bar(W_RSS_FRESH, "omniq-redis", f"< 2{X} data", below=2.0),
    Bar(W_SMALL, "omniq-sqlite", f"≥1.0{X} loky", vs="loky"),
    Bar(W_SMALL, "omniq-sqlite", f"≥10{X} dask", vs="dask", factor=10.0, primary=False),
    Bar(W_SMALL, "omniq-memory", f"≥1.0{X} loky", vs="loky"),
    Bar(W_SMALL, "omniq-memory", f"≥10{X} dask", vs="dask", factor=10.0, primary=False),
    Bar(W_SMALL, "dask", "vs loky (no bar)", vs="loky", factor=0.0),
    Bar(W_RESULTS, "omniq-file", f"≥1.0{X} joblib", vs="joblib"),
    Bar(W_RESULTS, "omniq-sqlite", f"≥1.0{X} joblib", vs="joblib"),
    Bar(W_RESULTS, "ppe", "vs joblib (no bar)", vs="joblib", factor=0.0),
    Bar(W_ARG, "omniq-sqlite", "vs loky (no bar)", vs="loky", factor=0.0),
    Bar(W_ARG, "joblib", "vs loky (no bar)", vs="loky", factor=0.0),
    Bar(W_ARG_STORED, "omniq-sqlite", f"≈1 copy (< 1.2{X} data)", below=1.2),
    Bar(W_ARG_STORED, "omniq-sqlite, closed", f"≈1 copy (< 1.2{X} data)", below=1.2),
]


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.failures: list[str] = []  # workload sets that failed as a whole

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print("  " + " | ".join(c for c in cells(row)[:4]), flush=True)
        return row

    def find(self, workload: str, system: str) -> Row | None:
        return next((r for r in self.rows if r.workload == workload and r.system == system), None)

    def finish(self) -> None:
        for b in BARS:
            row = self.find(b.workload, b.system)
            if row is None:
                continue
            if b.below is not None:
                met = None if row.value is None else row.value < b.below
                row.bars.append((b.label, met, "" if row.value is None else f"{row.value:.2f}{X}"))
                continue
            other = self.find(b.workload, b.vs or "")
            if other is None or not other.speed or not row.speed:
                row.bars.append((b.label, None, f"no {b.vs} figure"))
                continue
            ratio = row.speed / other.speed
            if b.primary and row.ratio is None:
                row.ratio, row.vs = ratio, b.vs or ""
            cold = ""
            if len(row.runs) > 1 and row.system.startswith("omniq") and other.best:
                cold = f"; first run vs {b.vs}'s best {other.best / row.runs[0]:.2f}{X}"
            if b.factor > 0:
                row.bars.append((b.label, ratio >= b.factor, f"{ratio:.2f}{X}{cold}"))
            elif not b.primary or cold:
                row.bars.append((b.label, None, f"{ratio:.2f}{X}{cold}"))

    def missed(self) -> list[Row]:
        """OmniQ timing rows with a missed speed bar."""
        return [r for r in self.rows if r.system.startswith("omniq") and r.kind == "time"
                and any(met is False for _, met, _ in r.bars)]


# ------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------
def fmt_result(r: Row) -> str:
    if r.error:
        return r.error if len(r.error) <= 80 else r.error[:77] + "..."
    if r.kind == "size":
        return "n/a" if r.value is None else f"{r.value:.2f}{X} data"
    b = r.best
    if b is None:
        return "n/a"
    if r.mbytes:
        return f"{b:.3f} s ({r.mbytes / b:,.0f} MB/s)"
    return f"{b:.3f} s ({r.count / b:,.0f} tasks/s)"


def fmt_bars(r: Row) -> str:
    out = []
    for label, met, measured in r.bars:
        mark = {True: "MET", False: "NOT MET", None: ""}[met]
        out.append(" ".join(p for p in (label, mark, f"({measured})" if measured else "") if p))
    return "; ".join(out)


def cells(r: Row) -> list[str]:
    ratio = f"{r.ratio:.2f}{X} {r.vs}" if r.ratio is not None else "—"
    runs = f"{len(r.runs)}" if r.runs and not r.error else ""
    return [r.workload, r.system, fmt_result(r), runs, ratio, fmt_bars(r), r.note]


HEADER = ["workload", "system", "result (best)", "runs", "ratio (speed)", "bar", "notes"]


def text_table(rows: list[Row]) -> str:
    table = [HEADER] + [cells(r) for r in rows]
    widths = [min(48, max(len(line[i]) for line in table)) for i in range(len(HEADER))]
    lines = []
    for n, line in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# measuring helpers
# ------------------------------------------------------------------------------------------
def describe(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def checked(got: Sequence[Any], want: Sequence[Any]) -> None:
    got, want = list(got), list(want)
    if got != want:
        bad = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), -1)
        raise AssertionError(f"wrong results (first bad index {bad}, {len(got)} of {len(want)})")


def big_items(s: Sizes, rep: int) -> list[int]:
    """The arguments of ``make_big`` in run ``rep``: new values every run, so no run finds its
    results stored already (OmniQ stores a blob once per digest: equal results would be free)."""
    return [1000 * rep + i for i in range(s.n_big)]


def touched(arrays: Sequence[Any], items: Sequence[int], length: int) -> None:
    """Read every big result in this process (``.sum()``) and check it against ``np.full``."""
    if len(arrays) != len(items):
        raise AssertionError(f"{len(arrays)} results, wanted {len(items)}")
    for i, (a, x) in enumerate(zip(arrays, items)):
        if a.shape != (length,) or float(a.sum()) != float(x) * length:
            raise AssertionError(f"wrong big result at index {i}")


def measure(report: Report, row: Row, reps: int, once: Callable[[int], float],
            limit: float | None = None) -> Row:
    """``once(rep)`` returns seconds; ``reps`` runs (fewer when a run exceeds ``limit``)."""
    try:
        for rep in range(reps):
            row.runs.append(once(rep))
            if limit is not None and row.runs[-1] > limit and rep + 1 < reps:
                row.add_note(f"{len(row.runs)} run(s) only: a run took over {limit:.0f} s")
                break
        if len(row.runs) > 1:
            row.add_note("runs " + ", ".join(f"{r:.3f}" for r in row.runs) + " s")
    except Exception as exc:
        row.error = describe(exc)
        if os.environ.get("OMNIQ_BENCH_DEBUG"):
            traceback.print_exc()
    return report.add(row)


def status_kb(field_name: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if this kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def sqlite_bytes(db: Path) -> tuple[int, str]:
    """The database, its WAL and the blob files OmniQ keeps beside it (``<db>-blobs/``)."""
    sizes = {s: (db.parent / (db.name + s)).stat().st_size if (db.parent / (db.name + s)).exists() else 0
             for s in ("", "-wal", "-shm")}
    blobs = sum(f.stat().st_size for f in (db.parent / (db.name + "-blobs")).glob("*/*") if f.is_file())
    return (sizes[""] + sizes["-wal"] + blobs,
            f"db {sizes[''] / MB:.1f} MB + wal {sizes['-wal'] / MB:.1f} MB + blob files {blobs / MB:.1f} MB")


def redis_bytes(client: Any, prefix: str) -> tuple[int, int]:
    """(sum of MEMORY USAGE over the prefix's keys, number of keys)."""
    total = n = 0
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        total += client.memory_usage(key, samples=0) or 0
        n += 1
    return total, n


def redis_cleanup(client: Any, prefix: str) -> int:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i:i + 500])
    return len(keys)


# ------------------------------------------------------------------------------------------
# OmniQ, as a user writes it
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def omniq(tasks: str, results: str | None = None, timeout: float = 120.0) -> Iterator[Any]:
    """``with OmniQ(...) as oq``, warmed like the peers: every worker answers, then 50 no-ops."""
    from omniq import OmniQ

    with OmniQ(tasks=tasks, results=results, worker="process", concurrency=peers.WORKERS) as oq:
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < peers.WORKERS and time.monotonic() < deadline:
            seen.update(oq.gather([oq.submit(workloads.pid, 0.05) for _ in range(2 * peers.WORKERS)], timeout))
        oq.gather(oq.map(workloads.noop, range(50)), timeout)
        yield oq


def omniq_map(oq: Any, fn: Callable[..., Any], items: Sequence[Any], timeout: float) -> list[Any]:
    return oq.gather(oq.map(fn, items), timeout)


def omniq_submit(oq: Any, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], timeout: float) -> list[Any]:
    handles = [oq.submit(fn, *args) for args in calls]
    return oq.gather(handles, timeout)


# ------------------------------------------------------------------------------------------
# the workload sets
# ------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, s: Sizes, workdir: Path, report: Report) -> None:
        self.s, self.workdir, self.r = s, workdir, report
        self.data_bytes = s.data_len * 8
        self.arg_bytes = s.arg_len * 8
        self.want_global = [float(DATA[i::1000].sum()) for i in range(s.n_global)]
        self.want_small = [x * SCALE for x in range(s.n_small)]
        self.want_arg = [float(ARG[i::1000].sum()) for i in range(s.n_arg)]
        self._n = 0

    def path(self, stem: str) -> Path:
        self._n += 1
        return self.workdir / f"{stem}-{self._n}"

    def timed(self, run: Callable[[], list[Any]], want: list[Any] | None = None,
              check: Callable[[list[Any]], None] | None = None) -> float:
        t0 = time.perf_counter()
        got = run()
        if check is not None:
            check(got)  # touches the data: part of the timing
        dt_ = time.perf_counter() - t0
        if want is not None:
            checked(got, want)
        return dt_

    # --- OmniQ ---------------------------------------------------------------------------
    def omniq_global(self) -> None:
        """(1) + (2) on a fresh SQLite file, with (3) its size and (4) this process's RSS."""
        s, t = self.s, self.s.timeout
        print("\n== OmniQ, SQLite file: big global (map, submit), stored bytes, RSS", flush=True)
        db = self.path("global").with_suffix(".db")
        items = list(range(s.n_global))
        calls = [(i,) for i in items]
        stored: list[tuple[int, str]] = []
        with omniq(f"sqlite:///{db}") as oq:
            can_reset = reset_peak_rss()
            rss0 = status_kb("VmRSS") or 0
            hwm0 = status_kb("VmHWM") or 0

            def map_once(rep: int) -> float:
                dt_ = self.timed(lambda: omniq_map(oq, read_global, items, t), self.want_global)
                if rep == 0:
                    stored.append(sqlite_bytes(db))
                    peaks.append(status_kb("VmHWM") or 0)  # the first (cold) map
                return dt_

            peaks: list[int] = []
            m = measure(self.r, Row(W_MAP, "omniq-sqlite", count=s.n_global), s.reps, map_once)
            m.add_note("oq.map, chunksize=1")
            hwm_map = status_kb("VmHWM") or 0
            rss_map = status_kb("VmRSS") or 0
            can_reset = reset_peak_rss() and can_reset
            measure(self.r, Row(W_SUBMIT, "omniq-sqlite", count=s.n_global), s.reps,
                    lambda rep: self.timed(lambda: omniq_submit(oq, read_global, calls, t), self.want_global))
            hwm_submit = status_kb("VmHWM") or 0
            rss1 = status_kb("VmRSS") or 0
            oq.flush()
            stored_all = sqlite_bytes(db)
        stored_closed = sqlite_bytes(db)
        rss = Row(W_RSS, "omniq-sqlite", kind="size")
        hwm1 = max(hwm_map, hwm_submit)
        if can_reset and hwm1:

            def mb(kb: int) -> str:
                return f"{kb * 1024 / MB:.0f} MB"

            rss.value = (hwm1 - rss0) * 1024 / self.data_bytes
            rss.note = (f"VmHWM reset before (1) at RSS {mb(rss0)}; peak during (1) {mb(hwm_map)}"
                        + (f" (first, cold map: {mb(peaks[0])})" if peaks else "")
                        + f", RSS after (1) {mb(rss_map)}; peak during (2) {mb(hwm_submit)}, RSS after (2) "
                        f"{mb(rss1)}; data {self.data_bytes / MB:.0f} MB")
        else:
            rss.value = max(0, hwm1 - max(rss0, hwm0)) * 1024 / self.data_bytes
            rss.note = "VmHWM could not be reset: growth of the process's lifetime peak only"
        self.r.add(rss)
        row = Row(W_STORED, "omniq-sqlite", kind="size")
        if stored:
            row.value = stored[0][0] / self.data_bytes
            row.note = (f"instance open, fresh SQLite file after the first {s.n_global} tasks: {stored[0][1]}; "
                        f"after all {2 * s.reps * s.n_global} tasks of (1)+(2) "
                        f"{stored_all[0] / self.data_bytes:.2f}{X} ({stored_all[1]})")
        else:
            row.error = "no figure: the first map run failed"
        self.r.add(row)
        self.r.add(Row(W_STORED, "omniq-sqlite, closed", kind="size", value=stored_closed[0] / self.data_bytes,
                       note=f"the same file after close, all {2 * s.reps * s.n_global} tasks: {stored_closed[1]}"))

    def omniq_redis(self) -> None:
        """(1) on Redis, and (3) the bytes its fresh prefix holds."""
        import redis

        s, t = self.s, self.s.timeout
        print("\n== OmniQ, Redis: big global (map), stored bytes", flush=True)
        prefix = f"omniq-bench-bigdata-{uuid.uuid4().hex[:10]}"
        client = redis.Redis.from_url(REDIS_URL)
        items = list(range(s.n_global))
        stored: list[tuple[int, int, int]] = []
        try:
            used0 = client.info("memory")["used_memory"]
            with omniq(f"{REDIS_URL}?prefix={prefix}") as oq:

                def map_once(rep: int) -> float:
                    dt_ = self.timed(lambda: omniq_map(oq, read_global, items, t), self.want_global)
                    if rep == 0:
                        oq.flush()
                        total, n = redis_bytes(client, prefix)
                        stored.append((total, n, client.info("memory")["used_memory"] - used0))
                    return dt_

                row = measure(self.r, Row(W_MAP, "omniq-redis", count=s.n_global), s.reps, map_once)
                row.add_note("oq.map, chunksize=1")
            srow = Row(W_STORED, "omniq-redis", kind="size")
            if stored:
                total, n, used = stored[0]
                srow.value = total / self.data_bytes
                srow.note = (f"fresh prefix after the first {s.n_global} tasks (+ warm-up): "
                             f"MEMORY USAGE of its {n} keys {total / MB:.1f} MB; "
                             f"used_memory delta {used / MB:.1f} MB")
            else:
                srow.error = "no figure: the first map run failed"
            self.r.add(srow)
        finally:
            with contextlib.suppress(Exception):
                gone = redis_cleanup(client, prefix)
                print(f"  (deleted {gone} keys of Redis prefix {prefix})", flush=True)
            client.close()

    @contextlib.contextmanager
    def failing_as(self, workload: str, system: str) -> Iterator[None]:
        """A set that fails outside a measurement (start, close) still gets its row."""
        try:
            yield
        except Exception as exc:
            self.r.add(Row(workload, system, error=f"set failed: {describe(exc)}"))
            if os.environ.get("OMNIQ_BENCH_DEBUG"):
                traceback.print_exc()

    def omniq_small(self) -> None:
        s, t = self.s, self.s.timeout
        items = [(x,) for x in range(s.n_small)]
        for name, url in (("omniq-sqlite", f"sqlite:///{self.path('small')}.db"), ("omniq-memory", "memory://")):
            print(f"\n== OmniQ, {name}: {s.n_small:,} submits of a small __main__ function", flush=True)
            with self.failing_as(W_SMALL, name), omniq(url) as oq:
                loops: list[float] = []

                def once(rep: int, oq: Any = oq, loops: list[float] = loops) -> float:
                    t0 = time.perf_counter()
                    handles = [oq.submit(scaled, *a) for a in items]
                    loops.append(time.perf_counter() - t0)
                    got = oq.gather(handles, t)
                    dt_ = time.perf_counter() - t0
                    checked(got, self.want_small)
                    return dt_

                row = measure(self.r, Row(W_SMALL, name, count=s.n_small), s.reps, once)
                if loops:
                    row.add_note(f"submit loop {min(loops) * 1e6 / s.n_small:.0f} µs/task")

    def omniq_results(self) -> None:
        s, t = self.s, self.s.timeout
        for name, results in (("omniq-file", "file"), ("omniq-sqlite", None)):
            db = self.path("results").with_suffix(".db")
            res = f"file://{self.path('results-files')}" if results else None
            where = "results on file://<tmp dir>, tasks in SQLite" if res else "tasks and results in SQLite"
            print(f"\n== OmniQ, {where}: {s.n_big} results of {s.big_len * 8 / MB:.0f} MB", flush=True)
            with self.failing_as(W_RESULTS, name), omniq(f"sqlite:///{db}", res) as oq:
                row = measure(self.r, Row(W_RESULTS, name, count=s.n_big, mbytes=s.n_big * s.big_len * 8 / MB),
                              s.reps, lambda rep: self.timed(lambda: omniq_map(oq, make_big, big_items(s, rep), t),
                                                             check=lambda got: touched(got, big_items(s, rep), s.big_len)))
                row.add_note(where + "; oq.map")

    def omniq_arg(self) -> None:
        s, t = self.s, self.s.timeout
        db = self.path("arg").with_suffix(".db")
        calls = [(ARG, i) for i in range(s.n_arg)]
        stored: list[tuple[int, str]] = []
        print(f"\n== OmniQ, SQLite file: a {self.arg_bytes / MB:.0f} MB argument to {s.n_arg} submits", flush=True)
        with omniq(f"sqlite:///{db}") as oq:

            def once(rep: int) -> float:
                dt_ = self.timed(lambda: omniq_submit(oq, read_arg, calls, t), self.want_arg)
                if rep == 0:
                    oq.flush()
                    stored.append(sqlite_bytes(db))
                return dt_

            measure(self.r, Row(W_ARG, "omniq-sqlite", count=s.n_arg), s.reps, once)
            oq.flush()
            stored_all = sqlite_bytes(db)
        stored_closed = sqlite_bytes(db)
        row = Row(W_ARG_STORED, "omniq-sqlite", kind="size")
        if stored:
            row.value = stored[0][0] / self.arg_bytes
            row.note = (f"instance open, fresh SQLite file after the first {s.n_arg} submits: {stored[0][1]}; "
                        f"after all {s.reps * s.n_arg}: {stored_all[0] / self.arg_bytes:.2f}{X} ({stored_all[1]})")
        else:
            row.error = "no figure: the first run failed"
        self.r.add(row)
        self.r.add(Row(W_ARG_STORED, "omniq-sqlite, closed", kind="size", value=stored_closed[0] / self.arg_bytes,
                       note=f"the same file after close, all {s.reps * s.n_arg} submits: {stored_closed[1]}"))

    # --- peers ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def peer(self, p: peers.Peer) -> Iterator[peers.Peer | None]:
        print(f"\n== {p.name}: {p.title}", flush=True)
        try:
            p.start(self.s.timeout)
            p.warm(self.s.timeout)
        except Exception as exc:
            with contextlib.suppress(Exception):
                p.stop()
            print(f"  {p.name} failed to start: {describe(exc)}", flush=True)
            yield None
            return
        try:
            yield p
        finally:
            p.stop()

    def peer_joblib(self) -> None:
        s, t = self.s, self.s.timeout
        with self.peer(peers.Joblib(self.workdir)) as p:
            if p is None:
                return
            items = list(range(s.n_global))
            measure(self.r, Row(W_MAP, "joblib", count=s.n_global, note="Parallel(n_jobs=2)(delayed(fn)(i) ...)"),
                    s.reps, lambda rep: self.timed(lambda: p.map(read_global, items, t), self.want_global))
            measure(self.r, Row(W_RESULTS, "joblib", count=s.n_big, mbytes=s.n_big * s.big_len * 8 / MB),
                    s.reps, lambda rep: self.timed(lambda: p.map(make_big, big_items(s, rep), t),
                                                   check=lambda got: touched(got, big_items(s, rep), s.big_len)))
            from joblib import delayed

            measure(self.r, Row(W_ARG, "joblib", count=s.n_arg, note="Parallel, no submit; memory-maps "
                                "large arguments itself (reference)"),
                    s.reps, lambda rep: self.timed(lambda: p.par(delayed(read_arg)(ARG, i) for i in range(s.n_arg)),
                                                   self.want_arg))

    def peer_loky(self) -> None:
        s, t = self.s, self.s.timeout
        with self.peer(peers.Loky(self.workdir)) as p:
            if p is None:
                return
            calls = [(i,) for i in range(s.n_global)]
            measure(self.r, Row(W_SUBMIT, "loky", count=s.n_global, note="get_reusable_executor(2).submit"),
                    s.reps, lambda rep: self.timed(lambda: p.gather([p.submit(read_global, *a) for a in calls], t),
                                                   self.want_global))
            small = list(range(s.n_small))
            loops: list[float] = []

            def small_once(rep: int) -> float:
                t0 = time.perf_counter()
                futures = [p.submit(scaled, x) for x in small]
                loops.append(time.perf_counter() - t0)
                got = p.gather(futures, t)
                dt_ = time.perf_counter() - t0
                checked(got, self.want_small)
                return dt_

            row = measure(self.r, Row(W_SMALL, "loky", count=s.n_small), s.reps, small_once)
            if loops:
                row.add_note(f"submit loop {min(loops) * 1e6 / s.n_small:.0f} µs/task")
            measure(self.r, Row(W_ARG, "loky", count=s.n_arg, note="executor.submit(fn, arr, i)"),
                    s.reps, lambda rep: self.timed(
                        lambda: p.gather([p.submit(read_arg, ARG, i) for i in range(s.n_arg)], t), self.want_arg))

    def peer_ppe(self) -> None:
        s, t = self.s, self.s.timeout
        with self.peer(peers.PPEDill(self.workdir)) as p:
            if p is None:
                return
            calls = [(i,) for i in range(s.n_global)]
            measure(self.r, Row(W_SUBMIT, "ppe", count=s.n_global, note="spawn; dill.dumps(fn, recurse=True) per submit"),
                    s.reps, lambda rep: self.timed(lambda: p.gather([p.submit(read_global, *a) for a in calls], t),
                                                   self.want_global))
            measure(self.r, Row(W_RESULTS, "ppe", count=s.n_big, mbytes=s.n_big * s.big_len * 8 / MB,
                                note="executor.map, chunksize=1"),
                    s.reps, lambda rep: self.timed(lambda: p.map(make_big, big_items(s, rep), t, chunksize=1),
                                                   check=lambda got: touched(got, big_items(s, rep), s.big_len)))

    def peer_dask(self) -> None:
        s, t = self.s, self.s.timeout
        with self.peer(peers.Dask(self.workdir)) as p:
            if p is None:
                return
            small = list(range(s.n_small))
            loops: list[float] = []

            def small_once(rep: int) -> float:
                t0 = time.perf_counter()
                futures = [p.submit(scaled, x) for x in small]
                loops.append(time.perf_counter() - t0)
                got = p.gather(futures, t)
                dt_ = time.perf_counter() - t0
                checked(got, self.want_small)
                return dt_

            row = measure(self.r, Row(W_SMALL, "dask", count=s.n_small, note="client.submit(fn, x, pure=False)"),
                          s.reps, small_once)
            if loops:
                row.add_note(f"submit loop {min(loops) * 1e6 / s.n_small:.0f} µs/task")
            items = list(range(s.n_global))
            measure(self.r, Row(W_MAP, "dask", count=s.n_global, note="client.map(fn, items, pure=False)"),
                    s.reps, lambda rep: self.timed(lambda: p.map(read_global, items, t), self.want_global),
                    limit=20.0)

    # --- profiles of missed bars -----------------------------------------------------------
    def profile(self, row: Row, top: int = 15) -> str:
        """One warm run of ``row``'s OmniQ workload in a fresh instance, under cProfile: the
        calling thread, and the instance's event-loop thread (profiler switched on and off in
        that thread through the instance's portal). Worker children are not profiled."""
        s, t = self.s, self.s.timeout
        url = "memory://" if row.system == "omniq-memory" else f"sqlite:///{self.path('profile')}.db"
        results = f"file://{self.path('profile-files')}" if row.system == "omniq-file" else None
        body: dict[str, Callable[[Any], Any]] = {
            W_MAP: lambda oq: omniq_map(oq, read_global, list(range(s.n_global)), t),
            W_SUBMIT: lambda oq: omniq_submit(oq, read_global, [(i,) for i in range(s.n_global)], t),
            W_SMALL: lambda oq: omniq_submit(oq, scaled, [(x,) for x in range(s.n_small)], t),
            W_RESULTS: lambda oq: [a.sum() for a in omniq_map(oq, make_big, big_items(s, next(runs)), t)],
            W_ARG: lambda oq: omniq_submit(oq, read_arg, [(ARG, i) for i in range(s.n_arg)], t),
        }
        runs = iter(range(100, 200))  # big results: new values in each run
        run = body.get(row.workload)
        if run is None:
            return ""
        with omniq(url, results) as oq:
            run(oq)  # warm: blobs stored and fetched, shells cached, as in the best runs
            text, elapsed = profiled(oq, lambda: run(oq), top)
            threads = sorted(th.name for th in threading.enumerate())
        return (f"profile of {row.workload} / {row.system}: one warm run, {elapsed:.3f} s under cProfile "
                f"(best timed run {row.best:.3f} s; threads here: {', '.join(threads)})\n{text}")

    def rss_probes(self, quick: bool) -> None:
        """(4) again, each in a fresh Python process (an allocator nothing has used yet, as in a
        new kernel): the peak RSS growth of one cold map over the global, per backend."""
        print("\n== RSS of one cold map, each in a fresh process", flush=True)
        for kind in ("sqlite", "memory", "redis"):
            row = Row(W_RSS_FRESH, f"omniq-{kind}", kind="size")
            try:
                got = memory_probe_run(kind, quick, trace=False)
                row.value = got["growth_kb"] * 1024 / self.data_bytes
                row.note = (f"peak {got['hwm_kb'] * 1024 / MB:.0f} MB vs {got['rss0_kb'] * 1024 / MB:.0f} MB "
                            f"before, {got['rss1_kb'] * 1024 / MB:.0f} MB after; map {got['elapsed']:.3f} s")
            except Exception as exc:
                row.error = describe(exc)
            self.r.add(row)

    def profile_memory(self, row: Row, quick: bool, top: int = 15) -> str:
        """A cold map in a fresh process under tracemalloc (Python and numpy allocations;
        SQLite's and Redis's client buffers are not traced) and cProfile."""
        got = memory_probe_run("sqlite", quick, trace=True, top=top)
        return (f"memory of {row.workload}: one cold oq.map of {self.s.n_global} tasks over the "
                f"{self.data_bytes / MB:.0f} MB global, SQLite, in a fresh process ({got['elapsed']:.3f} s "
                f"under cProfile + tracemalloc): peak RSS growth {got['growth_kb'] * 1024 / MB:.0f} MB "
                f"({got['growth_kb'] * 1024 / self.data_bytes:.2f}{X} data), tracemalloc's peak "
                f"{got['traced_peak'] / MB:.0f} MB\n{got['profile']}")


def memory_probe_run(kind: str, quick: bool, trace: bool, top: int = 15) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", kind, *(["--quick"] if quick else []),
            *(["--trace", str(top)] if trace else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe ({kind}) exited with {proc.returncode}: {tail}")
    return json.loads(lines[-1])


def memory_probe(kind: str, s: Sizes, trace_top: int | None) -> int:
    """The child side of ``rss_probes``: one cold map, then one JSON line on stdout."""
    global DATA
    DATA = np.random.default_rng(13).random(s.data_len)
    want = [float(DATA[i::1000].sum()) for i in range(s.n_global)]
    workdir = Path(tempfile.mkdtemp(prefix="omniq-bigdata-probe-"))
    prefix = f"omniq-bench-bigdata-probe-{uuid.uuid4().hex[:10]}"
    url = {"sqlite": f"sqlite:///{workdir}/probe.db", "memory": "memory://",
           "redis": f"{REDIS_URL}?prefix={prefix}"}[kind]
    out: dict[str, Any] = {}
    try:
        with omniq(url) as oq:
            if not reset_peak_rss():
                raise RuntimeError("VmHWM cannot be reset on this kernel")
            rss0 = status_kb("VmRSS") or 0
            items = list(range(s.n_global))
            if trace_top is not None:
                import tracemalloc

                tracemalloc.start()
                try:
                    text, elapsed = profiled(oq, lambda: checked(omniq_map(oq, read_global, items, s.timeout), want),
                                             trace_top)
                    oq.flush()
                    out["traced_peak"] = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                out["profile"] = text
            else:
                t0 = time.perf_counter()
                checked(omniq_map(oq, read_global, items, s.timeout), want)
                elapsed = time.perf_counter() - t0
                oq.flush()
            hwm = status_kb("VmHWM") or 0
            out.update(rss0_kb=rss0, hwm_kb=hwm, rss1_kb=status_kb("VmRSS") or 0, growth_kb=hwm - rss0,
                       elapsed=elapsed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if kind == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            with contextlib.suppress(Exception):
                redis_cleanup(client, prefix)
            client.close()
    print(json.dumps(out))
    return 0


def profiled(oq: Any, run: Callable[[], Any], top: int) -> tuple[str, float]:
    """cProfile of ``run()`` on the calling thread and, switched on and off in that thread
    through the instance's portal, on the instance's event-loop thread (worker children are
    other processes: not profiled). The loop thread's list keeps OmniQ's own functions (the
    event loop's plumbing would fill it otherwise)."""
    main, loop = cProfile.Profile(), cProfile.Profile()
    portal = oq._thread  # the instance's loop thread (read-only use of a private name)
    portal.call(loop.enable)
    t0 = time.perf_counter()
    main.enable()
    try:
        run()
    finally:
        main.disable()
        elapsed = time.perf_counter() - t0
        portal.call(loop.disable)
    out = io.StringIO()
    for label, prof, restrict in (("calling thread", main, ()), ("OmniQ loop thread, omniq functions", loop,
                                                                  (r"/omniq/",))):
        out.write(f"\n-- {label}: top {top} by cumulative time --\n")
        st = pstats.Stats(prof, stream=out).sort_stats("cumulative")
        st.print_stats(*restrict, top)
    text = out.getvalue()
    import omniq

    for prefix in sorted({str(HERE.parent / "src") + "/", str(HERE) + "/", os.path.dirname(os.__file__) + "/",
                          str(Path(omniq.__file__).resolve().parent.parent) + "/",
                          *(p + "/" for p in sys.path if p.endswith("site-packages"))}, key=len, reverse=True):
        text = text.replace(prefix, "")
    return text, elapsed


# ------------------------------------------------------------------------------------------
# environment and output
# ------------------------------------------------------------------------------------------
def run_cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("omniq", "numpy", "loky", "joblib", "distributed", "dill", "redis"):
        with contextlib.suppress(Exception):
            versions[pkg] = metadata.version(pkg)
    root = HERE.parent
    rev = run_cmd(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = run_cmd(["git", "-C", str(root), "status", "--porcelain", "--", "src"])
    import omniq

    pkg = Path(omniq.__file__).resolve().parent
    if pkg.is_relative_to(root):
        source = (f"OmniQ imported from this work tree ({pkg.relative_to(root)}), commit {rev}"
                  + (" with uncommitted changes under src/ at the start" if dirty else ", src/ clean at the start") + ".")
    else:
        source = (f"OmniQ imported from {pkg}, not this work tree (whose HEAD is {rev}); worker children "
                  "inherit PYTHONPATH, so they run the same code.")
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": run_cmd(["nproc"]) or str(os.cpu_count()),
        "cpu": cpu or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": rev + (" + uncommitted src changes" if dirty else ""),
        "omniq_source": source,
        "versions": versions,
        "load0": os.getloadavg()[0],
    }


def leftover_processes() -> list[str]:
    import psutil

    left = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.cmdline())
            if "resource_tracker" in cmd or "semaphore_tracker" in cmd:
                continue
            left.append(f"{p.pid} {cmd[:120]}")
            p.terminate()
    return left


def render(meta: dict[str, Any], s: Sizes, rows: list[Row], profiles: list[str], quick: bool,
           failures: Sequence[str] = ()) -> tuple[str, str]:
    head = (f"Run {meta['date']} on {meta['nproc']} CPUs ({meta['cpu']}), Python {meta['python']} "
            f"({meta['platform']}); load average {meta['load0']:.2f} at "
            f"start, {meta['load1']:.2f} at end; {meta['elapsed']:.0f} s in all.")
    sizes = (f"Sizes{' (--quick)' if quick else ''}: DATA {s.data_len * 8 / MB:.0f} MB global, {s.n_global} tasks; "
             f"{s.n_small:,} small submits; {s.n_big} results of {s.big_len * 8 / MB:.0f} MB; "
             f"a {s.arg_len * 8 / MB:.0f} MB argument to {s.n_arg} submits. Timings best of {s.reps}. "
             "Every system: 2 process workers, started once per workload set and warmed before timing; "
             "the functions live in the benchmark's __main__ and travel by value. The ratio is speed "
             "relative to the named peer in this run (> 1 = OmniQ faster).")
    vers = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    cmd = (f"PYTHONPATH={USER_PYTHONPATH} " if USER_PYTHONPATH else "") + COMMAND + (" --quick" if quick else "")
    md_parts = [f"# Big data in globals, arguments and results (issue #13)\n\n{head}\n\n"
                f"Command: `{cmd}`\n\n{meta['omniq_source']}\n\n{sizes}", md_table(rows), f"Versions: {vers}."]
    if failures:
        md_parts.append("Sets that failed as a whole: " + "; ".join(failures) + ".")
    if profiles:
        md_parts.append("## Profiles of missed bars\n\n" + "\n".join(f"```\n{p.rstrip()}\n```" for p in profiles))
    md = "\n\n".join(md_parts) + "\n"
    text = "\n".join([head, f"Command: {cmd}", meta["omniq_source"], sizes, "", text_table(rows), "",
                      f"Versions: {vers}.", *(["Sets that failed: " + "; ".join(failures)] if failures else [])])
    return text, md


def main(argv: list[str] | None = None) -> int:
    global DATA, ARG, BIG_LEN
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one run each (a smoke test)")
    ap.add_argument("--reps", type=int, help="runs per timing (best kept; default 3)")
    ap.add_argument("--no-profile", action="store_true", help="do not profile missed bars")
    ap.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    ap.add_argument("--memory-probe", choices=("sqlite", "memory", "redis"), help=argparse.SUPPRESS)
    ap.add_argument("--trace", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    s = QUICK if args.quick else FULL
    if args.reps:
        import dataclasses

        s = dataclasses.replace(s, reps=max(1, args.reps))
    if args.memory_probe:
        return memory_probe(args.memory_probe, s, args.trace)
    warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
    warnings.filterwarnings("ignore", message=".*[Ll]arge object.*")

    meta = machine()
    print(f"{meta['date']} | {meta['nproc']} CPUs, {meta['cpu']} | Python {meta['python']} | best of {s.reps}")
    rng = np.random.default_rng(13)
    DATA = rng.random(s.data_len)
    ARG = rng.random(s.arg_len)
    BIG_LEN = s.big_len
    report = Report()
    workdir = Path(tempfile.mkdtemp(prefix="omniq-bigdata-"))
    t0 = time.monotonic()
    profiles: list[str] = []
    try:
        bench = Bench(s, workdir, report)
        # OmniQ's big-global set first: its RSS is measured before any other pool has run here
        steps: list[Callable[[], None]] = [
            bench.omniq_global, bench.peer_joblib, bench.peer_loky, bench.peer_ppe, bench.peer_dask,
            bench.omniq_redis, bench.omniq_small, bench.omniq_results, bench.omniq_arg,
            lambda: bench.rss_probes(args.quick),
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:  # a whole set failed: say so and go on
                failure = f"{getattr(step, '__name__', 'a step')} failed: {describe(exc)}"
                print("  " + failure, flush=True)
                report.failures.append(failure)
                if os.environ.get("OMNIQ_BENCH_DEBUG"):
                    traceback.print_exc()
        report.finish()
        if not args.no_profile:
            rss = next((r for r in (report.find(W_RSS, "omniq-sqlite"), report.find(W_RSS_FRESH, "omniq-sqlite"))
                        if r is not None and any(met is False for _, met, _ in r.bars)), None)
            if rss is not None:
                print(f"\n== memory of {rss.workload} (bar missed)", flush=True)
                try:
                    text = bench.profile_memory(rss, args.quick)
                except Exception as exc:
                    text = f"memory profile failed: {describe(exc)}"
                print(text, flush=True)
                profiles.append(text)
            for row in report.missed():
                print(f"\n== profiling {row.workload} / {row.system} (bar missed)", flush=True)
                try:
                    text = bench.profile(row)
                except Exception as exc:
                    text = f"profile of {row.workload} / {row.system} failed: {describe(exc)}"
                if text:
                    print(text, flush=True)
                    profiles.append(text)
    finally:
        left = leftover_processes()
        shutil.rmtree(workdir, ignore_errors=True)
    meta["load1"] = os.getloadavg()[0]
    meta["elapsed"] = time.monotonic() - t0
    order = [W_MAP, W_SUBMIT, W_STORED, W_RSS, W_RSS_FRESH, W_SMALL, W_RESULTS, W_ARG, W_ARG_STORED]
    rows = sorted(report.rows, key=lambda r: order.index(r.workload))
    text, md = render(meta, s, rows, profiles, args.quick, report.failures)
    print("\n" + text)
    if left:
        print("\nWARNING: processes left behind (terminated now):\n  " + "\n  ".join(left))
    if not args.no_write:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(md)
        print(f"\nwrote {RESULTS}")
    return 0


ARG: Any = None  # the big argument (32 MB), filled in by main()

if __name__ == "__main__":
    sys.exit(main())
