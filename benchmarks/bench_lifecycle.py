"""Lifecycle costs on SQLite: enqueueing with dependencies, and schedule firing latency.

1. **Dependencies.** 10,000 tasks with dependencies against 10,000 plain ones, enqueue only
   (``concurrency=0``), each shape timed two ways:

   * ``loop``: ``oq.enqueue`` one task at a time (each durable before it returns);
   * ``batch``: tasks built with ``oq.core.build_tasks`` and stored as one batch
     (``submit_tasks`` + ``flush``). ``build_tasks`` applies one set of options to every
     call, so it cannot give each task its own ``depends_on``: tasks with different
     dependencies are built by separate ``build_tasks`` calls (one per task for a chain,
     one per group for a fan-in) and still stored as one batch.

   Tasks run ``workloads.noop`` (importable, so it travels by reference: a ``__main__``
   function would be serialized by value on every ``build_tasks`` call and swamp the
   figure). Shapes: ``chain10`` (chains of 10: each task depends on the one before it), ``fanin10``
   (groups of 11: a join task depends on 10 leaves). Target: with dependencies / plain <= 2x.

2. **Schedule latency.** An interval schedule (0.1 s) on an idle machine with one thread
   worker; for every slot, the time its task was enqueued (``enqueued`` event) and started
   (``started`` event) minus the slot from the task's metadata. Target: median and p95
   <= 50 ms.

    uv run python benchmarks/bench_lifecycle.py [-n 10000] [--reps 3] [--seconds 10]
                                                [--only deps,schedule]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from omniq import OmniQ  # noqa: E402
from workloads import noop  # noqa: E402  (importable: travels by reference, as in run.py)

# --- 1. dependencies ----------------------------------------------------------------------------

def has_deps(shape: str, i: int) -> bool:
    if shape == "plain":
        return False
    if shape == "chain10":
        return i % 10 != 0
    if shape == "fanin10":
        return i % 11 == 10
    raise ValueError(shape)


def deps_for(shape: str, i: int, ids: list[str]) -> list[str]:
    """Dependencies of task ``i`` given the ids of the tasks before it."""
    if not has_deps(shape, i):
        return []
    return [ids[i - 1]] if shape == "chain10" else ids[i - 10 : i]


def enqueue_loop(oq: OmniQ, n: int, shape: str) -> tuple[float, float]:
    """(seconds, 0): building and storing are one call here."""
    ids: list[str] = []
    t0 = time.perf_counter()
    for i in range(n):
        d = deps_for(shape, i, ids)
        ids.append(oq.enqueue(noop, args=(i,), depends_on=d) if d else oq.enqueue(noop, args=(i,)))
    return time.perf_counter() - t0, 0.0


def enqueue_batch(oq: OmniQ, n: int, shape: str) -> tuple[float, float]:
    """(seconds in all, seconds of it storing: submit_tasks + flush)."""
    core = oq.core
    t0 = time.perf_counter()
    if shape == "plain":
        tasks = core.build_tasks(noop, [((i,), {}) for i in range(n)])
    else:
        tasks = []
        ids: list[str] = []
        i = 0
        while i < n:
            d = deps_for(shape, i, ids)
            if d:  # its own dependencies: its own build_tasks call
                (t,) = core.build_tasks(noop, [((i,), {})], depends_on=d)
                batch = [t]
            else:  # a run of tasks without dependencies: one call
                j = i + 1
                while j < n and not has_deps(shape, j):
                    j += 1
                batch = core.build_tasks(noop, [((k,), {}) for k in range(i, j)])
            tasks.extend(batch)
            ids.extend(t.id for t in batch)
            i += len(batch)
    t1 = time.perf_counter()
    core.submit_tasks(tasks)
    oq.flush()
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def bench_deps(n: int, reps: int) -> list[tuple[str, str, float, float]]:
    rows = []
    for how, fn in (("loop", enqueue_loop), ("batch", enqueue_batch)):
        for shape in ("plain", "chain10", "fanin10"):
            best, best_store = float("inf"), float("inf")
            for _ in range(reps):
                with tempfile.TemporaryDirectory() as tmp, \
                        OmniQ(tasks=f"sqlite:///{tmp}/b.db", concurrency=0) as oq:
                    oq.enqueue(noop)  # warm: schema, connection, serializer caches
                    total, store = fn(oq, n, shape)
                    best, best_store = min(best, total), min(best_store, store)
                    stored = sum(oq.health()["queues"]["default"].values())
                    assert stored == n + 1, (stored, n + 1)
            rows.append((how, shape, best, best_store))
            note = f"  (storing: {best_store:6.3f} s)" if how == "batch" else ""
            print(f"  {how:<6} {shape:<8} {n:>6} tasks  {best:7.3f} s  {n / best:9.0f} tasks/s{note}",
                  flush=True)
    return rows


# --- 2. schedule latency ---------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def bench_schedule(seconds: float, interval: float) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp, \
            OmniQ(tasks=f"sqlite:///{tmp}/s.db", worker="thread", concurrency=1) as oq:
        oq.submit(noop).result(10)  # warm
        sid = oq.schedule(noop, interval=interval, name="latency")
        time.sleep(seconds)
        oq.pause_schedule(sid)
        time.sleep(0.5)
        by_task: dict[str, dict[str, float]] = {}
        for e in oq.events():
            by_task.setdefault(e.task_id, {}).setdefault(str(e.type), e.timestamp)
        lags: dict[str, list[float]] = {"enqueued": [], "started": []}
        slots = []
        for tid, times in by_task.items():
            r = oq.get_result(tid)
            if r is None or r.metadata.get("schedule") != sid:
                continue
            slot = r.metadata["slot"]
            slots.append(slot)
            for kind in lags:
                if kind in times:
                    lags[kind].append(times[kind] - slot)
        expected = int(seconds / interval)
        print(f"  {len(slots)} slots fired of ~{expected} in {seconds:g} s "
              f"({len(set(slots))} distinct)", flush=True)
        return lags


def report(label: str, xs: list[float], target_ms: float) -> None:
    if not xs:
        print(f"  {label:<18} no events of this kind (see the report: scheduled tasks emit none)")
        return
    med, p95 = statistics.median(xs) * 1e3, percentile(xs, 0.95) * 1e3
    ok = "ok" if p95 <= target_ms else f"OVER the {target_ms:g} ms target"
    print(f"  {label:<18} median {med:6.1f} ms  p95 {p95:6.1f} ms  max {max(xs) * 1e3:6.1f} ms  "
          f"(n={len(xs)}) {ok}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=10_000, help="tasks per shape (default 10,000)")
    p.add_argument("--reps", type=int, default=1, help="best of N runs per figure (default 1)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long the schedule runs")
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--only", default="deps,schedule")
    args = p.parse_args()
    only = set(args.only.split(","))
    print(f"bench_lifecycle on {os.cpu_count()} cores, SQLite")
    if "deps" in only:
        print(f"\n1. enqueue {args.n:,} tasks, with and without dependencies (best of {args.reps})")
        rows = bench_deps(args.n, args.reps)
        base = {how: (t, st) for how, shape, t, st in rows if shape == "plain"}
        for how, shape, t, st in rows:
            if shape != "plain":
                ratio = t / base[how][0]
                verdict = "ok" if ratio <= 2.0 else "OVER the 2x target"
                extra = f"; storing alone {st / base[how][1]:5.2f}x" if how == "batch" else ""
                print(f"  ratio {how:<6} {shape:<8} {ratio:5.2f}x plain{extra}  {verdict}")
    if "schedule" in only:
        print(f"\n2. schedule firing latency, interval {args.interval:g} s for {args.seconds:g} s, idle machine")
        lags = bench_schedule(args.seconds, args.interval)
        report("enqueued - slot", lags["enqueued"], 50)
        report("started - slot", lags["started"], 50)


if __name__ == "__main__":
    main()
