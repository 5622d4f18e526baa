"""2,000 quick tasks while the submitting thread computes in Python, one run.

    uv run python benchmarks/bench_busy.py [--reps 3]

A notebook often goes on computing after it submits: a pure-Python loop holds the GIL, and
every other thread of the process (OmniQ's event loop and SQLite connection threads, the
standard library's queue feeder and result threads) must win it back after each blocking call,
waiting up to the switch interval (5 ms) each time. This measures the wall time from the first
submit until every future is done, with the main thread spinning a Python loop meanwhile, for
``ProcessPoolExecutor`` (spawn) and ``omniq.Executor`` on a SQLite file and on ``memory://``,
each with 2 process workers, started and warmed first, each round in a fresh process, the
systems' order rotated from round to round. Writes ``benchmarks/results/busy.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import multiprocessing as mp
import operator
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_executor import warm

N = 2000
OUT = Path(__file__).resolve().parent / "results" / "busy.md"


def busy_round(ex) -> None:
    fs = [ex.submit(operator.mul, i, 2) for i in range(N)]
    x = 0
    while not fs[-1].done() or not all(f.done() for f in fs):
        for _ in range(20_000):  # the notebook computing in Python meanwhile
            x += 1
    assert fs[-1].result() == 2 * (N - 1)


MAKERS = {
    "ProcessPoolExecutor (spawn)": lambda tmp: cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")),
    "omniq.Executor, SQLite file": lambda tmp: _omniq(tasks=f"sqlite:///{tmp}/busy.db"),
    "omniq.Executor, memory://": lambda tmp: _omniq(tasks="memory://"),
}


def _omniq(**options):
    from omniq import Executor

    return Executor(2, **options)


def one(label: str) -> float:
    """One round of ``label`` in this process, alone: its pool started and warmed first."""
    with tempfile.TemporaryDirectory() as tmp, MAKERS[label](tmp) as ex:
        warm(ex)
        t = time.perf_counter()
        busy_round(ex)
        return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(one(args.one))
        return 0
    load0 = os.getloadavg()
    # each round in a fresh process (another system's idle threads would want the GIL too),
    # the systems' order rotated from round to round
    labels = list(MAKERS)
    runs: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(args.reps):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            out = subprocess.run([sys.executable, __file__, "--one", label], check=True,
                                 capture_output=True, text=True).stdout
            runs[label].append(float(out.split()[-1]))
    load1 = os.getloadavg()
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Quick tasks while the submitting thread computes in Python",
        "",
        f"`uv run python benchmarks/bench_busy.py --reps {args.reps}` — {now}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, 2 process workers each. Load average "
        f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end. Wall time from the first of {N:,} "
        "submits until all are done, the main thread spinning a Python loop meanwhile.",
        "",
        "| system | best | median | all rounds (s) |",
        "|---|---|---|---|",
    ]
    for label, r in runs.items():
        lines.append(f"| {label} | {min(r):.3f} s | {statistics.median(r):.3f} s | "
                     f"{', '.join(f'{x:.3f}' for x in r)} |")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(runs):]))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
