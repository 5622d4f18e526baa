"""Task functions the benchmark ships to workers, importable by every peer's children.

These live in a module (not in ``__main__``) on purpose: they travel *by reference*, the way
a function from the user's own package does. The notebook-style closure lives in ``run.py``
(the harness script is ``__main__``), so it must travel *by value*.

``run.py`` puts this directory on ``PYTHONPATH`` before any pool starts, so spawned children
(ProcessPoolExecutor, loky, Dask nannies, ipyparallel engines, the huey consumer, OmniQ's
``python -m omniq.workers.child``) can all import ``workloads``.
"""

from __future__ import annotations

import os
import time
from typing import Any


def noop(x: Any = None) -> Any:
    """The no-op task: returns its argument (not ``None``, so every peer's "no result yet"
    cannot be mistaken for a result)."""
    return x


def sleep10(x: Any = None) -> Any:
    """A 10 ms task (sleeping, so two workers on two cores finish 200 of them in 1.0 s)."""
    time.sleep(0.01)
    return x


def pid(delay: float = 0.0) -> int:
    """The worker's process id, after ``delay`` seconds (warm-up: makes every worker take one)."""
    if delay:
        time.sleep(delay)
    return os.getpid()


def call_dill(blob: bytes, *args: Any) -> Any:
    """Trampoline for peers without by-value function shipping: ``dill.loads`` the function
    (written with ``dill.dumps(fn, recurse=True)``) in the child and call it."""
    import dill

    return dill.loads(blob)(*args)


def point(a: Any, b: Any) -> Any:
    """A sweep point."""
    return a * b
