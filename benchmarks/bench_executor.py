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

Best of ``--reps`` (default 3); results are checked. Writes ``benchmarks/results/executor.md``
with the machine's load average, which moves these numbers on a shared 2-CPU machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import multiprocessing as mp
import operator
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

N_SUBMIT = 2000
N_MAP = 200_000
CHUNK = 25_000
OUT = Path(__file__).resolve().parent / "results" / "executor.md"


def best(fn, reps: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return min(runs), runs


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
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one repetition each")
    args = ap.parse_args()
    reps = 1 if args.quick else args.reps
    import joblib

    from omniq import Executor
    from omniq.joblib import register

    register()
    rows = []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        # 1 + 2: the executors
        times: dict[str, dict[str, tuple[float, list[float]]]] = {}
        systems = [
            ("ProcessPoolExecutor (spawn)", lambda: cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"))),
            ("omniq.Executor, SQLite file", lambda: Executor(2, tasks=f"sqlite:///{tmp}/ex.db")),
            ("omniq.Executor, memory://", lambda: Executor(2, tasks="memory://")),
        ]
        for label, make in systems:
            with make() as ex:
                warm(ex)
                times[label] = {"submit": best(lambda ex=ex: submit_all(ex), reps),
                                "map": best(lambda ex=ex: map_all(ex), reps)}
            print(label, {k: round(v[0], 3) for k, v in times[label].items()}, flush=True)
        ppe = times["ProcessPoolExecutor (spawn)"]
        for label in times:
            t = times[label]
            rows.append((label, N_SUBMIT / t["submit"][0], ppe["submit"][0] / t["submit"][0],
                         N_MAP / t["map"][0], ppe["map"][0] / t["map"][0], t))
        # 3: GridSearchCV
        X, y = grid_data()
        from omniq import OmniQ

        with joblib.parallel_config(backend="loky"):
            ref = grid_fit(X, y)  # warms loky's reusable executor (and imports in its workers)
            loky_t = best(lambda: grid_fit(X, y), reps)
        with OmniQ(tasks=f"sqlite:///{tmp}/grid.db", worker="process", concurrency=2) as oq, \
                joblib.parallel_config(backend="omniq", oq=oq):
            got = grid_fit(X, y)  # warms OmniQ's children the same way
            omniq_t = best(lambda: grid_fit(X, y), reps)
        assert got.best_params_ == ref.best_params_ and got.best_score_ == ref.best_score_
        print("grid loky", round(loky_t[0], 3), "omniq", round(omniq_t[0], 3), flush=True)
    load1 = os.getloadavg()
    write(rows, loky_t, omniq_t, reps, load0, load1)
    return 0


def write(rows, loky_t, omniq_t, reps, load0, load1) -> None:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# omniq.Executor and the joblib backend (issue #16)",
        "",
        f"`uv run python benchmarks/bench_executor.py` — {now}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, 2 process workers per system, best of {reps}. Load average "
        f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end (other work shares this machine).",
        "",
        f"| system | {N_SUBMIT:,} submits + wait | vs PPE (bar 1.0x) | map of {N_MAP:,}, chunksize "
        f"{CHUNK} | vs PPE (bar 0.8x) |",
        "|---|---|---|---|---|",
    ]
    for label, sub, subr, mp_, mpr, _ in rows:
        lines.append(f"| {label} | {sub:,.0f}/s | {subr:.2f}x | {mp_:,.0f}/s | {mpr:.2f}x |")
    lines += [
        "",
        "| GridSearchCV, 20 candidates x 5 folds, n_jobs=2 | wall time (best) | all runs |",
        "|---|---|---|",
        f"| loky backend | {loky_t[0]:.3f} s | {', '.join(f'{r:.3f}' for r in loky_t[1])} |",
        f"| omniq backend (SQLite file) | {omniq_t[0]:.3f} s | {', '.join(f'{r:.3f}' for r in omniq_t[1])} |",
        "",
        f"OmniQ's speed is {loky_t[0] / omniq_t[0]:.2f}x loky's (bar 0.8x).",
        "",
        "Runs of each executor workload (seconds):",
        "",
    ]
    for label, *_, t in rows:
        lines.append(f"- {label}: submit {', '.join(f'{r:.3f}' for r in t['submit'][1])}; "
                     f"map {', '.join(f'{r:.3f}' for r in t['map'][1])}")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    sys.exit(main())
