"""The bucket task queue (``s3://`` on moto, loopback) beside ``file://`` on the same machine.

Measures, with two ``omniq worker`` processes (thread workers, 4 slots each) already running:

- throughput: N trivial tasks submitted with ``map`` by a client with no workers of its own,
  from the first submit to the last result, on ``file://`` and on ``s3://``;
- requests per task: every request moto served during an ``s3://`` run (moto's recorder), over
  N: the client's enqueue and result pickup, the workers' claims, finishes, results, events and
  heartbeats, all of it;
- the idle request rate: one worker with nothing to do, over 20 s;
- the ``s3://`` throughput again behind a loopback proxy adding ``--rtt-ms`` (default 20 ms, as
  a real S3 region) to every request and response (bench_fsspec.py's proxy).

moto answers every request in Python (a few ms of CPU each) on the same 2 CPUs as the workers,
so on a small machine it is the bottleneck: the figures are a floor, not S3's.

    uv run python benchmarks/bench_bucket.py [-n 300] [--rtt-ms 20] [--out benchmarks/results/bucket.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fsspec import free_port, serve, slow_link
from omniq import OmniQ

BUCKET = "omniq-bench"
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def moto(record_to: Path) -> Iterator[str]:
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    os.environ["MOTO_RECORDER_FILEPATH"] = str(record_to)  # recording starts only when asked
    with serve([exe, "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}") as ep:
        yield ep


def recorder(endpoint: str, action: str) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", method="POST")
    urllib.request.urlopen(req, timeout=10).close()


def recorded(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    # by pattern: moto's threads append entries without a lock, so long ones may interleave
    return re.findall(r'"method": "([A-Z]+)", "url": "([^"]+)"', path.read_text(errors="replace"))


def aws_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def start_workers(url: str, env: dict[str, str], n: int, slots: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "thread",
             "-c", str(slots)],
            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        for _ in range(n)
    ]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_workers(oq: OmniQ, n: int) -> None:
    deadline = time.monotonic() + 120
    while len(oq.health()["workers"]) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not start")
        time.sleep(0.2)


def throughput(url: str, env: dict[str, str], n: int, before_run: object = None) -> float:
    """Seconds for ``n`` tasks through two worker processes (already started and idle)."""
    os.environ.update(env)
    procs = start_workers(url, env, 2, 4)
    try:
        with OmniQ(tasks=url, concurrency=0) as oq:
            wait_workers(oq, 2)
            oq.map(abs, [-1])[0].result(timeout=120)  # every process has looked once
            time.sleep(1.0)
            if callable(before_run):
                before_run()
            t0 = time.perf_counter()
            hs = oq.map(abs, range(-n, 0))
            values = [h.result(timeout=600) for h in hs]
            took = time.perf_counter() - t0
            assert values == list(range(n, 0, -1)), "wrong results"
        return took
    finally:
        stop(procs)


def idle_rate(url: str, env: dict[str, str], endpoint: str, path: Path, window: float) -> tuple[float, Counter[str]]:
    os.environ.update(env)
    procs = start_workers(url, env, 1, 2)
    try:
        with OmniQ(tasks=url, concurrency=0) as oq:
            wait_workers(oq, 1)
        time.sleep(3.0)
        recorder(endpoint, "reset-recording")
        recorder(endpoint, "start-recording")
        time.sleep(window)
        recorder(endpoint, "stop-recording")
        sent = recorded(path)
        kinds = Counter(f"{m} {u.split('?')[0].split('/queue/')[-1].split('/')[0].split('-')[0]}" for m, u in sent)
        return len(sent) / window, kinds
    finally:
        stop(procs)


def backlog(url: str, env: dict[str, str], n: int) -> tuple[int, float, float]:
    """A shard holding ``n`` queued tasks: its size in bytes, and the median seconds of one
    claim of 4 tasks and of one finish (each reads and writes the whole shard object)."""
    import asyncio
    import statistics

    from omniq.ids import new_id
    from omniq.models import Task, TaskStatus
    from omniq.storage.urls import open_backends

    os.environ.update(env)

    async def run() -> tuple[int, float, float]:
        q, _, _ = open_backends(url)
        await q.connect()
        try:
            for i in range(0, n, 1000):
                await q.enqueue([Task(id=new_id(), payload=b"x" * 64) for _ in range(min(1000, n - i))])
            size = len((await q._read(0)).data)  # type: ignore[attr-defined]
            claims, finishes = [], []
            for _ in range(10):
                t0 = time.perf_counter()
                got = await q.claim("w", queues=None, limit=4, lease=60, now=time.time())
                claims.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await q.finish("w", [(t.id, TaskStatus.SUCCEEDED) for t in got], now=time.time())
                finishes.append(time.perf_counter() - t0)
            return size, statistics.median(claims), statistics.median(finishes)
        finally:
            await q.close()

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=300, help="tasks per run")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="proxy round trip (0: skip)")
    parser.add_argument("--idle-window", type=float, default=20.0)
    parser.add_argument("--backlog", type=int, default=10_000, help="queued tasks in one shard (0: skip)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bucket.md"))
    a = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="omniq-bench-bucket-"))
    rec = tmp / "requests.jsonl"
    rows: list[tuple[str, str]] = []
    try:
        with moto(rec) as endpoint:
            import fsspec

            env = aws_env(endpoint)
            fsspec.filesystem("s3", endpoint_url=endpoint, key="bench", secret="bench",
                              skip_instance_cache=True).mkdir(BUCKET)  # fmt: skip
            t_file = throughput(f"file://{tmp}/fq", {}, a.n)
            rows.append((f"two workers, {a.n} tasks, `file://` (same machine)",
                         f"{t_file:.2f} s = {a.n / t_file:.0f} tasks/s"))  # fmt: skip
            t_s3 = throughput(f"s3://{BUCKET}/run-{uuid.uuid4().hex[:8]}", env, a.n)
            rows.append((f"two workers, {a.n} tasks, `s3://` (moto, loopback)",
                         f"{t_s3:.2f} s = {a.n / t_s3:.0f} tasks/s ({t_s3 / t_file:.1f}x the time of file://)"))  # fmt: skip

            def start() -> None:
                recorder(endpoint, "reset-recording")
                recorder(endpoint, "start-recording")

            throughput(f"s3://{BUCKET}/count-{uuid.uuid4().hex[:8]}", env, a.n, before_run=start)
            recorder(endpoint, "stop-recording")
            sent = recorded(rec)
            kinds = Counter(m for m, _ in sent)
            rows.append(("requests per task (client + two workers, whole run)",
                         f"{len(sent) / a.n:.1f} ({', '.join(f'{k} {v / a.n:.1f}' for k, v in sorted(kinds.items()))})"))  # fmt: skip
            rate, idle_kinds = idle_rate(f"s3://{BUCKET}/idle-{uuid.uuid4().hex[:8]}", env,
                                         endpoint, rec, a.idle_window)  # fmt: skip
            rows.append((f"idle worker, requests/s over {a.idle_window:.0f} s", f"{rate:.2f} ({dict(idle_kinds)})"))
            if a.backlog:
                size, claim_s, finish_s = backlog(f"s3://{BUCKET}/backlog-{uuid.uuid4().hex[:8]}", env, a.backlog)
                rows.append((f"one shard holding {a.backlog:,} queued tasks: its size; a claim of 4, a finish (median of 10)",
                             f"{size / 1e6:.2f} MB ({size / a.backlog:.0f} B a task); {claim_s * 1e3:.0f} ms; {finish_s * 1e3:.0f} ms"))  # fmt: skip
            if a.rtt_ms > 0:
                with slow_link(endpoint, a.rtt_ms) as slow:
                    n = max(50, a.n // 3)
                    t_slow = throughput(f"s3://{BUCKET}/slow-{uuid.uuid4().hex[:8]}", aws_env(slow), n)
                    rows.append((f"two workers, {n} tasks, `s3://` behind a {a.rtt_ms:.0f} ms round trip",
                                 f"{t_slow:.2f} s = {n / t_slow:.0f} tasks/s"))  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"# Bucket task queue ({stamp})",
        "",
        f"`uv run python benchmarks/bench_bucket.py -n {a.n} --rtt-ms {a.rtt_ms:g} --backlog {a.backlog}`; {os.cpu_count()} CPUs, "
        f"load {load:.1f}; two `omniq worker --worker thread -c 4` processes, a client with no workers.",
        "",
        "| measure | figure |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
