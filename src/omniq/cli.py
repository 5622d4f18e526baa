"""Command line: ``omniq demo``, ``omniq worker``, ``omniq status``; the operator's commands
(``omniq tasks | show | retry | cancel | purge | schedules``) are in ``cli_ops.py``.

``omniq status`` lists, where SLURM is installed, the ``omniq.hpc`` worker jobs serving the
queue (by the storage tag in their job names), beside the workers' heartbeats.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .cli_ops import add_parsers as add_ops
from .cli_ops import missing_local_storage
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
    from .core import OmniQ
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
    from .events.metrics import bound_port, open_listener, serve_prometheus

    # a worker is a service: its problems (lost connections, dead children) go to stderr
    configure_logging(os.environ.get("OMNIQ_LOG_LEVEL") or "WARNING")
    oq = AsyncOmniQ(
        config=args.config,
        tasks=args.tasks, results=args.results, events=args.events, worker=args.worker,
        concurrency=args.concurrency, queues=args.queues, lease=args.lease,
        memory_limit=args.memory_limit,
    )
    if oq.tasks_url.lower().startswith("memory://"):
        from .errors import ConfigError

        raise ConfigError(
            f"--tasks {oq.tasks_url} is memory inside this worker's own process: nothing else can "
            "enqueue to it. Give a task queue other processes reach: sqlite:///path.db, file:///dir, "
            "postgresql://, redis:// or nats://")

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

        async def watch_idle(limit: float) -> None:
            """Leave (as on SIGTERM) once no task was held for ``limit`` seconds."""
            last_busy = time.monotonic()
            while not stopped.is_set():
                await anyio.sleep(min(1.0, limit / 4))
                w = oq.worker
                if w is not None and w.runner.held():
                    last_busy = time.monotonic()
                elif time.monotonic() - last_busy >= limit:
                    print(f"omniq worker: no task for {limit:g} s; leaving", file=sys.stderr, flush=True)
                    stopped.set()

        # outside the task group, so errors reach main() as themselves: the port first (a port
        # in use is said before any work), then storage
        listener = None
        if args.metrics_port is not None:
            listener = await open_listener(args.metrics_host, args.metrics_port)
        await oq.open()
        limit = oq.config.memory_limit
        print(f"omniq worker: {oq.config.default_worker} x{oq.config.concurrency} on "
              f"{_masked(oq.tasks_url)} queues={oq.config.queues or 'all'}"
              + (f" memory_limit={_size_text(limit)}" if limit else ""), file=sys.stderr, flush=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals)
            if listener is not None:
                tg.start_soon(serve_prometheus, _metrics_text(oq), listener)
                print(f"omniq worker: metrics on http://{args.metrics_host}:{bound_port(listener)}/metrics",
                      file=sys.stderr, flush=True)
            if args.idle_timeout is not None:
                tg.start_soon(watch_idle, args.idle_timeout)
            try:
                await stopped.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    await _graceful(oq, args.grace)
                tg.cancel_scope.cancel()

    anyio.run(main)
    return 0


def _metrics_text(oq: Any) -> Callable[[], str]:
    def render() -> str:
        w = oq.worker
        gauges = {
            "omniq_worker_slots": ("Task slots of this worker.", float(oq.config.concurrency)),
            "omniq_worker_tasks_held": ("Tasks this worker holds (running or prefetched).",
                                        float(len(w.runner.held())) if w is not None else 0.0),
        }
        return oq.metrics.prometheus(gauges)

    return render


async def _graceful(oq: Any, grace: float | None = None) -> None:
    """Stop claiming, let running tasks finish, hand unstarted ones back. With ``grace``:
    tasks still running after that many seconds are stopped and handed back too (queued again
    for another worker, not counted as a delivery or a failure)."""
    import anyio

    w = oq.worker
    if w is not None:
        if grace is not None:
            w._claiming = False  # (as Worker.stop does first) no new task while the grace runs
            with anyio.move_on_after(grace):
                while w.runner.held():
                    await anyio.sleep(0.05)
            if w.runner.held():
                print(f"omniq worker: tasks still running after {grace:g} s; handing them back",
                      file=sys.stderr, flush=True)
        await w.stop(graceful=grace is None or not w.runner.held())
        oq.session.worker = None
    await oq.close(drain=False)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: expected 0-65535 (0 picks a free one)")
    return port


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def _size(text: str) -> int:
    from .config.sizes import SIZE_TEXT, size_or_none

    size = size_or_none(text)
    if size is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: expected {SIZE_TEXT}")
    return size


def _size_text(n: int) -> str:
    from .config.sizes import format_size

    return format_size(n)


def _masked(url: str) -> str:
    from .storage.base import masked

    return masked(url)


_CONFIG_HELP = ("YAML config file (keys as in OmniQConfig); OMNIQ_* variables and flags override it. "
                "Put URLs with passwords here or in OMNIQ_* variables, not in flags: flags show in ps")


def cmd_status(args: argparse.Namespace) -> int:
    """Exit status 0 when every storage answers, 1 when one does not (usable as a probe),
    2 for a bad argument."""
    from .core import OmniQ
    from .errors import StorageError

    oq = OmniQ(tasks=args.tasks, results=args.results, events=args.events, concurrency=0,
               config=args.config)
    missing = missing_local_storage((oq.core.tasks_url, oq.core.results_url, oq.core.events_url))
    if missing:  # a read-only command creates nothing: a typo'd path is named, not made
        print(f"omniq status: no storage at {_masked(missing[0])}: {missing[1]} does not exist "
              "(check the URL; a worker or an OmniQ creates it on first use)", file=sys.stderr)
        return 1
    try:
        with oq:
            h = oq.health()
    except StorageError as exc:  # unreachable: 1, like a storage health() reports down
        print(f"omniq status: {exc}", file=sys.stderr)
        return 1
    jobs = slurm_jobs(oq.core.tasks_url)
    if jobs is not None:
        h["slurm_jobs"] = jobs
    if args.json:
        print(json.dumps(h, indent=2, default=str))
    else:
        print(status_report(h))
    return 0 if h["ok"] else 1


def slurm_jobs(tasks_url: str) -> list[dict[str, Any]] | None:
    """The SLURM jobs (``omniq.hpc`` pools, from any process of this user) serving ``tasks_url``,
    found by the storage tag in their names; None where SLURM's ``squeue`` is not installed or
    reaches no cluster (status works the same without SLURM, and says nothing of it)."""
    import dataclasses
    import shutil

    if shutil.which("squeue") is None:
        return None
    from .hpc import JobSystemError, omniq_jobs

    try:
        return [dataclasses.asdict(j) for j in omniq_jobs(tasks=tasks_url, strict=True)]
    except JobSystemError:
        return None


def status_report(h: dict[str, Any]) -> str:
    """``omniq status`` for people: storage, queues, workers, overrun leases, schedules."""
    now = h["time"]
    lines = ["storage:"]
    for part, p in h["storage"].items():
        state = f"ok ({p['latency_ms']:.1f} ms)" if p["ok"] else f"UNREACHABLE: {p['error']}"
        lines.append(f"  {part:<8} {p['url']}  {state}")
    statuses = ["pending", "queued", "running", "succeeded", "failed", "cancelled", "expired"]
    lines.append(f"\n{'queue':<16}" + "".join(f"{s:>11}" for s in statuses) + f"{'oldest queued':>15}")
    for q, counts in sorted(h["queues"].items()):
        age = h["oldest_queued_age"].get(q)
        lines.append(f"{q:<16}" + "".join(f"{counts.get(s, 0):>11}" for s in statuses)
                     + (f"{age:>14.1f}s" if age is not None else f"{'-':>15}"))
    if not h["queues"]:
        lines.append("(no tasks)")
    lines.append("\nworkers:")
    for w in h["workers"]:
        short = f" SHORT of {w['missing']} (a child could not be replaced)" if w.get("missing") else ""
        job = f" job {w['job']}" if w.get("job") else ""
        lines.append(f"  {w['id']:<48} {w['kind']:<8} slots={w['slots']}{job} "
                     f"{'alive' if w['alive'] else 'DEAD'} (heartbeat {now - w['last_heartbeat']:.1f}s ago){short}")
    if not h["workers"]:
        lines.append("  (none)")
    if "slurm_jobs" in h:  # only where SLURM is installed
        jobs = h["slurm_jobs"]
        lines.append(f"\nSLURM jobs serving this queue ({len(jobs)}):")
        for j in jobs:
            where = f" on {j['node']}" if j.get("node") else ""
            why = f" ({j['reason']})" if j.get("reason") and j["state"] == "PENDING" else ""
            lines.append(f"  {j['id']:<16} {j['state'].lower()}{why}{where}  {j['name']}")
        if not jobs:
            lines.append("  (none)")
    overrun = h.get("leases_overrun")
    if overrun:
        lines.append(f"\nleases overrun in the last hour ({len(overrun)}): the worker died or hung")
        lines += [f"  {o['task_id']} queue={o['queue']} worker={o['worker'] or '-'} {o['outcome']} "
                  f"{now - o['at']:.1f}s ago" for o in overrun]
    if h.get("schedules"):
        lines.append("\nschedules:")
        for s in h["schedules"]:
            state = "paused" if s["paused"] else f"next {s['next_run']}"
            lines.append(f"  {s['name']:<24} {s['spec']:<24} {state}  last {s['last_run'] or '-'}"
                         f" ({s.get('last_outcome') or 'never ran'})")
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("omniq")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omniq", description="OmniQ task queue")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run a small parameter grid on process workers")
    d.add_argument("--db", default=os.path.join(".omniq", "demo.db"), help="SQLite file (default .omniq/demo.db)")
    d.add_argument("-c", "--concurrency", type=int, default=2)
    d.set_defaults(fn=cmd_demo)

    w = sub.add_parser("worker", help="run worker slots against shared storage")
    w.add_argument("--config", default=None, metavar="YAML", help=_CONFIG_HELP)
    w.add_argument("--tasks", default=None, help="task queue URL (default from config/env: OMNIQ_TASK_QUEUE_TYPE)")
    w.add_argument("--results", default=None,
                   help="result storage URL (default from config/env: OMNIQ_RESULT_STORAGE_TYPE, else --tasks)")
    w.add_argument("--events", default=None,
                   help="event storage URL (default from config/env: OMNIQ_EVENT_STORAGE_TYPE, else --tasks)")
    w.add_argument("--queues", default=None, help="comma-separated queues to take from (default: all)")
    w.add_argument("--worker", default="process", choices=["async", "thread", "process", "gevent"])
    w.add_argument("-c", "--concurrency", type=int, default=os.cpu_count() or 2)
    w.add_argument("--lease", type=float, default=None, help="lease seconds (default from config)")
    w.add_argument("--memory-limit", type=_size, default=None, metavar="SIZE",
                   help="memory a task may use, e.g. 4GB or '512 MiB', for tasks without their own "
                        "memory_limit; over it a task fails naming the limit (default from config: none)")
    w.add_argument("--metrics-port", type=_port, default=None,
                   help="serve Prometheus metrics on this port (0: any free port; default: off)")
    w.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    w.add_argument("--idle-timeout", type=_positive, default=None, metavar="SECONDS",
                   help="exit after this long with no task to run (default: never)")
    w.add_argument("--grace", type=_positive, default=None, metavar="SECONDS",
                   help="on SIGTERM, give running tasks this long to finish, then stop them and hand "
                        "them back to the queue (default: wait for them)")
    w.set_defaults(fn=cmd_worker)

    s = sub.add_parser("status", help="queue depths by status, workers, SLURM jobs, schedules")
    s.add_argument("--config", default=None, metavar="YAML", help=_CONFIG_HELP)
    s.add_argument("--tasks", default=None, help="task queue URL (default from config/env: OMNIQ_TASK_QUEUE_TYPE)")
    s.add_argument("--results", default=None, help="result storage URL (default from config/env)")
    s.add_argument("--events", default=None, help="event storage URL (default from config/env)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_status)

    add_ops(sub)  # tasks, show, retry, cancel, purge, schedules (cli_ops.py)

    from .integrations.dashboard.command import add_parser as add_dashboard  # (no Starlette import)

    add_dashboard(sub, _port)
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
