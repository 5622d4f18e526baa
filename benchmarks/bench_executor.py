"""omniq.Executor and the joblib backend against the standard library and loky, one run.

    uv run python benchmarks/bench_executor.py [--reps 3] [--quick]

Issue #16's figures, side by side, every system with 2 process workers started and warmed
before anything is timed:

1. submit  -- 2,000 ``Executor.submit`` of an importable function (``operator.mul``), then
              ``cf.wait`` on all: ``omniq.Executor`` (SQLite file; ``memory://`` for
              reference) vs ``ProcessPoolExecutor`` (spawn). Bar: >= 1.0x.
2. map     -- ``list(Executor.map(operator.mul, xs, xs, chunksize=25000))`` over 200,000 items
              (8 chunks): the same two. Bar: >= 0.8x.
3. grid    -- ``GridSearchCV(LogisticRegression, 20 candidates, cv=5, n_jobs=2).fit`` on
              500 x 20 samples: ``parallel_config(backend="omniq")`` vs the loky backend (its
              reusable executor, warmed by a first search). Bar: OmniQ's speed >= 0.8x loky's.

Every system is built and warmed first, then the repetitions are interleaved: each round runs
every system once, in an order rotated from round to round, so a change in the machine's load
(other work shares it) falls on all of them alike instead of on whichever ran last. Best and
median of ``--reps`` rounds (default 5); results are checked. Writes
``benchmarks/results/executor.md`` with the load average and every run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as dt
import multiprocessing as mp
import operator
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

N_SUBMIT = 2000
N_MAP = 200_000
CHUNK = 25_000
OUT = Path(__file__).resolve().parent / "results" / "executor.md"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(jobs: dict, reps: int) -> dict[str, list[float]]:
    """``{label: [seconds per round]}``: each round runs every job once, the order rotated."""
    labels = list(jobs)
    runs: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(reps):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            runs[label].append(timed(jobs[label]))
    return runs


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def submit_all(ex) -> None:
    fs = [ex.submit(operator.mul, i, 2) for i in range(N_SUBMIT)]
    cf.wait(fs)
    assert fs[-1].result() == 2 * (N_SUBMIT - 1)


def map_all(ex) -> None:
    xs = range(N_MAP)
    out = list(ex.map(operator.mul, xs, xs, chunksize=CHUNK))
    assert out[-1] == (N_MAP - 1) ** 2 and len(out) == N_MAP


def warm(ex) -> None:
    cf.wait([ex.submit(operator.mul, 1, 1) for _ in range(50)])


def grid_data():
    from sklearn.datasets import make_classification

    return make_classification(n_samples=500, n_features=20, random_state=0)


def grid_fit(X, y):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    grid = {"C": [10.0 ** k for k in range(-3, 2)], "fit_intercept": [True, False],
            "class_weight": [None, "balanced"]}  # 5 x 2 x 2 = 20 candidates
    return GridSearchCV(LogisticRegression(max_iter=1000), grid, cv=5, n_jobs=2).fit(X, y)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one round")
    args = ap.parse_args()
    reps = 1 if args.quick else args.reps
    from omniq.joblib import register

    register()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        # 1 + 2: the executors, all started and warmed before anything is timed (and shut down
        # before the searches, so their idle pools do not share the machine with them)
        with contextlib.ExitStack() as stack:
            submit, maps = executors(stack, tmp, reps)
        grid = searches(tmp, reps)
    load1 = os.getloadavg()
    write(submit, maps, grid, reps, load0, load1)
    return 0


def executors(stack: contextlib.ExitStack, tmp: str, reps: int) -> tuple[dict, dict]:
    from omniq import Executor

    makers = {
        "ProcessPoolExecutor (spawn)": lambda: cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")),
        "omniq.Executor, SQLite file": lambda: Executor(2, tasks=f"sqlite:///{tmp}/ex.db"),
        "omniq.Executor, memory://": lambda: Executor(2, tasks="memory://"),
    }
    exs = {label: stack.enter_context(make()) for label, make in makers.items()}
    for ex in exs.values():
        warm(ex)
    submit = interleaved({k: (lambda ex=ex: submit_all(ex)) for k, ex in exs.items()}, reps)
    print("submit", {k: round(min(v), 3) for k, v in submit.items()}, flush=True)
    maps = interleaved({k: (lambda ex=ex: map_all(ex)) for k, ex in exs.items()}, reps)
    print("map", {k: round(min(v), 3) for k, v in maps.items()}, flush=True)
    return submit, maps


def searches(tmp: str, reps: int) -> dict[str, list[float]]:
    """3: GridSearchCV, loky and OmniQ both warmed by a first search."""
    import joblib

    from omniq import OmniQ

    X, y = grid_data()
    with OmniQ(tasks=f"sqlite:///{tmp}/grid.db", worker="process", concurrency=2) as oq:
        with joblib.parallel_config(backend="loky"):
            ref = grid_fit(X, y)
        with joblib.parallel_config(backend="omniq", oq=oq):
            got = grid_fit(X, y)
        assert got.best_params_ == ref.best_params_ and got.best_score_ == ref.best_score_

        def fit_with(backend: str, **kw) -> None:
            with joblib.parallel_config(backend=backend, **kw):
                grid_fit(X, y)

        grid = interleaved({"loky": lambda: fit_with("loky"), "omniq": lambda: fit_with("omniq", oq=oq)}, reps)
    print("grid", {k: round(min(v), 3) for k, v in grid.items()}, flush=True)
    return grid


def write(submit, maps, grid, reps, load0, load1) -> None:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ppe = "ProcessPoolExecutor (spawn)"
    lines = [
        "# omniq.Executor and the joblib backend (issue #16)",
        "",
        f"`uv run python benchmarks/bench_executor.py --reps {reps}` — {now}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, 2 process workers per system, {reps} "
        f"interleaved rounds (every system once per round, order rotated). Load average {load0[0]:.1f} "
        f"at the start, {load1[0]:.1f} at the end (other work shares this machine). Ratios are speed "
        "relative to the reference (its time / this time), from the best round and from the median.",
        "",
        f"| system | {N_SUBMIT:,} submits + wait (best) | vs PPE, best / median (bar 1.0x) | "
        f"map of {N_MAP:,}, chunksize {CHUNK} (best) | vs PPE, best / median (bar 0.8x) |",
        "|---|---|---|---|---|",
    ]
    for label in submit:
        s, m = submit[label], maps[label]
        lines.append(
            f"| {label} | {N_SUBMIT / min(s):,.0f}/s | {min(submit[ppe]) / min(s):.2f}x / "
            f"{med(submit[ppe]) / med(s):.2f}x | {N_MAP / min(m):,.0f}/s | {min(maps[ppe]) / min(m):.2f}x / "
            f"{med(maps[ppe]) / med(m):.2f}x |"
        )
    lk, oq = grid["loky"], grid["omniq"]
    lines += [
        "",
        "| GridSearchCV, 20 candidates x 5 folds, n_jobs=2 | best | median | all rounds (s) |",
        "|---|---|---|---|",
        f"| loky backend | {min(lk):.3f} s | {med(lk):.3f} s | {', '.join(f'{r:.3f}' for r in lk)} |",
        f"| omniq backend (SQLite file) | {min(oq):.3f} s | {med(oq):.3f} s | {', '.join(f'{r:.3f}' for r in oq)} |",
        "",
        f"OmniQ's speed is {min(lk) / min(oq):.2f}x loky's from the best rounds, {med(lk) / med(oq):.2f}x "
        "from the medians (bar 0.8x).",
        "",
        "Every round of the executor workloads (seconds):",
        "",
    ]
    for label in submit:
        lines.append(f"- {label}: submit {', '.join(f'{r:.3f}' for r in submit[label])}; "
                     f"map {', '.join(f'{r:.3f}' for r in maps[label])}")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    sys.exit(main())
