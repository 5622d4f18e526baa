"""Time-ordered, process-unique task ids.

An id is 16 hex digits of nanoseconds since the epoch (strictly increasing within a process)
followed by 8 hex digits chosen at random per process, so ids sort by creation time and two
processes never collide without coordinating.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

_lock = threading.Lock()
_last = 0
_token = secrets.token_hex(4)
_pid = os.getpid()


def _reseed() -> None:
    global _token, _pid
    _token = secrets.token_hex(4)
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """Return a new time-ordered id (24 lowercase hex characters)."""
    global _last
    with _lock:
        now = time.time_ns()
        if now <= _last:
            now = _last + 1
        _last = now
    return f"{now:016x}{_token}"


def new_ids(n: int) -> list[str]:
    """Return ``n`` consecutive ids with one lock round (for batch enqueue)."""
    global _last
    with _lock:
        start = max(time.time_ns(), _last + 1)
        _last = start + n - 1
    return list(map(("%016x" + _token).__mod__, range(start, start + n)))  # (the token is hex)


def id_time(task_id: str) -> float:
    """Creation time (epoch seconds) encoded in an id."""
    return int(task_id[:16], 16) / 1e9
