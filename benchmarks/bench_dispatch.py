"""Dispatch on 2 worker slots: slow tasks never wait while a slot idles (issue #20), and quick
tasks keep their throughput. OmniQ on SQLite, memory:// and Redis beside ProcessPoolExecutor,
loky and joblib, in one process run, on the same workloads.

    uv run python benchmarks/bench_dispatch.py [--reps 3] [--only omniq-sqlite,ppe,...]
        [--workloads fresh,after-quick,cli,mixed,quick] [--redis redis://127.0.0.1:6379/0]
        [--json out.json]

Workloads (every pool has 2 process workers; "slow" tasks sleep and return their worker's pid):

- ``fresh``: 2 x 1 s on a pool that has run nothing yet (a new pool per repetition; OmniQ's
  ``open()`` returns with both children up; peers that spawn lazily first run ``pid`` tasks
  until both workers answered). Ideal 1.0 s, bar <= 1.2 s.
- ``after-quick``: 4 x 1 s right after 50 quick tasks on the same pool (the quick tasks, run
  before every repetition, are not timed). Ideal 2.0 s, bar <= 2.3 s.
- ``cli``: ``omniq worker -c 2 --worker process`` in a subprocess, idle for 1 s, then two 1.5 s
  tasks enqueued (one ``map``) from an ``OmniQ(concurrency=0)`` here; timed from the enqueue
  until both results are back here. Ideal 1.5 s, bar <= 2.0 s. SQLite file and Redis only
  (``memory://`` lives in one process).
- ``mixed``: 1,000 quick tasks and 8 x 0.5 s, the slow ones spread evenly among the quick ones,
  submitted one by one, then gathered. Ideal = 8 x 0.5 s / 2 slots + T_quick, where T_quick is
  the best time of the same 1,000 quick tasks alone, submitted the same way on the same pool in
  the same run (row ``mixed: quick alone``; measured alternately with the mixed run): the
  slow tasks' 4 slot-seconds spread over 2 slots, plus what the quick ones cost by themselves.
  Bar <= 1.1 x ideal.
- ``quick``: 2,000 no-ops submitted one by one then gathered, and one ``map`` over 2,000
  (``chunksize=1`` and ``"auto"``); "vs PPE" as in ``run.py`` (speed relative to PPE+dill's
  submit row, or its ``chunksize=1`` map row, with the same kind of function).

Every workload runs twice per system: with functions defined in this script (``__main__``:
shipped by value, as from a notebook) and with importable ones (``workloads.pid`` /
``workloads.noop``: by reference). PPE gets both through the ``dill`` trampoline (see
``peers.py``); joblib has no per-task submit, so its runs go through ``Parallel``. Every figure
is the best of ``--reps`` (3). The table goes to stdout and ``benchmarks/results/dispatch.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import run  # noqa: E402  (puts this directory on PYTHONPATH for every child)
import workloads  # noqa: E402
from peers import AUTO, WORKERS, Joblib, Loky, OmniQPeer, Peer, PPEDill, auto_chunksize  # noqa: E402


# --- the tasks, defined in __main__ as in a notebook: they travel by value ----------------------
def nap(seconds: float) -> int:
    """A slow task: sleeps, then says which worker ran it."""
    time.sleep(seconds)
    return os.getpid()


def quick(x: Any = None) -> Any:
    """A quick task: a no-op returning its argument."""
    return x


#: fn kind -> (slow, quick)
FUNCTIONS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "__main__": (nap, quick),
    "importable": (workloads.pid, workloads.noop),
}

WORKLOADS = {
    "fresh": "(a) 2 x 1 s, fresh pool",
    "after-quick": "(b) 4 x 1 s after 50 quick",
    "cli": "(c) omniq worker -c 2: 2 x 1.5 s",
    "mixed": "(d) 1,000 quick + 8 x 0.5 s",
    "quick": "(e) 2,000 quick",
}
X = "\N{MULTIPLICATION SIGN}"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Sizes:
    reps: int = 3
    warm_quick: int = 50  # (b)
    mixed_quick: int = 1000  # (d)
    mixed_slow: int = 8
    slow_mixed: float = 0.5
    throughput: int = 2000  # (e)
    cli_idle: float = 1.0  # (c): the worker idles this long before each enqueue
    timeout: float = 120.0
    budget: float = 1500.0


@dataclass
class DRow(run.Row):
    """A row of this benchmark: ``run.Row`` plus what the dispatch figures need."""

    fn: str = ""  # "__main__" | "importable"
    ideal: float | None = None  # seconds
    bar: float | None = None  # seconds: best must be <= bar
    bar_label: str = ""
    pids: list[int] = field(default_factory=list)  # distinct workers the slow tasks used, per run
    vs: str = ""  # what `ratio` compares with

    def verdict(self) -> bool | None:
        if self.bar is None or self.best is None:
            return None
        return self.best <= self.bar


# --- systems ------------------------------------------------------------------------------------
class System:
    def __init__(self, name: str, make: Callable[[], Peer], cli_url: Callable[[], str] | None = None) -> None:
        self.name, self.make, self.cli_url = name, make, cli_url
        self.error: str | None = None  # set when the system cannot run here (no Redis)


def systems(workdir: Path, redis_url: str, tag: str) -> list[System]:
    n = iter(range(1_000_000))

    def sqlite_url() -> str:
        return f"sqlite:///{workdir}/omniq-{next(n)}.db"

    def redis() -> str:
        return f"{redis_url}?prefix=omniq-bench-dispatch-{tag}-{next(n)}"

    out = [
        System("ppe", lambda: PPEDill(workdir)),
        System("omniq-sqlite", lambda: OmniQPeer(workdir, "omniq-sqlite", sqlite_url, "OmniQ, SQLite file"),
               cli_url=sqlite_url),
        System("omniq-memory", lambda: OmniQPeer(workdir, "omniq-memory", lambda: "memory://", "OmniQ, memory://")),
        System("omniq-redis", lambda: OmniQPeer(workdir, "omniq-redis", redis, "OmniQ, Redis"), cli_url=redis),
        System("loky", lambda: Loky(workdir)),
        System("joblib", lambda: Joblib(workdir)),
    ]
    try:
        import redis as redis_lib

        redis_lib.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
    except Exception as exc:
        out[3].error = f"n/a: no Redis at {redis_url} ({run.describe(exc)})"
    return out


# --- running tasks on any peer ------------------------------------------------------------------
Call = tuple[Callable[..., Any], tuple[Any, ...]]


def run_calls(peer: Peer, calls: Sequence[Call], timeout: float) -> list[Any]:
    """Each call submitted one by one, then gathered; joblib (no submit): one ``Parallel`` run."""
    if peer.submits:
        return peer.gather([peer.submit(fn, *args) for fn, args in calls], timeout)
    from joblib import delayed

    return list(peer.par(delayed(fn)(*args) for fn, args in calls))  # type: ignore[attr-defined]


def slow_pids(got: list[Any], n: int) -> set[int]:
    if len(got) != n or not all(isinstance(v, int) for v in got):
        raise AssertionError(f"wrong results: {got!r}")
    return set(got)


def both_workers(peer: Peer, timeout: float) -> None:
    """Until both workers have answered (lazy pools spawn here), with ``pid`` tasks."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < WORKERS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(seen)} of {WORKERS} workers answered")
        seen.update(run_calls(peer, [(workloads.pid, (0.05,))] * (2 * WORKERS), timeout))


def start_fresh(peer: Peer, timeout: float) -> None:
    """A pool that has run no task of ours where that can be told: OmniQ's ``open()`` returns
    with its children up; other peers run ``pid`` tasks until both workers exist."""
    if isinstance(peer, OmniQPeer):
        for m in peer.modules:
            __import__(m)
        peer._start()
        peer.started = True
        runner = peer.oq.core.worker.runner
        if len(runner.pids()) != WORKERS:
            raise RuntimeError(f"{len(runner.pids())} children after open()")
    else:
        peer.start(timeout)
        both_workers(peer, timeout)


def pid_note(row: DRow) -> None:
    if row.pids:
        lo = min(row.pids)
        row.note = "; ".join(n for n in (f"slow tasks on {lo} worker{'s' * (lo != 1)}"
                                         + ("" if lo == max(row.pids) else f" (up to {max(row.pids)})"),
                                         row.note) if n)


# --- the workloads ------------------------------------------------------------------------------
def bench_fresh(report: run.Report, system: System, s: Sizes, fn_kind: str) -> None:
    slow = FUNCTIONS[fn_kind][0]
    row = DRow("fresh", system.name, variant=fn_kind, fn=fn_kind, metric="time", count=2, ideal=1.0,
               bar=1.2, bar_label="<= 1.2 s", note="new pool per run")

    def once() -> float:
        peer = system.make()
        try:
            start_fresh(peer, s.timeout)
            t0 = time.perf_counter()
            got = run_calls(peer, [(slow, (1.0,))] * 2, s.timeout)
            dt = time.perf_counter() - t0
        finally:
            peer.stop()
        row.pids.append(len(slow_pids(got, 2)))
        return dt

    run.measure(report, row, once)
    pid_note(row)


def bench_after_quick(report: run.Report, system: System, peer: Peer, s: Sizes, fn_kind: str) -> None:
    slow, fast = FUNCTIONS[fn_kind]
    row = DRow("after-quick", system.name, variant=fn_kind, fn=fn_kind, metric="time", count=4, ideal=2.0,
               bar=2.3, bar_label="<= 2.3 s", note=f"{s.warm_quick} quick tasks just before (not timed)")

    def once() -> float:
        run.checked(run_calls(peer, [(fast, (i,)) for i in range(s.warm_quick)], s.timeout),
                    list(range(s.warm_quick)))
        t0 = time.perf_counter()
        got = run_calls(peer, [(slow, (1.0,))] * 4, s.timeout)
        dt = time.perf_counter() - t0
        row.pids.append(len(slow_pids(got, 4)))
        return dt

    run.measure(report, row, once)
    pid_note(row)


def mixed_calls(s: Sizes, fn_kind: str) -> list[Call]:
    slow, fast = FUNCTIONS[fn_kind]
    calls: list[Call] = [(fast, (i,)) for i in range(s.mixed_quick)]
    step = (s.mixed_quick + s.mixed_slow) // s.mixed_slow
    for k in range(s.mixed_slow):  # evenly spread, none first or last
        calls.insert(k * step + step // 2, (slow, (s.slow_mixed,)))
    return calls


def check_mixed(calls: list[Call], got: list[Any], fast: Callable[..., Any]) -> None:
    if len(got) != len(calls):
        raise AssertionError(f"{len(got)} results for {len(calls)} tasks")
    for (fn, args), v in zip(calls, got):
        if (fn is fast and v != args[0]) or (fn is not fast and not isinstance(v, int)):
            raise AssertionError(f"wrong result {v!r} for {fn.__name__}{args}")


def bench_mixed(report: run.Report, system: System, peer: Peer, s: Sizes, fn_kind: str) -> None:
    fast = FUNCTIONS[fn_kind][1]
    calls = mixed_calls(s, fn_kind)
    alone = [(fast, (i,)) for i in range(s.mixed_quick)]
    slow_part = s.mixed_slow * s.slow_mixed / WORKERS
    quick_row = DRow("mixed", system.name, variant=f"{fn_kind}, quick alone", fn=fn_kind, metric="time",
                     count=len(alone), note=f"T_quick: the {s.mixed_quick:,} quick tasks alone")
    row = DRow("mixed", system.name, variant=fn_kind, fn=fn_kind, metric="time", count=len(calls))
    if report.out_of_time():
        quick_row.error = row.error = "skipped: time budget used up"
    else:
        try:
            for _ in range(s.reps):  # alternately, so drift touches both alike
                t0 = time.perf_counter()
                run.checked(run_calls(peer, alone, s.timeout), list(range(s.mixed_quick)))
                quick_row.runs.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                got = run_calls(peer, calls, s.timeout)
                row.runs.append(time.perf_counter() - t0)
                check_mixed(calls, got, fast)
        except Exception as exc:
            quick_row.error = row.error = run.describe(exc)
            if os.environ.get("OMNIQ_BENCH_DEBUG"):
                traceback.print_exc()
    if quick_row.best is not None and row.runs and not row.error:
        row.ideal = slow_part + quick_row.best
        row.bar = 1.1 * row.ideal
        row.bar_label = f"<= 1.1{X} ideal"
        row.note = (f"ideal = {s.mixed_slow} {X} {s.slow_mixed:g} s / {WORKERS} + T_quick "
                    f"{quick_row.best:.3f} s = {row.ideal:.3f} s")
    report.add(quick_row)
    report.add(row)


def bench_quick(report: run.Report, system: System, peer: Peer, s: Sizes, fn_kind: str) -> None:
    fast = FUNCTIONS[fn_kind][1]
    items = list(range(s.throughput))
    if peer.submits:
        row = DRow("quick", system.name, variant=f"{fn_kind}, submit", fn=fn_kind, count=len(items))

        def submit_once() -> float:
            t0 = time.perf_counter()
            got = peer.gather([peer.submit(fast, x) for x in items], s.timeout)
            dt = time.perf_counter() - t0
            run.checked(got, items)
            return dt

        run.measure(report, row, submit_once)
    for cs in peer.map_chunksizes:
        how = "map" if cs is None else f"map, chunksize={auto_chunksize(len(items)) if cs == AUTO else cs}"
        if cs == AUTO:
            how += " (auto)"
        row = DRow("quick", system.name, variant=f"{fn_kind}, {how}", fn=fn_kind, count=len(items),
                   note=peer.note if cs is None else "")

        def map_once(cs: Any = cs) -> float:
            t0 = time.perf_counter()
            got = peer.map(fast, items, s.timeout, chunksize=cs)
            dt = time.perf_counter() - t0
            run.checked(got, items)
            return dt

        run.measure(report, row, map_once)


@contextlib.contextmanager
def cli_worker(url: str, log: Path) -> Iterator[None]:
    """``omniq worker --tasks URL -c 2 --worker process`` in a session of its own, until it
    says it started (its children are up then); stopped and waited for at the end."""
    from bench_backends import processes

    script = Path(sys.executable).with_name("omniq")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "omniq.cli"]
    cmd += ["worker", "--tasks", url, "-c", str(WORKERS), "--worker", "process"]
    with processes([cmd], log) as (proc,):
        deadline = time.monotonic() + 60
        while f"process x{WORKERS} on" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"omniq worker did not start: {log.read_text(errors='replace')[-300:]}")
            time.sleep(0.02)
        yield


def bench_cli(report: run.Report, system: System, s: Sizes, workdir: Path) -> None:
    assert system.cli_url is not None
    from omniq import OmniQ

    rows = [DRow("cli", system.name, variant=k, fn=k, metric="time", count=2, ideal=1.5, bar=2.0,
                 bar_label="<= 2.0 s", note=f"worker idle {s.cli_idle:g} s before each enqueue")
            for k in FUNCTIONS]
    if report.out_of_time():
        for row in rows:
            row.error = "skipped: time budget used up"
            report.add(row)
        return
    url = system.cli_url()
    log = workdir / f"cli-{system.name}.log"
    try:
        with cli_worker(url, log), OmniQ(tasks=url, concurrency=0) as oq:
            for row in rows:
                slow = FUNCTIONS[row.fn][0]

                stored: list[float] = []

                def once(row: DRow = row, slow: Callable[..., Any] = slow, stored: list[float] = stored) -> float:
                    time.sleep(s.cli_idle)
                    wall, t0 = time.time(), time.perf_counter()
                    handles = oq.map(slow, [1.5, 1.5])
                    got = [h.result(timeout=s.timeout) for h in handles]
                    dt = time.perf_counter() - t0
                    row.pids.append(len(slow_pids(got, 2)))
                    results = [oq.get_result(h.id) for h in handles]
                    stored.append(max(r.finished_at for r in results) - wall)
                    return dt

                run.measure(report, row, once)
                if stored:  # the worker's side: when its results were stored, from the enqueue
                    row.note = f"results stored {min(stored):.3f} s after the enqueue (best); " + row.note
                pid_note(row)
    except Exception as exc:
        for row in rows:
            if not row.runs and not row.error:
                row.error = run.describe(exc)
                report.add(row)
        if os.environ.get("OMNIQ_BENCH_DEBUG"):
            traceback.print_exc()


def bench_system(report: run.Report, system: System, s: Sizes, wanted: set[str], workdir: Path) -> None:
    print(f"\n== {system.name}", flush=True)
    if system.error:
        report.add(DRow("fresh", system.name, metric="time", error=system.error))
        return
    if "fresh" in wanted:
        for kind in FUNCTIONS:
            bench_fresh(report, system, s, kind)
    if wanted & {"after-quick", "mixed", "quick"}:
        peer = system.make()
        try:
            try:
                peer.start(s.timeout)
                peer.warm(s.timeout)
            except Exception as exc:
                report.add(DRow("after-quick", system.name, metric="time", error=f"start failed: {run.describe(exc)}"))
            else:
                for kind in FUNCTIONS:
                    if "after-quick" in wanted:
                        bench_after_quick(report, system, peer, s, kind)
                for kind in FUNCTIONS:
                    if "mixed" in wanted:
                        bench_mixed(report, system, peer, s, kind)
                for kind in FUNCTIONS:
                    if "quick" in wanted:
                        bench_quick(report, system, peer, s, kind)
        finally:
            peer.stop()
    if "cli" in wanted and system.cli_url is not None:
        bench_cli(report, system, s, workdir)


# --- ratios, table, output ----------------------------------------------------------------------
def finish(rows: list[DRow]) -> None:
    """``quick`` rows: speed relative to PPE+dill's submit row, or its chunksize=1 map row, with
    the same kind of function (as run.py's "vs PPE+dill")."""

    def base(r: DRow) -> DRow | None:
        how = "submit" if r.variant.endswith("submit") else "map, chunksize=1"
        return next((b for b in rows if b.workload == "quick" and b.peer == "ppe"
                     and b.variant == f"{r.fn}, {how}"), None)

    for r in rows:
        if r.workload == "quick":
            b = base(r)
            if b is not None and b.speed and r.speed:
                r.ratio, r.vs = r.speed / b.speed, "PPE"
        elif r.ideal and r.best is not None:
            r.ratio, r.vs = r.best / r.ideal, "ideal"


HEADER = ["workload", "system", "function", "result (best)", "runs", "ideal", "ratio", "bar", "notes"]


def cells(r: DRow) -> list[str]:
    variant = r.variant[len(r.fn):].lstrip(", ") if r.fn else r.variant
    ratio = f"{r.ratio:.2f}{X} {r.vs}" if r.ratio is not None else "—"
    verdict = r.verdict()
    bar = "" if not r.bar_label else f"{r.bar_label} " + {True: "PASS", False: "FAIL", None: "n/a"}[verdict]
    return [
        WORKLOADS.get(r.workload, r.workload),
        r.peer + (f" [{variant}]" if variant else ""),
        r.fn or "—",
        run.fmt_value(r),
        "" if r.error or not r.runs else str(len(r.runs)),
        f"{r.ideal:.3f} s" if r.ideal else "—",
        ratio,
        bar,
        r.note,
    ]


def text_table(rows: list[DRow]) -> str:
    table = [HEADER] + [cells(r) for r in rows]
    widths = [min(48, max(len(line[i]) for line in table)) for i in range(len(HEADER))]
    lines = []
    for n, line in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(rows: list[DRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def render(meta: dict[str, Any], rows: list[DRow], command: str) -> tuple[str, str]:
    head = (
        f"`{command}`, run {meta['date']} on {meta['nproc']} CPUs ({meta['cpu']}), Python "
        f"{meta['python']}, omniq {meta['omniq_commit'] or '?'}; load average "
        f"{meta['loadavg_start'][0]:.2f} at start, {meta['loadavg_end'][0]:.2f} at end; "
        f"{meta['elapsed_s']:.0f} s in all."
    )
    expl = (
        f"2 worker slots everywhere; each figure is the best of {meta['sizes']['reps']} runs. "
        "Slow tasks sleep and return their worker's pid (the notes say on how many workers they "
        "ran). `ratio` is best / ideal for the timed workloads, and for (e) speed relative to "
        "PPE+dill with the same kind of function (its submit row, or its chunksize=1 map row). "
        f"(d)'s ideal = 8 {X} 0.5 s / 2 slots + T_quick, T_quick being the same 1,000 quick tasks "
        "alone on the same pool (the `quick alone` row, measured alternately with the mixed "
        "run); T_quick includes the submitting loop, which overlaps the slow tasks in the mixed "
        "run, so a ratio below 1 is possible. (c)'s notes add when the worker had stored both "
        "results: the rest is this process noticing results made in another process. Bars apply to OmniQ; peers get the same verdict for comparison. Functions: "
        "`__main__` = defined in the benchmark script (by value, as from a notebook); "
        "`importable` = `workloads.pid` / `workloads.noop` (by reference). (c) runs on SQLite "
        "and Redis only: `memory://` cannot be shared with a worker process."
    )
    vers = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    md = "\n\n".join([f"### Dispatch on 2 slots (issue #20)\n\n{head}\n\n{expl}", md_table(rows),
                      f"Versions: {vers}.\n"])
    text = "\n".join([head, expl, "", text_table(rows), "", f"Versions: {vers}."])
    return text, md


def main(argv: list[str] | None = None) -> int:
    names = ["ppe", "omniq-sqlite", "omniq-memory", "omniq-redis", "loky", "joblib"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help=f"comma-separated systems ({','.join(names)}); ppe is always run")
    ap.add_argument("--workloads", help=f"comma-separated ({','.join(WORKLOADS)})")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per figure (best kept; default 3)")
    ap.add_argument("--redis", default=DEFAULT_REDIS, help=f"Redis server (default {DEFAULT_REDIS}; a fresh "
                    "prefix per pool, deleted at the end)")
    ap.add_argument("--json", type=Path, help="also write every run as JSON here")
    ap.add_argument("--md", type=Path, default=HERE / "results" / "dispatch.md",
                    help="where the Markdown table goes (default benchmarks/results/dispatch.md)")
    args = ap.parse_args(argv)
    chosen = set(names)
    if args.only:
        chosen = {n.strip() for n in args.only.split(",") if n.strip()} | {"ppe"}
        if chosen - set(names):
            ap.error(f"--only: unknown {', '.join(sorted(chosen - set(names)))}")
    wanted = set(WORKLOADS)
    if args.workloads:
        wanted = {w.strip() for w in args.workloads.split(",") if w.strip()}
        if wanted - set(WORKLOADS):
            ap.error(f"--workloads: unknown {', '.join(sorted(wanted - set(WORKLOADS)))}")
    s = Sizes(reps=max(1, args.reps))
    command = "uv run python benchmarks/bench_dispatch.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))

    meta = run.machine()
    meta["sizes"] = dataclasses.asdict(s)
    print(f"{meta['date']} | {meta['nproc']} CPUs, {meta['cpu']} | Python {meta['python']} | "
          f"best of {s.reps} runs per figure", flush=True)
    report = run.Report(run.Sizes(reps=s.reps, timeout=s.timeout, budget=s.budget))
    workdir = Path(tempfile.mkdtemp(prefix="omniq-dispatch-"))
    tag = uuid.uuid4().hex[:8]
    try:
        for system in systems(workdir, args.redis, tag):
            if system.name in chosen:
                bench_system(report, system, s, wanted, workdir)
    finally:
        left = run.leftover_processes()
        if "omniq-redis" in chosen:
            with contextlib.suppress(Exception):
                from bench_backends import drop_redis_prefix

                drop_redis_prefix(args.redis, f"omniq-bench-dispatch-{tag}-*")
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    rows: list[DRow] = [r for r in report.rows if isinstance(r, DRow)]
    finish(rows)
    order = {w: i for i, w in enumerate(WORKLOADS)}
    rows.sort(key=lambda r: order[r.workload])  # stable: system order kept
    meta["loadavg_end"] = os.getloadavg()
    meta["elapsed_s"] = time.monotonic() - report.t0
    meta["leftover_processes"] = left
    text, md = render(meta, rows, command)
    print("\n" + text)
    if left:
        print("\nWARNING: processes left behind (terminated now):\n  " + "\n  ".join(left))
    out = args.md
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    if args.json:
        data = {"meta": meta, "rows": [dict(dataclasses.asdict(r), best=r.best, value=r.value) for r in rows]}
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
