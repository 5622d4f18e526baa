"""Retrying a call across a lost connection: the back-off the server backends share.

PostgreSQL, Redis and NATS each run a call again after the connection dropped (a server
restart, a network cut), pausing between attempts with a doubling back-off, until the call
works or ``reconnect_timeout`` seconds have passed since it first failed; then they raise a
``StorageError`` saying they gave up. What counts as a lost connection, and what a retry must
take over from an attempt whose reply was lost, is each backend's; the timing is this.
"""

from __future__ import annotations

import time


class Backoff:
    """The pauses of one call's retries.

    ``first``: the first pause (0 with ``at_once``, then ``first``), doubling up to ``cap``;
    every pause is cut to the time left. The clock starts at the first :meth:`expired` (the
    first failure), not when the object is made.
    """

    __slots__ = ("_at_once", "_cap", "_delay", "deadline", "timeout")

    def __init__(self, timeout: float, *, first: float, cap: float = 1.0, at_once: bool = False) -> None:
        self.timeout = timeout
        self.deadline: float | None = None
        self._delay = first
        self._cap = cap
        self._at_once = at_once

    def expired(self) -> bool:
        """Whether ``timeout`` seconds have passed since the first failure (starting the clock
        on the first call)."""
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.timeout
        return now >= self.deadline

    def pause(self) -> float:
        """Seconds to wait before the next attempt (and the back-off moves on)."""
        if self.deadline is None:
            self.expired()
        assert self.deadline is not None
        left = max(self.deadline - time.monotonic(), 0.0)
        if self._at_once:
            self._at_once = False
            return 0.0
        pause = min(self._delay, left)
        self._delay = min(self._delay * 2, self._cap)
        return pause


__all__ = ["Backoff"]
