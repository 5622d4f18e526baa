"""Command line: ``omniq demo``, ``omniq worker``, ``omniq status``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from .errors import OmniQError


def _bar(done: int, failed: int, total: int, started: float, width: int = 30) -> str:
    frac = (done + failed) / total if total else 1.0
    fill = round(width * frac)
    elapsed = time.monotonic() - started
    eta = (elapsed / frac - elapsed) if 0 < frac < 1 else 0.0
    return (
        f"\r[{'#' * fill}{'.' * (width - fill)}] {done + failed}/{total} "
        f"done={done} failed={failed} elapsed={elapsed:5.1f}s eta={eta:4.1f}s"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from . import OmniQ
    from .demo import error_of, estimate_pi

    db = os.path.abspath(args.db)
    os.makedirs(os.path.dirname(db), exist_ok=True)
    grid = [(n, seed) for n in (20_000, 200_000, 1_000_000) for seed in range(4)]
    print(f"omniq demo: {len(grid)} Monte Carlo estimates of pi on {args.concurrency} process workers")
    print(f"tasks and results persisted in sqlite:///{db}")
    started = time.monotonic()
    with OmniQ(tasks=f"sqlite:///{db}", worker="process", concurrency=args.concurrency) as oq:
        ready = time.monotonic() - started
        handles = [oq.submit(estimate_pi, n, seed) for n, seed in grid]
        t0 = time.monotonic()
        while True:
            done = sum(1 for h in handles if h.done())
            sys.stderr.write(_bar(done, 0, len(handles), t0))
            sys.stderr.flush()
            if done == len(handles):
                break
            time.sleep(0.1)
        sys.stderr.write("\n")
        rows = []
        for (n, seed), h in zip(grid, handles):
            r = h.get()
            est = r.value if r.ok else float("nan")
            rows.append((n, seed, est, error_of(est) if r.ok else float("nan"), r.duration or 0.0, r.status.value))
    print(f"\n{'samples':>9} {'seed':>4} {'estimate':>10} {'|error|':>9} {'seconds':>8}  status")
    for n, seed, est, err, dur, st in rows:
        print(f"{n:>9} {seed:>4} {est:>10.6f} {err:>9.6f} {dur:>8.3f}  {st}")
    print(f"\nworker pool ready in {ready:.2f} s; all done in {time.monotonic() - started:.2f} s")
    return 0 if all(r[-1] == "succeeded" for r in rows) else 1


def cmd_worker(args: argparse.Namespace) -> int:
    """Run worker slots against shared storage until SIGTERM/SIGINT (twice: stop hard)."""
    import anyio

    from .config import configure_logging
    from .core import AsyncOmniQ

    # a worker is a service: its problems (lost connections, dead children) go to stderr
    configure_logging(os.environ.get("OMNIQ_LOG_LEVEL") or "WARNING")
    oq = AsyncOmniQ(
        tasks=args.tasks, results=args.results, events=args.events, worker=args.worker,
        concurrency=args.concurrency, queues=args.queues, lease=args.lease,
    )

    async def main() -> None:
        stop_count = 0
        stopped = anyio.Event()

        async def watch_signals() -> None:
            nonlocal stop_count
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop_count += 1
                    if stop_count == 1:
                        print("omniq worker: finishing running tasks (signal again to stop now)",
                              file=sys.stderr, flush=True)
                        stopped.set()
                    else:
                        print("omniq worker: stopping now", file=sys.stderr, flush=True)
                        os._exit(1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals)
            await oq.open()
            print(f"omniq worker: {oq.config.default_worker} x{oq.config.concurrency} on "
                  f"{_masked(oq.tasks_url)} queues={oq.config.queues or 'all'}", file=sys.stderr, flush=True)
            await stopped.wait()
            await _graceful(oq)
            tg.cancel_scope.cancel()

    anyio.run(main)
    return 0


async def _graceful(oq: Any) -> None:
    """Stop claiming, let running tasks finish, hand unstarted ones back."""
    w = oq._worker
    if w is not None:
        await w.stop(graceful=True)
        oq._worker = None
    await oq.close(drain=False)


def _masked(url: str) -> str:
    from .storage.base import masked

    return masked(url)


def cmd_status(args: argparse.Namespace) -> int:
    from . import OmniQ

    with OmniQ(tasks=args.tasks, results=args.results, events=args.events, concurrency=0) as oq:
        h = oq.health()
    if args.json:
        print(json.dumps(h, indent=2, default=str))
        return 0
    print(f"storage: {h['storage']['tasks']}")
    queues = h["queues"]
    statuses = ["pending", "queued", "running", "succeeded", "failed", "cancelled", "expired"]
    print(f"\n{'queue':<16}" + "".join(f"{s:>11}" for s in statuses))
    for q, counts in sorted(queues.items()):
        print(f"{q:<16}" + "".join(f"{counts.get(s, 0):>11}" for s in statuses))
    if not queues:
        print("(no tasks)")
    print("\nworkers:")
    for w in h["workers"]:
        age = time.time() - w["last_heartbeat"]
        print(f"  {w['id']:<48} {w['kind']:<8} slots={w['slots']} "
              f"{'alive' if w['alive'] else 'DEAD'} (heartbeat {age:.1f}s ago)")
    if not h["workers"]:
        print("  (none)")
    if h.get("schedules"):
        print("\nschedules:")
        for s in h["schedules"]:
            print(f"  {s}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omniq", description="OmniQ task queue")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run a small parameter grid on process workers")
    d.add_argument("--db", default=os.path.join(".omniq", "demo.db"), help="SQLite file (default .omniq/demo.db)")
    d.add_argument("-c", "--concurrency", type=int, default=2)
    d.set_defaults(fn=cmd_demo)

    w = sub.add_parser("worker", help="run worker slots against shared storage")
    w.add_argument("--tasks", required=True, help="task queue URL")
    w.add_argument("--results", default=None, help="result storage URL (default: same as --tasks)")
    w.add_argument("--events", default=None, help="event storage URL (default: same as --tasks)")
    w.add_argument("--queues", default=None, help="comma-separated queues to take from (default: all)")
    w.add_argument("--worker", default="process", choices=["async", "thread", "process", "gevent"])
    w.add_argument("-c", "--concurrency", type=int, default=os.cpu_count() or 2)
    w.add_argument("--lease", type=float, default=None, help="lease seconds (default from config)")
    w.set_defaults(fn=cmd_worker)

    s = sub.add_parser("status", help="queue depths by status, workers, schedules")
    s.add_argument("--tasks", default=None, help="task queue URL (default from config/env)")
    s.add_argument("--results", default=None)
    s.add_argument("--events", default=None)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except OmniQError as exc:
        print(f"omniq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
