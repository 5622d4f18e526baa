"""OmniQ against its peers, in one process run, on the same workloads; prints ratios.

    uv run python benchmarks/run.py [--quick] [--only omniq-sqlite,ppe,...]
                                    [--workloads noop,map,...] [--reps 3] [--json out.json]

Peers run one after another (each pool started, measured, stopped before the next starts, so
no idle pool polls while another is timed). Every figure is the best of ``--reps`` runs
(default 3). Ratios are speeds relative to ProcessPoolExecutor+dill measured in the same run
(> 1 = faster than it), because on a shared machine absolute times drift and ratios hold.
Writes ``benchmarks/results/latest.json`` and ``latest.md`` (a table ready for the README).
See ``benchmarks/README.md`` for what each workload means.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
# Every peer's children (spawned pools, Dask nannies, ipyparallel engines, huey_consumer) must
# import ``workloads``; spawned children of this process inherit the environment.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p
)

import peers  # noqa: E402
import workloads  # noqa: E402
from peers import AUTO, NotSupported, Peer, auto_chunksize  # noqa: E402

# A notebook-style global and a function over it, defined in __main__ (this script), so it
# cannot be imported by reference in a worker: it must travel by value with the global.
OFFSET = 1000


def add_offset(x: int) -> int:
    return x + OFFSET


# ------------------------------------------------------------------------------------------
# sizes, rows, targets
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    noop: int = 2000
    sleep: int = 200
    map: int = 2000
    enqueue: int = 10_000
    sweep: tuple[int, int] = (100, 100)
    reps: int = 3
    timeout: float = 120.0  # one measurement
    budget: float = 540.0  # whole run: later measurements are skipped past it


FULL = Sizes()
QUICK = Sizes(
    noop=500, sleep=100, map=500, enqueue=2000, sweep=(50, 50), timeout=60.0, budget=165.0
)

WORKLOADS = {
    "ready": "pool ready: start the pool, until a first trivial task's result is back",
    "noop": "submit/noop: N no-ops submitted one by one, then all results read back",
    "closure": "same, with a __main__ function over a notebook-style global (ships by value)",
    "sleep": "N tasks of 10 ms sleep, submitted then gathered (ideal N x 10 ms / 2 workers)",
    "map": "one map call over N no-ops, results read back",
    "map-closure": "one map call over N items with the __main__ function (ships by value)",
    "enqueue": "enqueue-only into SQLite (no workers): single durable calls vs one batch",
    "sweep": "oq.sweep over a 2-D grid: time until the call returns",
}
PEER_WORKLOADS = ("noop", "closure", "sleep", "map", "map-closure")
BASELINE = "ppe"
X = "\N{MULTIPLICATION SIGN}"
BASELINE_VARIANT = {"map": "chunksize=1", "map-closure": "chunksize=1"}
REFERENCE = {  # enqueue variant -> the raw sqlite3 row it is compared with
    "enqueue() x N": "single-row INSERT x N",
    "task() x N": "single-row INSERT x N",
    "map() + flush()": "executemany, 1 txn",
}


@dataclass
class Row:
    workload: str
    peer: str
    variant: str = ""
    metric: str = "rate"  # "rate": count / best seconds, higher is better; "time": seconds
    count: int = 0
    runs: list[float] = field(default_factory=list)  # seconds, one per repetition
    error: str | None = None
    note: str = ""
    ratio: float | None = None  # speed relative to PPE+dill (> 1 = faster)
    targets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> float | None:
        return min(self.runs) if self.runs and not self.error else None

    @property
    def value(self) -> float | None:
        b = self.best
        if b is None:
            return None
        return self.count / b if self.metric == "rate" else b

    @property
    def speed(self) -> float | None:
        """Higher is better, whatever the metric."""
        v = self.value
        if v is None or v == 0:
            return None
        return v if self.metric == "rate" else 1.0 / v


@dataclass(frozen=True)
class Target:
    workload: str
    peer: str
    label: str
    baseline: str | None = None  # a peer: speed ratio >= factor
    factor: float = 1.0
    at_least: float | None = None  # absolute: rate >= this (tasks/s)
    at_most: float | None = None  # absolute: seconds <= this
    variant: str = ""
    later: bool = False  # a goal for a later issue, shown but not the current bar


TARGETS: list[Target] = []
for _p in ("omniq-sqlite", "omniq-memory"):
    TARGETS += [
        Target("noop", _p, f"≥10{X} dask", baseline="dask", factor=10),
        Target("noop", _p, f"≥10{X} ipyparallel", baseline="ipyparallel", factor=10),
        Target("sleep", _p, "within 2% of PPE", baseline=BASELINE, factor=0.98),
        Target("ready", _p, "< 0.3 s", at_most=0.3),
    ]
TARGETS += [
    Target("noop", "omniq-sqlite", f"≥0.7{X} PPE", baseline=BASELINE, factor=0.7),
    Target("noop", "omniq-sqlite", f"≥1.0{X} PPE", baseline=BASELINE, factor=1.0, later=True),
    Target("noop", "omniq-memory", f"≥1.0{X} PPE", baseline=BASELINE, factor=1.0),
    Target("noop", "omniq-memory", f"≥1.5{X} PPE", baseline=BASELINE, factor=1.5, later=True),
    Target("map", "omniq-sqlite", f"≥0.5{X} joblib", baseline="joblib", factor=0.5, variant="chunksize=auto"),
    Target("enqueue", "omniq-sqlite", "≥20,000/s", at_least=20_000, variant="enqueue() x N"),
    Target("enqueue", "omniq-sqlite", "≥200,000/s", at_least=200_000, variant="map() + flush()"),
]


class Report:
    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.rows: list[Row] = []
        self.t0 = time.monotonic()

    def out_of_time(self) -> bool:
        return time.monotonic() - self.t0 > self.sizes.budget

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        c = cells(row, md=False)
        print("  " + " | ".join([*c[:4], c[-1]]), flush=True)
        return row

    def find(self, workload: str, peer: str, variant: str | None = None) -> Row | None:
        for r in self.rows:
            if (
                r.workload == workload
                and r.peer == peer
                and (variant is None or r.variant == variant or r.variant.startswith(f"{variant} ("))
            ):
                return r
        return None

    def finish(self) -> None:
        """Ratios vs PPE+dill and targets."""
        for r in self.rows:
            ppe = self.find(r.workload, BASELINE, BASELINE_VARIANT.get(r.workload, ""))
            if (
                ppe is not None
                and ppe.speed
                and r.speed
                and r.workload in (*PEER_WORKLOADS, "ready")
            ):
                r.ratio = r.speed / ppe.speed
        for r in self.rows:  # enqueue: how close to what SQLite itself does
            ref = REFERENCE.get(r.variant)
            raw = self.find("enqueue", "sqlite3 (reference)", ref) if ref else None
            if r.workload == "enqueue" and raw is not None and raw.value and r.value:
                r.note = "; ".join(
                    n for n in (r.note, f"{100 * r.value / raw.value:.0f}% of sqlite3 {ref}") if n
                )
        for t in TARGETS:
            row = self.find(t.workload, t.peer, t.variant if t.variant else None)
            if row is not None:
                verdict, measured = self.check(t, row)
                row.targets.append(
                    {"target": t.label, "later": t.later, "pass": verdict, "measured": measured}
                )

    def check(self, t: Target, r: Row) -> tuple[bool | None, str]:
        """(pass, what was measured); pass is None when it cannot be told."""
        if r.value is None:
            return None, ""
        if t.baseline is not None:
            variant = BASELINE_VARIANT.get(t.workload, "") if t.baseline == BASELINE else None
            base = self.find(t.workload, t.baseline, variant)
            if base is None or not base.speed or not r.speed:
                return None, f"no {t.baseline} figure"
            ratio = r.speed / base.speed
            return ratio >= t.factor, f"{ratio:.2f}{X}"
        if t.at_least is not None:
            return r.value >= t.at_least, f"{r.value:,.0f}/s"
        if t.at_most is not None:
            return r.value <= t.at_most, f"{r.value:.3f} s"
        return None, ""


# ------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------
def fmt_value(r: Row) -> str:
    if r.error:
        return r.error if len(r.error) <= 90 else r.error[:87] + "..."
    v = r.value
    if v is None:
        return "n/a"
    if r.metric == "rate":
        return f"{v:,.0f} tasks/s ({r.best:.3f} s)"
    return f"{v:.3f} s"


def fmt_targets(r: Row) -> str:
    out = []
    for t in r.targets:
        mark = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
        later = "later: " if t["later"] else ""
        out.append(
            f"{later}{t['target']} {mark}" + (f" ({t['measured']})" if t["measured"] else "")
        )
    return "; ".join(out)


def cells(r: Row, md: bool) -> list[str]:
    peer = r.peer + (f" [{r.variant}]" if r.variant else "")
    runs = "" if r.error or not r.runs else f"{len(r.runs)}"
    ratio = f"{r.ratio:.2f}{X}" if r.ratio is not None else "—"
    return [r.workload, peer, fmt_value(r), runs, ratio, fmt_targets(r), r.note]


HEADER = ["workload", "peer", "result (best)", "runs", "vs PPE+dill", "target", "notes"]


def text_table(rows: list[Row]) -> str:
    table = [HEADER] + [cells(r, md=False) for r in rows]
    widths = [min(60, max(len(line[i]) for line in table)) for i in range(len(HEADER))]
    lines = []
    for n, line in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(rows: list[Row]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(esc(c) for c in cells(r, md=True)) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# measuring
# ------------------------------------------------------------------------------------------
def describe(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def measure(report: Report, row: Row, once: Callable[[], float]) -> Row:
    """Run ``once`` (returns elapsed seconds) ``reps`` times; errors go into the row."""
    if report.out_of_time():
        row.error = "skipped: time budget used up"
        return report.add(row)
    try:
        for _ in range(report.sizes.reps):
            row.runs.append(once())
    except NotSupported as exc:
        row.error = f"n/a: {exc}"
    except Exception as exc:
        row.error = describe(exc)
        if os.environ.get("OMNIQ_BENCH_DEBUG"):
            traceback.print_exc()
    return report.add(row)


def checked(got: list[Any], want: list[Any]) -> None:
    if list(got) != list(want):
        bad = (
            next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
            if len(got) == len(want)
            else -1
        )
        raise AssertionError(
            f"wrong results (first bad index {bad}, {len(got)} of {len(want)} results)"
        )


@dataclass
class Job:
    row: Row
    once: Callable[[], float]
    after: Callable[[], None] | None = None  # adds notes once the runs are in


def peer_jobs(peer: Peer, s: Sizes, wanted: set[str]) -> list[Job]:
    """The timed measurements for one started peer, in order."""
    jobs: list[Job] = []
    noop_items = list(range(s.noop))
    for workload, fn, want in (
        ("noop", workloads.noop, noop_items),
        ("closure", add_offset, [x + OFFSET for x in noop_items]),
    ):
        if workload in wanted:
            jobs.append(submit_job(peer, s, workload, fn, noop_items, want))
    sleep_items = list(range(s.sleep))
    if "sleep" in wanted:

        def sleep_once() -> float:
            t0 = time.perf_counter()
            checked(peer.run(workloads.sleep10, sleep_items, s.timeout), sleep_items)
            return time.perf_counter() - t0

        note = f"ideal {s.sleep * 0.01 / peers.WORKERS:.2f} s" + (
            "" if peer.submits else "; via map"
        )
        jobs.append(
            Job(Row("sleep", peer.name, metric="time", count=s.sleep, note=note), sleep_once)
        )
    map_items = list(range(s.map))
    for workload, fn, want in (
        ("map", workloads.noop, map_items),
        ("map-closure", add_offset, [x + OFFSET for x in map_items]),
    ):
        if workload not in wanted:
            continue
        for cs in peer.map_chunksizes:
            variant = (
                "" if cs is None else f"chunksize=auto ({auto_chunksize(s.map)})" if cs == AUTO
                else f"chunksize={cs}"
            )

            def map_once(
                fn: Callable[..., Any] = fn, want: list[Any] = want, cs: Any = cs
            ) -> float:
                t0 = time.perf_counter()
                checked(peer.map(fn, map_items, s.timeout, chunksize=cs), want)
                return time.perf_counter() - t0

            row = Row(
                workload,
                peer.name,
                variant=variant,
                count=s.map,
                note=peer.note if cs is None else "",
            )
            jobs.append(Job(row, map_once))
    return jobs


def submit_job(
    peer: Peer, s: Sizes, workload: str, fn: Callable[..., Any], items: list[Any], want: list[Any]
) -> Job:
    """Submit one by one, then gather; the note gets the submit loop's cost per task."""
    row = Row(workload, peer.name, count=len(items), note=peer.note)
    loops: list[float] = []

    def once() -> float:
        t0 = time.perf_counter()
        futures = [peer.submit(fn, x) for x in items]
        t1 = time.perf_counter()
        got = peer.gather(futures, s.timeout)
        t2 = time.perf_counter()
        checked(got, want)
        loops.append(t1 - t0)
        return t2 - t0

    def after() -> None:
        if loops:
            loop = f"submit loop {min(loops) * 1e6 / len(items):.0f} µs/task"
            row.note = "; ".join(n for n in (loop, row.note) if n)

    return Job(row, once, after)


def bench_peer(peer: Peer, report: Report, wanted: set[str]) -> None:
    """Start the peer, run its measurements, stop it; then time fresh starts if cheap."""
    s = report.sizes
    print(f"\n== {peer.name}: {peer.title}", flush=True)
    if report.out_of_time():
        report.add(Row("ready", peer.name, metric="time", error="skipped: time budget used up"))
        return
    try:
        first = peer.start(s.timeout)
        pids = peer.warm(s.timeout)
    except Exception as exc:
        with contextlib.suppress(Exception):
            peer.stop()
        report.add(Row("ready", peer.name, metric="time", error=f"start failed: {describe(exc)}"))
        if os.environ.get("OMNIQ_BENCH_DEBUG"):
            traceback.print_exc()
        return
    timed_out = False
    try:
        for job in peer_jobs(peer, s, wanted):
            if timed_out:  # its pool may still be busy: later figures would mean nothing
                job.row.error = "skipped: an earlier measurement of this peer timed out"
                report.add(job.row)
                continue
            measure(report, job.row, job.once)
            if job.after is not None:
                job.after()
            timed_out = bool(job.row.error and "Timeout" in job.row.error)
    finally:
        stopped = peer.stop()
    notes = [f"stop {stopped:.2f} s", peer.ready_note]
    if len(pids) != peers.WORKERS:
        notes.append(f"{len(pids)} worker pids seen in warm-up")
    ready = Row("ready", peer.name, metric="time", count=1)
    if peer.restartable and "ready" in wanted and not timed_out:
        notes.append(f"first start in this process {first:.3f} s")

        def ready_once() -> float:
            try:
                return peer.start(s.timeout)
            finally:
                peer.stop()

        ready.note = "; ".join(n for n in notes if n)
        measure(report, ready, ready_once)
    else:
        ready.runs = [first]
        ready.note = "; ".join(n for n in ["1 start, imports excluded", *notes] if n)
        report.add(ready)


# ------------------------------------------------------------------------------------------
# enqueue-only and sweep (no worker pool)
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def omniq_enqueue_only(workdir: Path, url: str | None = None) -> Iterator[Any]:
    from omniq import OmniQ

    oq = OmniQ(tasks=url or fresh_sqlite(workdir, "omniq"), worker="process", concurrency=0)
    oq.open()
    try:
        yield oq
    finally:
        oq.close()


_fresh = iter(range(1_000_000))


def fresh_sqlite(workdir: Path, stem: str, url: bool = True) -> str:
    path = workdir / f"{stem}-enq-{next(_fresh)}.db"
    return f"sqlite:///{path}" if url else str(path)


def timed_with(
    setup: Callable[[], contextlib.AbstractContextManager[Any]], body: Callable[[Any], None]
) -> Callable[[], float]:
    """A measurement whose set-up (opening a store) and tear-down stay outside the timing."""

    def once() -> float:
        with setup() as ctx:
            t0 = time.perf_counter()
            body(ctx)
            return time.perf_counter() - t0

    return once


def bench_enqueue(report: Report, workdir: Path, names: set[str]) -> None:
    n = report.sizes.enqueue
    print(f"\n== enqueue-only into SQLite, {n:,} tasks", flush=True)
    noop = workloads.noop
    if "omniq-sqlite" in names:

        def single(oq: Any) -> None:
            for i in range(n):
                oq.enqueue(noop, args=(i,))

        def batched(oq: Any) -> None:
            oq.map(noop, range(n))
            oq.flush()

        for variant, body in (("enqueue() x N", single), ("map() + flush()", batched)):
            row = Row("enqueue", "omniq-sqlite", variant=variant, count=n, note="concurrency=0")
            measure(report, row, timed_with(lambda: omniq_enqueue_only(workdir), body))
    if "huey" in names:

        @contextlib.contextmanager
        def huey_app() -> Iterator[Any]:
            import _huey_app

            yield _huey_app.make(fresh_sqlite(workdir, "huey", url=False))[2]

        def huey_single(task: Any) -> None:
            for i in range(n):
                task(i)

        measure(
            report,
            Row(
                "enqueue",
                "huey",
                variant="task() x N",
                count=n,
                note="SqliteHuey defaults (WAL; synchronous FULL)",
            ),
            timed_with(huey_app, huey_single),
        )

    @contextlib.contextmanager
    def raw() -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(fresh_sqlite(workdir, "raw", url=False), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, payload BLOB)")
        try:
            yield conn
        finally:
            conn.close()

    payload = b"x" * 64
    sql = "INSERT INTO t (id, payload) VALUES (?, ?)"

    def raw_single(conn: sqlite3.Connection) -> None:
        for i in range(n):
            conn.execute(sql, (f"{i:026d}", payload))  # autocommit: one transaction each

    def raw_batch(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")
        conn.executemany(sql, ((f"{i:026d}", payload) for i in range(n)))
        conn.execute("COMMIT")

    for variant, raw_body in (
        ("single-row INSERT x N", raw_single),
        ("executemany, 1 txn", raw_batch),
    ):
        measure(
            report,
            Row(
                "enqueue",
                "sqlite3 (reference)",
                variant=variant,
                count=n,
                note="WAL, synchronous=NORMAL (as OmniQ), 64-byte payload",
            ),
            timed_with(raw, raw_body),
        )


def bench_sweep(report: Report, workdir: Path, names: set[str]) -> None:
    a, b = report.sizes.sweep
    print(f"\n== sweep of {a}x{b} points (concurrency=0)", flush=True)
    for name, url in (("omniq-sqlite", None), ("omniq-memory", "memory://")):
        if name in names:
            sweep_row(report, workdir, name, url, a, b)


def sweep_row(report: Report, workdir: Path, name: str, url: str | None, a: int, b: int) -> None:
    row = Row("sweep", name, count=a * b, metric="time", note="return time; concurrency=0")
    try:
        import omniq.sweep  # noqa: F401
    except Exception as exc:
        row.error = f"n/a: omniq.sweep unavailable ({describe(exc)})"
        report.add(row)
        return
    flushes: list[float] = []
    runs = iter(range(1000))

    def once() -> float:
        with omniq_enqueue_only(workdir, url) as oq:
            grid = {"a": range(a), "b": range(b)}
            t0 = time.perf_counter()
            oq.sweep(workloads.point, grid=grid, name=f"bench-{next(runs)}")
            t1 = time.perf_counter()
            oq.flush()
            flushes.append(time.perf_counter() - t1)
            return t1 - t0

    measure(report, row, once)
    if flushes and not row.error:
        row.note += f"; then flush() {min(flushes):.3f} s"


# ------------------------------------------------------------------------------------------
# environment, processes, output
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
    for pkg in ("omniq", "dill", "loky", "joblib", "distributed", "ipyparallel", "huey"):
        with contextlib.suppress(Exception):
            versions[pkg] = metadata.version(pkg)
    root = HERE.parent
    rev = run_cmd(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = run_cmd(["git", "-C", str(root), "status", "--porcelain", "--", "src"])
    return {
        "date": run_cmd(["date", "-u"]) or dt.datetime.now(dt.timezone.utc).isoformat(),
        "nproc": run_cmd(["nproc"]) or str(os.cpu_count()),
        "cpu": cpu or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omniq_commit": rev + (" + uncommitted src changes" if dirty else ""),
        "versions": versions,
        "loadavg_start": os.getloadavg(),
    }


def leftover_processes() -> list[str]:
    """Children of this process still alive (the pools must have ended them). Trackers that
    multiprocessing / loky keep until this process exits are listed apart and left alone."""
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


def render(meta: dict[str, Any], rows: list[Row]) -> tuple[str, str]:
    s = meta["sizes"]
    head = (
        f"Run {meta['date']} on {meta['nproc']} CPUs ({meta['cpu']}), Python {meta['python']}, "
        f"omniq {meta['omniq_commit'] or '?'}; load average {meta['loadavg_start'][0]:.2f} at start, "
        f"{meta['loadavg_end'][0]:.2f} at end; {meta['elapsed_s']:.0f} s in all."
    )
    expl = (
        f"Each figure is the best of {s['reps']} runs ({'quick' if meta['quick'] else 'full'} sizes: "
        f"noop/closure {s['noop']:,}, sleep {s['sleep']}, map {s['map']:,}, enqueue {s['enqueue']:,}, "
        f"sweep {s['sweep'][0]}x{s['sweep'][1]}). 'vs PPE+dill' is speed relative to "
        "ProcessPoolExecutor(spawn)+dill in the same run (> 1 = faster). Every pool has 2 process "
        "workers started and warmed before timing."
    )
    vers = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    md = "\n\n".join(
        [f"### OmniQ vs peers\n\n{head}\n\n{expl}", md_table(rows), f"Versions: {vers}.\n"]
    )
    text = "\n".join([head, expl, "", text_table(rows), "", f"Versions: {vers}."])
    return text, md


def main(argv: list[str] | None = None) -> int:
    names = [p.name for p in peers.all_peers(Path("."))]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (under 3 minutes)")
    ap.add_argument(
        "--only",
        help=f"comma-separated peers ({','.join(names)}); ppe is always run as the baseline",
    )
    ap.add_argument("--workloads", help=f"comma-separated workloads ({','.join(WORKLOADS)})")
    ap.add_argument("--reps", type=int, help="repetitions per figure (best kept; default 3)")
    ap.add_argument("--json", type=Path, help="also write the JSON results here")
    args = ap.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    if args.reps:
        sizes = dataclasses.replace(sizes, reps=max(1, args.reps))
    chosen = set(names)
    if args.only:
        chosen = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = chosen - set(names) - {"sqlite3"}
        if unknown:
            ap.error(
                f"--only: unknown peer(s) {', '.join(sorted(unknown))}; choose from {', '.join(names)}"
            )
        if BASELINE not in chosen:
            print(f"(adding {BASELINE}: it is the baseline of every ratio)")
            chosen.add(BASELINE)
    wanted = set(WORKLOADS)
    if args.workloads:
        wanted = {w.strip() for w in args.workloads.split(",") if w.strip()}
        unknown = wanted - set(WORKLOADS)
        if unknown:
            ap.error(
                f"--workloads: unknown {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}"
            )

    meta = machine()
    meta["quick"] = args.quick
    meta["sizes"] = dataclasses.asdict(sizes)
    print(
        f"{meta['date']} | {meta['nproc']} CPUs, {meta['cpu']} | Python {meta['python']} | "
        f"best of {sizes.reps} runs per figure"
    )
    report = Report(sizes)
    workdir = Path(tempfile.mkdtemp(prefix="omniq-bench-"))
    try:
        # enqueue-only and sweep need no pool: measured first, in a process no peer has touched
        # yet (Dask and ipyparallel leave threads behind that would share the GIL with them)
        if "enqueue" in wanted:
            bench_enqueue(report, workdir, chosen)
        if "sweep" in wanted:
            bench_sweep(report, workdir, chosen)
        for peer in peers.all_peers(workdir):
            if peer.name in chosen and wanted & {"ready", *PEER_WORKLOADS}:
                bench_peer(peer, report, wanted)
    finally:
        left = leftover_processes()
        shutil.rmtree(workdir, ignore_errors=True)
    report.finish()
    order = {w: i for i, w in enumerate(WORKLOADS)}
    rows = sorted(report.rows, key=lambda r: order[r.workload])  # stable: peer order kept
    meta["loadavg_end"] = os.getloadavg()
    meta["elapsed_s"] = time.monotonic() - report.t0
    meta["leftover_processes"] = left
    text, md = render(meta, rows)
    print("\n" + text)
    if left:
        print("\nWARNING: processes left behind (terminated now):\n  " + "\n  ".join(left))
    data = {
        "meta": meta,
        "workloads": WORKLOADS,
        "rows": [dict(dataclasses.asdict(r), best=r.best, value=r.value) for r in rows],
    }
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (out_dir / "latest.md").write_text(md)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"\nwrote {out_dir / 'latest.json'} and {out_dir / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
