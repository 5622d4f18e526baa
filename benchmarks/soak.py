"""Soak: continuous submit/complete with 2 workers, watching memory and file descriptors.

One ``OmniQ`` (process workers by default) runs a pipelined stream of small tasks for the
given time: each round hands over ``--batch`` tasks with ``oq.map`` plus ``--batch // 10``
single ``oq.submit`` calls, then collects the round before last (so the workers never run
dry), drops the handles and goes on. A sampler thread records, every ``--interval``
seconds, the resident set size and the number of open file descriptors of this process and
of its worker children (``/proc/<pid>/fd``; children are found through ``/proc/*/stat``), and
the tasks finished so far.

Verdict (after a warm-up: the first quarter of the run, at most 60 s): the run **fails**
(exit code 1) when, for the owning process or the children's sum,

* RSS: the maximum over the last quarter exceeds the maximum over the second quarter by
  more than ``--rss-mb`` (default 25 MB), **or** the least-squares slope over the second
  half, extrapolated over that half's length, exceeds ``--rss-mb`` — growth that a plateau
  comparison could miss on a short run;
* FDs: the maximum over the last quarter exceeds the maximum over the second quarter by
  more than ``--fd`` (default 4).

Maxima compare plateaus robustly (a single GC-timed dip cannot hide growth, a single spike
in the second quarter raises the bar only as far as the spike itself); the slope catches a
steady leak that is still small in absolute terms.

    uv run python benchmarks/soak.py --minutes 10 --url sqlite:////tmp/soak.db
    uv run python benchmarks/soak.py --seconds 30 --worker thread --json /tmp/soak.json
    uv run python benchmarks/soak.py --minutes 10 --markdown benchmarks/results/soak.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from workloads import noop  # noqa: E402  (importable: travels by reference to the children)

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# --------------------------------------------------------------------------------------------
# process probes (Linux /proc; psutil is not needed)
# --------------------------------------------------------------------------------------------
def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of ``pid`` in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def fd_count(pid: int | str = "self") -> int:
    """Open file descriptors of ``pid`` (0 if it is gone or not readable)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (worker processes of a process runner)."""
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: fields follow the last ')'
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) > 1 and rest[1] == str(pid):
            out.append(int(name))
    return out


@dataclass
class Sample:
    t: float  # seconds since start
    done: int  # tasks finished so far
    rss_mb: float  # this process
    fds: int
    children: int
    child_rss_mb: float  # sum over worker children
    child_fds: int


def sample(t0: float, done: int) -> Sample:
    me = os.getpid()
    kids = children_of(me)
    # count our own fds first: listing /proc/self/fd opens one itself, same every time
    fds = fd_count()
    return Sample(
        t=round(time.monotonic() - t0, 2),
        done=done,
        rss_mb=round(rss_bytes() / 2**20, 2),
        fds=fds,
        children=len(kids),
        child_rss_mb=round(sum(rss_bytes(k) for k in kids) / 2**20, 2),
        child_fds=sum(fd_count(k) for k in kids),
    )


# --------------------------------------------------------------------------------------------
# verdict
# --------------------------------------------------------------------------------------------
def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0 for fewer than 3 points)."""
    if len(xs) < 3:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


@dataclass
class Check:
    metric: str
    second_quarter_max: float
    last_quarter_max: float
    growth: float
    slope_per_min: float  # over the second half
    half_growth: float  # slope x length of the second half
    limit: float
    ok: bool


@dataclass
class Verdict:
    ok: bool
    warmup_s: float
    checks: list[Check] = field(default_factory=list)


def judge(samples: list[Sample], *, rss_mb: float, fd: int) -> Verdict:
    """Compare the plateau after warm-up with the end of the run (see the module docs)."""
    if len(samples) < 8:
        raise SystemExit(f"only {len(samples)} samples: run longer or sample more often")
    end = samples[-1].t
    quarter = end / 4
    warmup = min(quarter, 60.0)
    second = [s for s in samples if warmup <= s.t < max(2 * quarter, warmup + 1e-9)] or [
        s for s in samples if s.t >= warmup
    ][:2]
    last = [s for s in samples if s.t >= 3 * quarter]
    half = [s for s in samples if s.t >= end / 2]
    checks = []
    for metric, limit in (("rss_mb", rss_mb), ("child_rss_mb", rss_mb), ("fds", fd), ("child_fds", fd)):
        a = max(getattr(s, metric) for s in second)
        b = max(getattr(s, metric) for s in last)
        sl = slope([s.t for s in half], [float(getattr(s, metric)) for s in half])
        span = half[-1].t - half[0].t if half else 0.0
        growth = b - a
        half_growth = sl * span
        ok = growth <= limit and (metric.endswith("fds") or half_growth <= limit)
        checks.append(Check(metric, a, b, round(growth, 2), round(sl * 60, 3), round(half_growth, 2), limit, ok))
    return Verdict(ok=all(c.ok for c in checks), warmup_s=round(warmup, 1), checks=checks)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
DATA: Any = None


def blob_task(i: int) -> Any:
    """Reads the 2 MB global; every 10th returns a 1.6 MB array (a result blob)."""
    import numpy as np

    return np.full(200_000, float(DATA[0])) if i % 10 == 0 else float(DATA[i % 1000])


def soak(
    url: str,
    seconds: float,
    *,
    worker: str = "process",
    concurrency: int = 2,
    batch: int = 200,
    interval: float = 5.0,
    echo: bool = True,
    blobs: bool = False,
) -> tuple[list[Sample], dict[str, Any]]:
    from omniq import AsyncOmniQ, OmniQ, TaskStatus

    fn: Any = noop
    extra: dict[str, Any] = {}
    if blobs:
        # large values: a __main__ function over a 2 MB global changed in place every round (a
        # new blob each round), every 10th task returning a 1.6 MB array; results expire after
        # 20 s and unreferenced blobs are swept every 10 s, so stored blobs must plateau too
        import numpy as np

        global DATA
        DATA = np.random.rand(250_000)
        fn = blob_task
        extra = {"result_ttl": 20}
        AsyncOmniQ.BLOB_GRACE, AsyncOmniQ.BLOB_SWEEP_EVERY = 5.0, 10.0

    samples: list[Sample] = []
    done = 0
    failed = 0
    stop = threading.Event()
    t0 = time.monotonic()

    def sampler() -> None:
        while True:
            s = sample(t0, done)
            samples.append(s)
            if echo:
                print(_row(s), flush=True)
            if stop.wait(interval):
                return

    if echo:
        print(_header(), flush=True)
    with OmniQ(tasks=url, worker=worker, concurrency=concurrency, **extra) as oq:
        # warm the workers before the clock matters (children spawned, imports done)
        for h in oq.map(noop, range(20)):
            h.get(60)
        thread = threading.Thread(target=sampler, name="soak-sampler", daemon=True)
        thread.start()
        rounds: deque[list[Any]] = deque()
        deadline = t0 + seconds
        i = 0
        while time.monotonic() < deadline:
            if blobs:
                DATA[0] = i  # changed in place: the next tasks carry a new blob
            hs = oq.map(fn, range(i, i + batch))
            hs.extend(oq.submit(fn, i + batch + j) for j in range(max(1, batch // 10)))
            i += len(hs)
            rounds.append(hs)
            if len(rounds) > 2:  # keep two rounds in flight: the workers never idle
                for h in rounds.popleft():
                    r = h.get(120)
                    done += 1
                    failed += r.status is not TaskStatus.SUCCEEDED
        while rounds:
            for h in rounds.popleft():
                r = h.get(120)
                done += 1
                failed += r.status is not TaskStatus.SUCCEEDED
        stop.set()
        thread.join()
        samples.append(sample(t0, done))
        if echo:
            print(_row(samples[-1]), flush=True)
    elapsed = time.monotonic() - t0
    db = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    info = {
        "db_mb": round(os.path.getsize(db) / 2**20, 1) if db and os.path.exists(db) else None,
        "url": url, "worker": worker, "concurrency": concurrency, "batch": batch,
        "seconds": round(elapsed, 1), "tasks": done, "failed": failed,
        "rate": round(done / elapsed, 1), "python": platform.python_version(),
        "cpus": os.cpu_count(), "machine": platform.machine(), "omniq": _version(),
    }
    return samples, info


def _version() -> str:
    """Where omniq was imported from and the git commit of that tree (if any)."""
    import subprocess

    import omniq

    where = str(Path(omniq.__file__).resolve().parent)
    try:
        out = subprocess.run(["git", "-C", where, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        rev = out.stdout.strip() or "no git"
    except (OSError, subprocess.SubprocessError):
        rev = "no git"
    return f"{where} ({rev})"


def _header() -> str:
    return (f"{'t (s)':>8} {'done':>9} {'rss MB':>8} {'fds':>5} {'kids':>4} "
            f"{'kids rss MB':>11} {'kids fds':>8}")


def _row(s: Sample) -> str:
    return (f"{s.t:8.1f} {s.done:9d} {s.rss_mb:8.1f} {s.fds:5d} {s.children:4d} "
            f"{s.child_rss_mb:11.1f} {s.child_fds:8d}")


def markdown(samples: list[Sample], info: dict[str, Any], verdict: Verdict, command: str, note: str = "") -> str:
    lines = [
        "# Soak run",
        "",
        f"`{command}`",
        "",
        f"{info['seconds']} s, {info['tasks']:,} tasks ({info['failed']} not succeeded), "
        f"{info['rate']:,} tasks/s, worker={info['worker']} x{info['concurrency']}, url `{info['url']}`, "
        f"Python {info['python']}, {info['cpus']} CPUs. Warm-up excluded: first {verdict.warmup_s} s.",
        "",
        f"omniq: `{info['omniq']}`; database at the end: {info['db_mb']} MB.",
        "",
        *([note, ""] if note else []),
        f"**Verdict: {'PASS' if verdict.ok else 'FAIL'}**",
        "",
        "| metric | max 2nd quarter | max last quarter | growth | slope 2nd half /min | limit | ok |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in verdict.checks:
        lines.append(f"| {c.metric} | {c.second_quarter_max} | {c.last_quarter_max} | {c.growth} | "
                     f"{c.slope_per_min} | {c.limit} | {'yes' if c.ok else 'NO'} |")
    lines += ["", "Samples:", "", "| t (s) | done | rss MB | fds | kids | kids rss MB | kids fds |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for s in samples:
        lines.append(f"| {s.t} | {s.done} | {s.rss_mb} | {s.fds} | {s.children} | {s.child_rss_mb} | {s.child_fds} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=None, help="run time in minutes (default 10)")
    p.add_argument("--seconds", type=float, default=None, help="run time in seconds (overrides --minutes)")
    p.add_argument("--url", default=None, help="task queue URL (default: a fresh SQLite file in a temp dir)")
    p.add_argument("--worker", default="process", choices=["process", "thread", "async"])
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--batch", type=int, default=200, help="tasks per map call (plus batch/10 submits)")
    p.add_argument("--interval", type=float, default=None, help="seconds between samples (default: run/60, 1-5 s)")
    p.add_argument("--rss-mb", type=float, default=25.0, help="allowed RSS growth after warm-up, MB")
    p.add_argument("--fd", type=int, default=4, help="allowed FD growth after warm-up")
    p.add_argument("--note", default="", help="a line to put in the Markdown report")
    p.add_argument("--blobs", action="store_true",
                   help="large values: a 2 MB global changed every round, 1.6 MB results (blob store and cache)")
    p.add_argument("--json", default=None, help="write samples, info and verdict here")
    p.add_argument("--markdown", default=None, help="write a Markdown report here")
    a = p.parse_args(argv)
    seconds = a.seconds if a.seconds is not None else 60 * (a.minutes if a.minutes is not None else 10)
    interval = a.interval if a.interval is not None else min(5.0, max(1.0, seconds / 60))
    with tempfile.TemporaryDirectory(prefix="omniq-soak-") as tmp:
        url = a.url or f"sqlite:///{tmp}/soak.db"
        samples, info = soak(url, seconds, worker=a.worker, concurrency=a.concurrency,
                             batch=a.batch, interval=interval, blobs=a.blobs)
        if a.blobs and url.startswith("sqlite:///"):
            db = url[len("sqlite:///"):]
            files = [os.path.join(r, f) for r, _, fs in os.walk(db + "-blobs") for f in fs]
            info["blob_files_at_end"] = len(files)
            info["blob_bytes_at_end"] = sum(os.path.getsize(f) for f in files)
            print(f"blob files beside the database at the end: {len(files)}, "
                  f"{info['blob_bytes_at_end'] / 2**20:.1f} MB")
    verdict = judge(samples, rss_mb=a.rss_mb, fd=a.fd)
    print()
    print(f"{info['tasks']:,} tasks in {info['seconds']} s ({info['rate']:,}/s), {info['failed']} not succeeded")
    for c in verdict.checks:
        print(f"  {c.metric:13s} 2nd-quarter max {c.second_quarter_max:>8} -> last-quarter max "
              f"{c.last_quarter_max:>8} (growth {c.growth:+}, slope {c.slope_per_min:+}/min, "
              f"limit {c.limit}) {'ok' if c.ok else 'GROWING'}")
    print("PASS" if verdict.ok else "FAIL: memory or file descriptors grow after warm-up")
    command = "uv run python benchmarks/soak.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if a.json:
        Path(a.json).write_text(json.dumps(
            {"info": info, "verdict": asdict(verdict), "samples": [asdict(s) for s in samples]}, indent=1))
    if a.markdown:
        Path(a.markdown).write_text(markdown(samples, info, verdict, command.strip(), a.note))
    ok = verdict.ok and info["failed"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
