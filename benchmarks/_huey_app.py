"""The huey application for the benchmark: imported by the harness *and* by ``huey_consumer``.

Huey registers tasks by import path, so the consumer (a separate process) must import the same
module. Functions travel as ``dill.dumps(fn, recurse=True)`` through one ``call_dill`` task,
exactly as for ProcessPoolExecutor+dill, so closures defined in ``__main__`` work too; ``noop``
is a native huey task (for the enqueue-only comparison). The consumer's database file is named
by ``OMNIQ_BENCH_HUEY_DB``.
"""

from __future__ import annotations

import os
from typing import Any

from huey import SqliteHuey
from huey.api import TaskWrapper

import workloads


def make(filename: str) -> tuple[SqliteHuey, TaskWrapper, TaskWrapper]:
    """A ``SqliteHuey`` on ``filename`` with the benchmark's two tasks registered."""
    app = SqliteHuey("omniq-bench", filename=filename, timeout=30)  # busy timeout: 2 cores, loaded

    @app.task(name="call_dill")
    def call_dill(blob: bytes, args: tuple[Any, ...]) -> Any:
        return workloads.call_dill(blob, *args)

    @app.task(name="noop")
    def noop(x: Any = None) -> Any:
        return x

    return app, call_dill, noop


huey, call_dill, noop = make(os.environ.get("OMNIQ_BENCH_HUEY_DB", "huey-bench.db"))
