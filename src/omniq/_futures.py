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
import sys
import threading
import time
import weakref
from _weakref import _remove_dead_weakref  # type: ignore[attr-defined]
from collections.abc import Iterable, Iterator
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any, TypeVar

T = TypeVar("T")

if sys.version_info >= (3, 11):
    FutureTimeout = TimeoutError  # what concurrent.futures.TimeoutError is from 3.11
else:

    class FutureTimeout(cf.TimeoutError, TimeoutError):
        """Before 3.11 ``concurrent.futures.TimeoutError`` is not the builtin ``TimeoutError``
        the docs promise: this one is both, so either ``except`` catches it."""


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
                raise FutureTimeout()
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


class WeakFutures:
    """Task id -> future, held weakly: only callers who wait keep a future alive. Plain
    ``weakref.ref`` values (no callback) cost a quarter of ``WeakValueDictionary``'s keyed refs,
    which matters at 10,000 per ``map``; dead entries are swept in bulk as the map grows, by the
    C-level ``_remove_dead_weakref``, so any thread may add or sweep at once."""

    __slots__ = ("_data", "_sweep_at")

    def __init__(self) -> None:
        self._data: dict[str, weakref.ref[ResultFuture[Any]]] = {}
        self._sweep_at = 4096

    def add_many(self, items: Iterable[tuple[str, ResultFuture[Any]]]) -> None:
        ref = weakref.ref
        data = self._data
        for key, f in items:
            data[key] = ref(f)
        if len(data) >= self._sweep_at:
            self.sweep()

    def __setitem__(self, key: str, f: ResultFuture[Any]) -> None:
        self.add_many(((key, f),))

    def get(self, key: str) -> ResultFuture[Any] | None:
        r = self._data.get(key)
        return None if r is None else r()

    def pop(self, key: str, default: None = None) -> ResultFuture[Any] | None:
        r = self._data.pop(key, None)
        return None if r is None else r()

    def live(self) -> list[tuple[str, ResultFuture[Any]]]:
        """A snapshot of the entries whose future is alive (safe while other threads add)."""
        return [(k, f) for k, r in list(self._data.items()) if (f := r()) is not None]

    def sweep(self) -> None:
        data = self._data
        for key, r in list(data.items()):  # one C-level copy: other threads may be adding
            if r() is None:
                _remove_dead_weakref(data, key)  # only if still that dead ref: atomic
        self._sweep_at = max(4096, 2 * len(data))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        return len(self.live())


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
                _promote_young()
                gc.enable()


def _promote_young() -> None:
    """Move what a bulk call made straight to the oldest generation: O(1), where the young
    collections to come would each walk all of it (7 ms a 10,000-task map). Refcounting still
    frees it. Objects moved this way do not count towards CPython's next full collection, so
    after ten million of them (mostly freed long before) we run one: cyclic garbage that rode
    along from any thread is not kept for ever."""
    global _promoted
    young = gc.get_count()[0]
    if young < 1000 or gc.get_freeze_count() > _FROZEN_BY_PYTHON or not _GIL:  # small, an app's freeze, free-threaded
        return
    gc.freeze()
    gc.unfreeze()
    _promoted += young
    if _promoted > PROMOTED_LIMIT:
        _promoted = 0
        gc.collect()


_promoted = 0
PROMOTED_LIMIT = 10_000_000
_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()  # freeze() means more without a GIL
# CPython 3.12 starts with a few hundred of its own (deep-frozen) tuples in the permanent
# generation: not an app's freeze to keep (they go to the oldest generation, as ours do)
_FROZEN_BY_PYTHON = gc.get_freeze_count() if sys.version_info[:2] == (3, 12) else 0

# bulk() is entered from several threads at once (a sweep's follower, the kernel): the
# outermost one across all threads restores the collector to what it found
_bulk_lock = threading.Lock()
_bulk_depth = 0
_bulk_restore = False


def settle(f: cf.Future[Any], value: Any, *, failed: bool) -> None:
    """Resolve ``f`` with ``value``, its exception when ``failed``; a future already final
    (cancelled, or resolved meanwhile) is left as it is."""
    with contextlib.suppress(cf.InvalidStateError):
        if failed:
            f.set_exception(value)
        else:
            f.set_result(value)


def pass_on(f: ResultFuture[Any], g: cf.Future[Any]) -> None:
    """``g`` is done: resolve ``f`` the same way (a duplicate's future following its holder's)."""
    exc = g.exception()
    if exc is not None:
        settle(f, exc, failed=True)
    else:
        resolve_many([(f, g.result())])
