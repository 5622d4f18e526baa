"""Module-level task functions for the tests (importable by reference in child processes)."""

from __future__ import annotations

import asyncio
import os


def square(x):
    return x * x


async def async_double(x):
    await asyncio.sleep(0.01)
    return 2 * x


def die():
    os._exit(3)


def pid(_=None):
    return os.getpid()


def _write_pid(path):
    """``path`` appears holding this pid, never empty (a test waiting for it reads it at once)."""
    with open(f"{path}.{os.getpid()}.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(f.name, path)


def touch_then_sleep(path, seconds):
    import time

    _write_pid(path)
    time.sleep(seconds)
    return seconds


def sleep_return(seconds, value=None):
    import time

    time.sleep(seconds)
    return value if value is not None else seconds


def boom_once_then(marker_path):
    """Fails the first time (creating the marker), succeeds after."""
    if not os.path.exists(marker_path):
        open(marker_path, "w").close()
        raise RuntimeError("first attempt fails")
    return "ok"


def nap(seconds):
    """Sleep; returns (pid, started, finished) so a test can see where and when it ran."""
    import time

    t0 = time.time()
    time.sleep(seconds)
    return os.getpid(), t0, time.time()


def touch_sleep_touch(started_path, seconds, finished_path):
    """Write this pid to ``started_path``, sleep, then create ``finished_path``."""
    import time

    _write_pid(started_path)
    time.sleep(seconds)
    open(finished_path, "w").close()


def examples(n):
    """A property test's example count: ``n``, ten times that under the ``explore`` Hypothesis
    profile (tests/conftest.py)."""
    return n * 10 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else n


def hog(mb, hold=30.0):
    """Take ``mb`` MB of memory a chunk at a time, then hold it."""
    import time

    chunks = []
    for _ in range(mb // 10):
        chunks.append(bytearray(10 << 20))  # touched: zero-filled pages count
        time.sleep(0.005)
    time.sleep(hold)
    return len(chunks)
