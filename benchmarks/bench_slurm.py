"""SLURM worker jobs (issue #18): start-up and throughput of ``omniq.hpc.SlurmWorkers``.

Runs on a private single-node SLURM started for the run (``tests/slurm.py``; needs root and
Debian's ``slurm-wlm`` + ``munge``), or on the cluster ``SLURM_CONF`` points at with
``--existing``. Storage: a SQLite file in a temporary folder (one machine).

- **start**: from ``scale(1)`` to the first task running inside the job, beside SLURM's own job
  start time on this machine (``sbatch --wrap 'date +%s.%N'``: submit to the job's first
  command). Bar: < 5 s above SLURM's own.
- **throughput**: 1,000 no-op tasks (one ``map``, results back in the submitting process) over
  2 single-core jobs, against two local ``omniq worker -c 1`` processes on the same kind of
  storage, both warmed first. Bar: >= 0.8x.

Best of ``--reps`` (default 3). Writes ``benchmarks/results/slurm.md`` (``--out`` to change).

    uv run python benchmarks/bench_slurm.py [--reps 3] [-n 1000] [--existing]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from omniq import OmniQ  # noqa: E402
from omniq.hpc import SlurmWorkers  # noqa: E402
from workloads import noop  # noqa: E402


def started_at(_: Any = None) -> tuple[float, str | None]:
    return time.time(), os.environ.get("SLURM_JOB_ID")


@contextlib.contextmanager
def cluster(existing: bool) -> Iterator[None]:
    if existing:
        yield
        return
    from tests.slurm import PrivateSlurm

    with PrivateSlurm() as s:
        os.environ.update(s.env())
        yield


def slurm_start(tmp: str) -> float:
    """Seconds from sbatch to a trivial job's first command."""
    out = os.path.join(tmp, f"start-{time.monotonic_ns()}")
    t0 = time.time()
    subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--job-name=omniq-bench-start",
                    f"--wrap=date +%s.%N > {out}.tmp && mv {out}.tmp {out}"], check=True, capture_output=True)
    while not os.path.exists(out):
        time.sleep(0.01)
    with open(out) as f:
        return float(f.read()) - t0


def omniq_start(tmp: str) -> tuple[float, float]:
    """Seconds from scale(1) to the first task running in the job, and to its result back."""
    db = os.path.join(tmp, f"start-{time.monotonic_ns()}.db")
    with OmniQ(tasks=f"sqlite:///{db}", concurrency=0) as oq:
        pool = SlurmWorkers(oq, log_dir=os.path.join(tmp, "logs"), interval=1.0, idle_timeout=30)
        try:
            t0 = time.time()
            pool.scale(1)
            ran, job = oq.submit(started_at).result(timeout=120)
            back = time.time() - t0
            assert job is not None, "the task ran outside SLURM"
            return ran - t0, back
        finally:
            pool.close()


def warm(oq: OmniQ, workers: int) -> None:
    """Until ``workers`` distinct workers answered, then 50 no-ops."""
    seen: set[Any] = set()
    deadline = time.monotonic() + 180
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only {len(seen)} of {workers} workers answered"
        seen.update(h.result(timeout=120) for h in oq.map(_whoami, range(4)))
    oq.gather(oq.map(noop, range(50)), timeout=120)


def _whoami(_: Any = None) -> tuple[str | None, int]:
    time.sleep(0.05)
    return os.environ.get("SLURM_JOB_ID"), os.getppid()


def rate(oq: OmniQ, n: int) -> float:
    t0 = time.perf_counter()
    hs = oq.map(noop, range(n))
    values = oq.gather(hs, timeout=300)
    took = time.perf_counter() - t0
    assert values == list(range(n))
    return n / took


def slurm_throughput(tmp: str, n: int, reps: int) -> list[float]:
    db = os.path.join(tmp, "tp-slurm.db")
    with OmniQ(tasks=f"sqlite:///{db}", concurrency=0) as oq:
        pool = SlurmWorkers(oq, log_dir=os.path.join(tmp, "logs"), interval=1.0, idle_timeout=120, cores=1)
        try:
            pool.scale(2)
            warm(oq, 2)
            return [rate(oq, n) for _ in range(reps)]
        finally:
            pool.close()


def local_throughput(tmp: str, n: int, reps: int) -> list[float]:
    db = os.path.join(tmp, "tp-local.db")
    url = f"sqlite:///{db}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "process",
                               "-c", "1"], env=env, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        with OmniQ(tasks=url, concurrency=0) as oq:
            warm(oq, 2)
            return [rate(oq, n) for _ in range(reps)]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--existing", action="store_true", help="use the SLURM that SLURM_CONF / the machine names")
    ap.add_argument("--out", default=str(HERE / "results" / "slurm.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="omniq-bench-slurm-") as tmp, cluster(args.existing):
        own = [slurm_start(tmp) for _ in range(args.reps)]
        ours = [omniq_start(tmp) for _ in range(args.reps)]
        slurm_tp = slurm_throughput(tmp, args.n, args.reps)
        local_tp = local_throughput(tmp, args.n, args.reps)
    first = min(r for r, _ in ours)
    back = min(b for _, b in ours)
    own_best = min(own)
    ratio = max(slurm_tp) / max(local_tp)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# SLURM worker jobs (benchmarks/bench_slurm.py)",
        "",
        f"Run of {stamp} on {platform.node()} ({os.cpu_count()} CPUs), Python {platform.python_version()}, "
        f"{'the machine SLURM' if args.existing else 'a private single-node SLURM (tests/slurm.py)'}, "
        f"SQLite file storage; best of {args.reps}.",
        "",
        "| figure | value | bar |",
        "|---|---|---|",
        f"| SLURM's own job start (sbatch to a trivial job's first command) | {own_best:.2f} s "
        f"(runs: {', '.join(f'{x:.2f}' for x in own)}) | |",
        f"| `scale(1)` to the first task running in the job | {first:.2f} s "
        f"(runs: {', '.join(f'{r:.2f}' for r, _ in ours)}) | |",
        f"| ... above SLURM's own start | **{first - own_best:.2f} s** | < 5 s |",
        f"| `scale(1)` to that task's result back in the notebook process | {back:.2f} s | |",
        f"| {args.n:,} no-ops over 2 single-core SLURM jobs | {max(slurm_tp):,.0f} tasks/s "
        f"(runs: {', '.join(f'{x:,.0f}' for x in slurm_tp)}) | |",
        f"| the same over 2 local `omniq worker -c 1` | {max(local_tp):,.0f} tasks/s "
        f"(runs: {', '.join(f'{x:,.0f}' for x in local_tp)}) | |",
        f"| SLURM jobs / local workers | **{ratio:.2f}x** | >= 0.8x |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)
    ok = first - own_best < 5 and ratio >= 0.8
    print("bars:", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
