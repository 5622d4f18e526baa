"""``omniq dashboard``: its options and what it runs. Importing this module imports neither
Starlette nor uvicorn (``omniq --help`` works without the ``dashboard`` extra)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from .options import TOKEN_ENV, choose_token, missing_extra

STORAGE_OPEN_TIMEOUT = 10.0


def add_parser(sub: Any, port: Callable[[str], int]) -> None:
    """Add ``omniq dashboard`` to the ``omniq`` command's subparsers; ``port`` is the command's
    parser of a port number (the one ``omniq worker --metrics-port`` takes)."""
    d = sub.add_parser(
        "dashboard", help="serve the web dashboard: queues, workers, tasks, schedules, sweeps",
        description="Serve the OmniQ dashboard (like Celery's Flower or rq-dashboard): queues with "
                    "counts by status, workers, schedules, failures, sweeps; a task list and each "
                    "task's detail with Retry and Cancel. Live updates without reloading. Needs the "
                    "'dashboard' extra (pip install 'omniq[dashboard]').")
    d.add_argument("--config", default=None, metavar="YAML",
                   help="YAML config file (keys as in OmniQConfig); OMNIQ_* variables and flags override it")
    d.add_argument("--tasks", default=None, help="task queue URL (default from config/env: OMNIQ_TASK_QUEUE_TYPE)")
    d.add_argument("--results", default=None, help="result storage URL (default from config/env, else --tasks)")
    d.add_argument("--events", default=None, help="event storage URL (default from config/env, else --tasks)")
    d.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other address requires a token)")
    d.add_argument("--port", type=port, default=8765, help="port (default 8765; 0 picks a free one)")
    d.add_argument("--token", default=None,
                   help=f"token every request must carry (?token=T once, then a cookie); default: "
                        f"${TOKEN_ENV}, else none on loopback and a generated one beyond it")
    d.add_argument("--root-path", default="", metavar="PREFIX",
                   help="URL prefix when served behind a proxy (jupyter-server-proxy sets it)")
    d.add_argument("--unix-socket", default=None, metavar="PATH",
                   help="listen on this Unix socket (mode 0600) instead of --host/--port, for a proxy "
                        "that authenticates (jupyter-server-proxy sets it); no token is needed there")
    d.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT / SIGTERM; 0 then, 1 when the port or the storage cannot be used."""
    from ...errors import ConfigError, StorageError

    problem = missing_extra()
    if problem:
        raise ConfigError(problem)
    token = choose_token(args.host, args.token if args.token is not None else os.environ.get(TOKEN_ENV))
    if args.root_path and (not args.root_path.startswith("/") or any(c in args.root_path for c in "?#\\ ")):
        raise ConfigError(f"--root-path {args.root_path!r} is not valid: expected a URL path such as "
                          "/user/ada/omniq-dashboard (starting with /, no query)")

    import anyio

    from ...config import configure_logging
    from ...core import AsyncOmniQ
    from ...redact import masked
    from .server import Dashboard

    configure_logging(os.environ.get("OMNIQ_LOG_LEVEL") or "WARNING")
    oq = AsyncOmniQ(config=args.config, tasks=args.tasks, results=args.results, events=args.events,
                    concurrency=0)
    missing = missing_sqlite(oq.tasks_url, oq.results_url, oq.events_url)
    if missing:  # a dashboard only reads: a mistyped path is named, not created
        print(f"omniq dashboard: no storage at {masked(missing)}: the file does not exist "
              "(check the URL; a worker or an OmniQ creates it on first use)", file=sys.stderr)
        return 1
    unix_socket = getattr(args, "unix_socket", None)
    dash = Dashboard(oq, host=args.host, port=args.port, token=token, root_path=args.root_path,
                     unix_socket=unix_socket)
    try:
        dash.bind()
    except OSError as exc:
        where = unix_socket or f"{args.host}:{args.port}"
        print(f"omniq dashboard: cannot listen on {where}: {exc.strerror or exc} "
              f"({'choose another path' if unix_socket else 'choose another --port; 0 picks a free one'})",
              file=sys.stderr)
        return 1

    async def main() -> None:
        # pages, the event subscription and the storage watch all open the instance on first use
        # when the storage was down at start: one at a time (two would connect twice)
        opening = anyio.Lock()
        first_open = oq.open

        async def open_once() -> None:
            async with opening:
                await first_open()

        setattr(oq, "open", open_once)  # noqa: B010 (this process's own instance)
        try:
            with anyio.fail_after(STORAGE_OPEN_TIMEOUT):
                await oq.open()
        except (StorageError, OSError, TimeoutError) as exc:  # served anyway: the page says so
            why = str(exc) or f"no answer within {STORAGE_OPEN_TIMEOUT:g} s"
            print(f"omniq dashboard: storage not answering ({why}); the pages show a banner until "
                  "it answers", file=sys.stderr, flush=True)
        try:
            if unix_socket is not None:
                where = f" on Unix socket {unix_socket}, at {args.root_path or '/'} behind the proxy"
            elif args.root_path:
                where = " (and through a proxy that strips the prefix)"
            else:
                where = ""
            print(f"omniq dashboard: {dash.url_with_token}{where} (storage {masked(oq.tasks_url)}; "
                  "Ctrl-C stops)", flush=True)
            if token is not None and args.token is None and os.environ.get(TOKEN_ENV) is None:
                print("omniq dashboard: a token was generated; open the URL above once, the browser "
                      "keeps it in a cookie", flush=True)
            await dash.serve()
        finally:
            with anyio.CancelScope(shield=True):
                await oq.close()

    # uvicorn turns SIGINT / SIGTERM into a graceful stop while it serves, then raises the signal
    # again for the handler it found: let that be a no-op, so the storage is closed and the
    # command exits 0 instead of dying by the re-raised signal
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        anyio.run(main)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _ignore(signum: int, frame: Any) -> None:
    """The handler uvicorn finds (and calls again) once it has stopped on a signal."""


def missing_sqlite(*urls: str) -> str | None:
    """The first ``sqlite://`` URL among ``urls`` whose file does not exist."""
    from ...storage.sqlite import parse_url

    for url in dict.fromkeys(urls):
        if url.lower().startswith("sqlite://"):
            path = parse_url(url)
            if path != ":memory:" and not os.path.exists(path):
                return url
    return None
