"""A ``concurrent.futures.Future`` cheap enough to make one per task, 10,000 at a time.

A stock ``Future`` builds a ``threading.Condition`` (an RLock and a deque) in ``__init__``:
about half the cost of accepting a task. Ours share one condition per process, so creating
one is a few attribute stores. Because a shared condition is also woken for other futures,
``result`` and ``exception`` re-check their own state in a loop (the stock ones wait once).
Everything else — ``add_done_callback``, ``concurrent.futures.wait`` / ``as_completed``,
``asyncio.wrap_future`` — is the stock code, so these are drop-in ``Future`` objects.
``resolve_many`` finishes a batch under one lock acquisition and one ``notify_all``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import gc
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any, TypeVar

T = TypeVar("T")

_SHARED = threading.Condition()
_PINNED: set[cf.Future[Any]] = set()  # pending futures someone registered a callback on


class ResultFuture(cf.Future[T]):
    """A ``Future`` on the process-wide condition. ``since``: when its task was handed over
    (0: look its result up at once)."""

    # Slots, and the waiter list made only when a ``wait``/``as_completed`` asks: a pending
    # future is one small object, so 10,000 of them give the garbage collector little to walk.
    __slots__ = ("_done_callbacks", "_exception", "_result", "_state", "_w", "since")
    _condition = _SHARED

    def __init__(self) -> None:  # no super().__init__(): that is the condition we avoid
        self._state = PENDING
        self._result = None
        self._exception = None
        self._w: list[Any] | None = None
        self._done_callbacks: list[Any] = []
        self.since = 0.0

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        w = self._w
        if w is None:
            w = self._w = []
        return w

    def _wait_done(self, timeout: float | None) -> None:
        """Under the condition: return once final; ``TimeoutError`` past ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._state not in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED):
            if deadline is None:
                self._condition.wait()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise cf.TimeoutError()
            self._condition.wait(left)

    def result(self, timeout: float | None = None) -> T:
        try:
            with self._condition:
                self._wait_done(timeout)
                if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                    raise cf.CancelledError()
                if self._exception is not None:
                    raise self._exception
                return self._result  # type: ignore[return-value]
        finally:
            self = None  # type: ignore[assignment]  # no future <-> traceback cycle (as the stdlib)

    def add_done_callback(self, fn: Any) -> None:
        """As the stdlib's; and a pending future with a callback is kept alive until it is
        done (the instance holds futures weakly: only callers who wait keep them)."""
        if self._state == PENDING:
            _PINNED.add(self)
        super().add_done_callback(fn)

    def _invoke_callbacks(self) -> None:
        _PINNED.discard(self)
        super()._invoke_callbacks()  # type: ignore[misc]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        with self._condition:
            self._wait_done(timeout)
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                raise cf.CancelledError()
            return self._exception


def resolve_many(pairs: Iterable[tuple[cf.Future[T], T]]) -> None:
    """``set_result`` for many futures: one lock acquisition, one wake-up, then callbacks.
    Futures already final are left alone."""
    ours: list[cf.Future[T]] = []
    stock: list[tuple[cf.Future[T], T]] = []
    with _SHARED:
        for f, value in pairs:
            if f._condition is not _SHARED:
                stock.append((f, value))
            elif f._state == PENDING:
                f._result = value
                f._state = FINISHED
                for w in f._w or ():  # type: ignore[attr-defined]
                    w.add_result(f)
                ours.append(f)
        if ours:
            _SHARED.notify_all()
    for f in ours:
        f._invoke_callbacks()  # type: ignore[attr-defined]
    for f, value in stock:
        with contextlib.suppress(cf.InvalidStateError):
            f.set_result(value)


@contextlib.contextmanager
def bulk() -> Iterator[None]:
    """Pause the cyclic garbage collector while one call allocates tens of thousands of
    objects (tasks, futures, handles): otherwise collections keep walking every live object,
    which cost a 10,000-point sweep a third of its submit time. Nothing here makes cycles
    that need collecting; the collector resumes on exit."""
    global _bulk_depth, _bulk_restore
    with _bulk_lock:
        if _bulk_depth == 0:
            _bulk_restore = gc.isenabled()
            gc.disable()
        _bulk_depth += 1
    try:
        yield
    finally:
        with _bulk_lock:
            _bulk_depth -= 1
            if _bulk_depth == 0 and _bulk_restore:
                gc.enable()


# bulk() is entered from several threads at once (a sweep's follower, the kernel): the
# outermost one across all threads restores the collector to what it found
_bulk_lock = threading.Lock()
_bulk_depth = 0
_bulk_restore = False
