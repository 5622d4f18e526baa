"""Many small results on S3: one bounded-concurrent call vs a sequential loop.

Starts a local S3-compatible server (``moto_server`` from moto[server]) unless ``--endpoint``
names one, writes N small results (with sweep keys) with ``put_results(all)`` and with a loop
of ``put_results([one])``, reads them back with ``get_results(all)`` and with a loop of
``get_result(one)``, and prints the times and ratios (target: >= 5x for both).

moto answers every request in Python (about 3 ms of CPU each), so on a small machine it is the
bottleneck and caps what any client gains from concurrency. ``--rtt-ms`` (default 20) runs the
same measurement a second time through a loopback proxy that delays each request and response
by that round trip, as a real S3 region does (10-50 ms for a small object); ``--rtt-ms 0``
skips it.

    uv run python benchmarks/bench_fsspec.py [-n 1000] [--rtt-ms 20] [--file]
                                             [--endpoint http://127.0.0.1:9000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio

from omniq.ids import new_ids
from omniq.models import TaskResult, TaskStatus
from omniq.storage.fsspec import FsspecBackend

BUCKET = "omniq-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(argv: list[str], endpoint: str) -> Iterator[str]:
    """Run a server process until the block ends; yields its endpoint once it answers."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


def local_s3() -> contextlib.AbstractContextManager[str]:
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    return serve([exe, "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}")


def slow_link(target: str, rtt_ms: float) -> contextlib.AbstractContextManager[str]:
    """A proxy in front of ``target`` that adds ``rtt_ms`` to every request/response."""
    port = free_port()
    host, tport = target.rsplit("//", 1)[1].split(":")
    argv = [sys.executable, __file__, "--proxy", str(port), host, tport, str(rtt_ms)]
    return serve(argv, f"http://127.0.0.1:{port}")


def proxy_main(port: int, host: str, target_port: int, rtt_ms: float) -> None:
    half = rtt_ms / 2000

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                await asyncio.sleep(half)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(host, target_port)
        await asyncio.gather(pump(cr, sw), pump(sr, cw))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def results(n: int) -> list[TaskResult]:
    return [
        TaskResult(
            task_id=tid,
            status=TaskStatus.SUCCEEDED,
            payload=b"\x01" + os.urandom(64),
            attempts=1,
            started_at=1.0,
            finished_at=2.0,
            key=f"bench/p{i}",
        )
        for i, tid in enumerate(new_ids(n))
    ]


async def run(url: str, n: int) -> dict[str, float]:
    backend = FsspecBackend(url)
    await backend.connect()
    try:
        seq_rs, batch_rs = results(n), results(n)
        t0 = time.perf_counter()
        for r in seq_rs:
            await backend.put_results([r])
        put_seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        await backend.put_results(batch_rs)
        put_batch = time.perf_counter() - t0

        ids = [r.task_id for r in batch_rs]
        t0 = time.perf_counter()
        for tid in ids:
            assert await backend.get_result(tid) is not None
        get_seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = await backend.get_results(ids)
        get_batch = time.perf_counter() - t0
        assert len(got) == n
    finally:
        await backend.close()
    return {"put_seq": put_seq, "put_batch": put_batch, "get_seq": get_seq, "get_batch": get_batch}


def report(label: str, n: int, t: dict[str, float]) -> None:
    print(f"{label}: {n} small results")
    print(f"  write  sequential put loop  {t['put_seq']:7.3f} s   ({n / t['put_seq']:8.0f}/s)")
    print(
        f"  write  put_results(all)     {t['put_batch']:7.3f} s   ({n / t['put_batch']:8.0f}/s)"
        f"   ratio {t['put_seq'] / t['put_batch']:5.1f}x"
    )
    print(f"  read   sequential get loop  {t['get_seq']:7.3f} s   ({n / t['get_seq']:8.0f}/s)")
    print(
        f"  read   get_results(all)     {t['get_batch']:7.3f} s   ({n / t['get_batch']:8.0f}/s)"
        f"   ratio {t['get_seq'] / t['get_batch']:5.1f}x"
    )


def main() -> None:
    if sys.argv[1:2] == ["--proxy"]:
        port, host, tport, rtt = sys.argv[2:6]
        proxy_main(int(port), host, int(tport), float(rtt))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--endpoint", help="an S3 endpoint to use instead of a local moto_server")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="proxy round trip (0: none)")
    parser.add_argument("--file", action="store_true", help="also measure file:// in a temp dir")
    args = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with contextlib.ExitStack() as stack:
        endpoint = args.endpoint or stack.enter_context(local_s3())
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        if not fs.exists(BUCKET):
            fs.mkdir(BUCKET)
        url = f"s3://{BUCKET}/run-{uuid.uuid4().hex[:8]}"
        report(f"{url} at {endpoint} (moto, direct)", args.n, anyio.run(run, url, args.n))
        if args.rtt_ms > 0:
            with slow_link(endpoint, args.rtt_ms) as slow:
                os.environ["AWS_ENDPOINT_URL"] = slow
                url = f"s3://{BUCKET}/run-{uuid.uuid4().hex[:8]}"
                report(
                    f"{url} at {slow} (moto behind a {args.rtt_ms:g} ms round trip)",
                    args.n,
                    anyio.run(run, url, args.n),
                )
    if args.file:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            report(f"file://{tmp}", args.n, anyio.run(run, f"file://{tmp}", args.n))


if __name__ == "__main__":
    main()
