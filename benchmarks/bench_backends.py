"""End-to-end throughput of a shared task-queue backend with external workers (and a peer).

Starts ``--workers`` (default 2) ``omniq worker --tasks URL --worker process -c 1`` processes,
warms them (every worker answers, then 50 no-ops), then, best of ``--reps``: submits ``-n``
(default 2,000) no-ops (``workloads.noop``) from one ``OmniQ(tasks=URL, concurrency=0)`` and
times two moments from the first submit: **stored**, when the task queue counts all of them
succeeded (results are written before that; polled every 2 ms through a second connection),
and **handles**, when every ``handle.result()`` returned in the submitting process (which
learns of results from other processes through the orchestrator's reconcile loop).
``--huey-redis URL`` measures Huey on Redis (``RedisHuey`` + ``huey_consumer -k process -w 2``,
a native no-op task, results polled 0-2 ms as in ``peers.py``) in the same run and prints the
ratios (the Redis target: >= 2x).

``redis://`` URLs get a fresh ``prefix`` (and Huey a fresh queue name) per run, deleted after.

    uv run python benchmarks/bench_backends.py --url redis://127.0.0.1:6379/0 \\
        --huey-redis redis://127.0.0.1:6379/0 [-n 2000] [--reps 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# --- the Huey app: imported here and by huey_consumer (configured through the environment) ----
huey: Any = None
huey_noop: Any = None
if os.environ.get("OMNIQ_BENCH_HUEY_REDIS"):
    from huey import RedisHuey

    huey = RedisHuey(os.environ["OMNIQ_BENCH_HUEY_NAME"], url=os.environ["OMNIQ_BENCH_HUEY_REDIS"])

    @huey.task(name="noop")
    def huey_noop(x: Any = None) -> Any:
        return x


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    return env


@contextlib.contextmanager
def processes(argvs: list[list[str]], log: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run worker processes (each in its own session) until the block ends."""
    out = open(log, "wb")  # noqa: SIM115
    procs = [
        subprocess.Popen(a, cwd=HERE, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True)
        for a in argvs
    ]  # fmt: skip
    try:
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGINT)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
        out.close()


def drop_redis_prefix(url: str, pattern: str) -> None:
    import redis

    r = redis.Redis.from_url(url.split("?", 1)[0])
    keys = list(r.scan_iter(match=pattern, count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])


@contextlib.contextmanager
def stored_poller(url: str) -> Iterator[Any]:
    """``start()`` reads the succeeded count; ``wait(n, t0)`` then returns the seconds from ``t0``
    until ``n`` more succeeded, polled every 2 ms on a connection opened outside the timing."""
    import anyio
    from anyio.from_thread import start_blocking_portal

    from omniq.storage.urls import open_backends

    async def succeeded(queue: Any) -> int:
        return sum(c.get("succeeded", 0) for c in (await queue.counts()).values())

    async def poll(queue: Any, n: int, base: int, t0: float) -> float:
        while await succeeded(queue) < base + n:
            await anyio.sleep(0.002)
        return time.perf_counter() - t0

    with start_blocking_portal() as portal:
        queue, _, _ = open_backends(url)
        portal.call(queue.connect)
        base = 0

        def start() -> None:
            nonlocal base
            base = portal.call(succeeded, queue)

        try:
            yield start, lambda n, t0: portal.call(poll, queue, n, base, t0)
        finally:
            portal.call(queue.close)


def bench_omniq(url: str, n: int, reps: int, workers: int, log: Path) -> tuple[float, float]:
    """Best tasks/s over the reps: (all results stored, all handles resolved)."""
    import workloads
    from omniq import OmniQ

    cmd = [sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "process",
           "-c", "1"]  # fmt: skip
    stored: list[float] = []
    rates: list[float] = []
    with (
        processes([cmd] * workers, log) as procs,
        OmniQ(tasks=url, concurrency=0) as oq,
        stored_poller(url) as (start_count, wait_stored),
    ):
        deadline = time.monotonic() + 120
        seen: set[int] = set()
        while len(seen) < workers:  # every worker (its child process) has answered
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"omniq workers did not start; see {log}")
            seen.update(h.result(timeout=60) for h in [oq.submit(workloads.pid, 0.05)
                                                       for _ in range(2 * workers)])
        assert [h.result(timeout=60) for h in oq.map(workloads.noop, range(50))] == list(range(50))
        for _ in range(reps):
            start_count()
            t0 = time.perf_counter()
            handles = [oq.submit(workloads.noop, i) for i in range(n)]
            submitted = time.perf_counter() - t0
            ds = wait_stored(n, t0)
            values = [h.result(timeout=300) for h in handles]
            dt = time.perf_counter() - t0
            if values != list(range(n)):
                raise RuntimeError("wrong results")
            stored.append(n / ds)
            rates.append(n / dt)
            print(f"  omniq: stored {n / ds:8,.0f} tasks/s ({ds:.3f} s), handles {n / dt:8,.0f} "
                  f"tasks/s ({dt:.3f} s); submit loop {submitted / n * 1e6:.0f} us/task",
                  flush=True)  # fmt: skip
    return max(stored), max(rates)


def bench_huey_redis(url: str, n: int, reps: int, workers: int, log: Path) -> list[float]:
    """The same with RedisHuey: ``huey_consumer -k process -w N``, results polled 0-2 ms."""
    name = f"omniq-bench-{uuid.uuid4().hex[:8]}"
    os.environ["OMNIQ_BENCH_HUEY_REDIS"] = url
    os.environ["OMNIQ_BENCH_HUEY_NAME"] = name
    import importlib

    me = importlib.import_module("bench_backends")  # the app, as the consumer imports it
    if me.huey is None:
        me = importlib.reload(me)
    cmd = [sys.executable, "-m", "huey.bin.huey_consumer", "bench_backends.huey", "-k", "process",
           "-w", str(workers), "-C", "-n", "-q"]  # fmt: skip
    rates: list[float] = []
    try:
        with processes([cmd], log) as procs:
            warm = [me.huey_noop(i) for i in range(50)]
            for i, r in enumerate(warm):
                if procs[0].poll() is not None:
                    raise RuntimeError(f"huey_consumer exited; see {log}")
                assert r.get(blocking=True, timeout=60) == i
            for _ in range(reps):
                t0 = time.perf_counter()
                results = [me.huey_noop(i) for i in range(n)]
                values = [r.get(blocking=True, timeout=300, backoff=1.0, max_delay=0.002)
                          for r in results]  # fmt: skip
                dt = time.perf_counter() - t0
                if values != list(range(n)):
                    raise RuntimeError("wrong huey results")
                rates.append(n / dt)
                print(f"  huey:  {n / dt:8,.0f} tasks/s  ({dt:.3f} s)", flush=True)
    finally:
        drop_redis_prefix(url, f"huey.*{name}*")
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", required=True, help="task queue URL the workers share")
    p.add_argument("--huey-redis", default=None, help="Redis URL for the Huey peer")
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--logs", default=None, help="directory for worker logs (default: a temp dir)")
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    import tempfile

    logs = Path(args.logs or tempfile.mkdtemp(prefix="omniq-bench-"))
    logs.mkdir(parents=True, exist_ok=True)

    url = args.url
    prefix = None
    if url.startswith(("redis://", "rediss://")) and "prefix=" not in url:
        prefix = f"omniq-bench-{uuid.uuid4().hex[:8]}"
        url += ("&" if "?" in url else "?") + f"prefix={prefix}"
    print(f"omniq on {url.split('?')[0]} ({args.workers} x `omniq worker --worker process -c 1`, "
          f"{args.n:,} no-ops, best of {args.reps})", flush=True)  # fmt: skip
    try:
        stored, best = bench_omniq(url, args.n, args.reps, args.workers, logs / "omniq-workers.log")
    finally:
        if prefix is not None:
            drop_redis_prefix(url, f"{prefix}:*")
    print(f"omniq: stored {stored:,.0f} tasks/s, handles {best:,.0f} tasks/s", flush=True)
    if args.huey_redis:
        print(f"huey RedisHuey on {args.huey_redis} (huey_consumer -k process -w {args.workers})",
              flush=True)  # fmt: skip
        peer = max(bench_huey_redis(args.huey_redis, args.n, args.reps, args.workers,
                                    logs / "huey-consumer.log"))  # fmt: skip
        print(f"huey-redis: {peer:,.0f} tasks/s")
        print(f"omniq / huey-redis: stored {stored / peer:.2f}x, handles {best / peer:.2f}x "
              "(target >= 2.0x)")  # fmt: skip


if __name__ == "__main__":
    main()
