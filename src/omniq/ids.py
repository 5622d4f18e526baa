"""Time-ordered, process-unique task ids.

An id is 16 hex digits of nanoseconds since the epoch (strictly increasing within a process)
followed by 8 hex digits chosen at random per process, so ids sort by creation time and two
processes never collide without coordinating.

Examples:
    >>> from omniq.ids import id_time, new_id
    >>> a, b = new_id(), new_id()
    >>> len(a), a < b, a[16:] == b[16:]      # later sorts later; same process, same suffix
    (24, True, True)
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
    """Return a new time-ordered id (24 lowercase hex characters).

    Returns:
        An id greater than every id this process made before, even if the clock stepped back.

    Examples:
        >>> from omniq.ids import new_id
        >>> tid = new_id()
        >>> len(tid), int(tid, 16) > 0
        (24, True)
    """
    global _last
    with _lock:
        now = time.time_ns()
        if now <= _last:
            now = _last + 1
        _last = now
    return f"{now:016x}{_token}"


def new_ids(n: int) -> list[str]:
    """Return ``n`` consecutive ids with one lock round (for batch enqueue).

    Args:
        n: how many (0 gives an empty list).

    Returns:
        ``n`` increasing ids, each as ``new_id()`` would make it.

    Examples:
        >>> from omniq.ids import new_ids
        >>> ids = new_ids(3)
        >>> len(ids), ids == sorted(ids), len(set(ids))
        (3, True, 3)
    """
    global _last
    with _lock:
        start = max(time.time_ns(), _last + 1)
        _last = start + n - 1
    return list(map(("%016x" + _token).__mod__, range(start, start + n)))  # (the token is hex)


def id_time(task_id: str) -> float:
    """Creation time (epoch seconds) encoded in an id.

    Args:
        task_id: an id made by ``new_id`` / ``new_ids`` (a task id).

    Returns:
        Seconds since the epoch, as ``time.time()`` gave them when the id was made.

    Raises:
        ValueError: the id does not start with 16 hex digits.

    Examples:
        >>> import time
        >>> from omniq.ids import id_time, new_id
        >>> abs(id_time(new_id()) - time.time()) < 5
        True
    """
    return int(task_id[:16], 16) / 1e9
