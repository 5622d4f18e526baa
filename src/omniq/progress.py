"""The progress model behind sweeps and the progress widget: no UI, no IPython.

Sweeps and the client use it without knowing any notebook: a :class:`DisplayHook` (the one
``omniq.notebook.widgets`` provides, set on ``AsyncOmniQ.display``) says how a sweep shows
itself.

A :class:`Tracker` follows a fixed list of *slots* (a sweep's points, a map group's handles).
Each slot is waiting (``pending`` / ``queued``), ``running``, or final with a ``TaskResult``.
It is fed from OmniQ's loop thread, never by polling tasks one by one:

* finals arrive through ``future.add_done_callback`` on the futures ``submit_tasks`` returns;
* ``running`` comes from in-process ``started`` events (``on_event``), so tasks run by workers
  in *other* processes show as queued until they finish (their futures still resolve).

:class:`Throttle` turns a stream of "something changed" pokes into at most one call per
``interval`` on a daemon thread, and always makes one call after the last poke, so a widget
never floods the kernel's comm channel yet always ends showing the final state.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .ids import id_time
from .logs import get_logger
from .models import ErrorInfo, TaskEvent, TaskResult, TaskStatus

log = get_logger("omniq.progress")

__all__ = ["DisplayHook", "Failure", "Snapshot", "Throttle", "Tracker", "seed_running"]

#: Waiting states; any other slot state is a final ``TaskStatus`` value.
PENDING, QUEUED, RUNNING = "pending", "queued", "running"
_WAITING = frozenset({PENDING, QUEUED, RUNNING})
_SUCCEEDED = TaskStatus.SUCCEEDED.value
_WATCHED_EVENTS = ("started", "retry", "requeued")


@dataclass(frozen=True)
class DisplayHook:
    """How something tracked (a sweep) shows itself: ``make(oq, obj, title=..., **options)``
    builds its progress display, and ``active()`` is True where displays are shown (a Jupyter
    kernel); elsewhere a sweep prints its ``repr``.

    Attributes:
        make: ``make(oq, obj, title=..., **options)`` -> the display of ``obj`` (a sweep).
        active: ``active()`` -> whether displays are shown here.

    Examples:
        >>> from omniq.progress import DisplayHook
        >>> quiet = DisplayHook(make=lambda oq, obj, title="", **options: title, active=lambda: False)
        >>> quiet.active(), quiet.make(None, None, title="sweep exp1")
        (False, 'sweep exp1')
    """

    make: Callable[..., Any]
    active: Callable[[], bool]


@dataclass(frozen=True)
class Failure:
    """A slot that ended without a value, as the widget lists it.

    Attributes:
        slot: The slot's index.
        label: What names it (a sweep point's parameters, or the task id).
        status: ``failed``, ``cancelled`` or ``expired``.
        error: The remote error, when there is one.

    Examples:
        >>> from omniq import ErrorInfo
        >>> from omniq.progress import Failure
        >>> f = Failure(1, "x=0", "failed", ErrorInfo("ZeroDivisionError", "division by zero"))
        >>> f.label, str(f.error)
        ('x=0', 'ZeroDivisionError: division by zero')
    """

    slot: int
    label: str
    status: str
    error: ErrorInfo | None


@dataclass(frozen=True)
class Snapshot:
    """Counts at one moment. ``failed`` counts tasks that failed; ``cancelled`` those cancelled or
    expired (stopped on purpose, not an error).

    Attributes:
        total: Slots.
        pending: Slots waiting for an eta or dependencies.
        queued: Slots waiting for a worker.
        running: Slots a worker runs (as far as this process knows).
        succeeded: Slots that finished with a value.
        failed: Slots that failed.
        elapsed: Seconds since the run began (until it ended).
        eta: Seconds left, from the rate so far (0.0 when done, None before any finished).
        failures: The first ``max_failures`` unsuccessful slots, in slot order.
        cancelled: Slots cancelled or expired.

    Examples:
        >>> from omniq.progress import Tracker
        >>> t = Tracker()
        >>> _ = t.add_slots(3)
        >>> s = t.snapshot()
        >>> s.total, s.pending, s.finished, s.complete
        (3, 3, 0, False)
    """

    total: int
    pending: int
    queued: int
    running: int
    succeeded: int
    failed: int
    elapsed: float
    eta: float | None
    failures: tuple[Failure, ...]  # the first ``max_failures`` in slot order
    cancelled: int = 0

    @property
    def finished(self) -> int:
        """Slots with a final result (succeeded, failed, cancelled or expired)."""
        return self.succeeded + self.failed + self.cancelled

    @property
    def complete(self) -> bool:
        """Whether every slot is final."""
        return self.finished >= self.total


def result_from_future(task_id: str | None, fut: cf.Future[TaskResult]) -> TaskResult:
    """The future's TaskResult; a future that failed (e.g. storing the task failed) becomes a
    FAILED result carrying that error, so nothing is silently lost.

    Args:
        task_id: The task's id (for the made-up result).
        fut: A resolved future.

    Returns:
        The result.

    Examples:
        >>> import concurrent.futures as cf
        >>> from omniq.progress import result_from_future
        >>> fut = cf.Future()
        >>> fut.set_exception(OSError("disk full"))
        >>> r = result_from_future("t1", fut)
        >>> r.status, str(r.error)
        (<TaskStatus.FAILED: 'failed'>, 'OSError: disk full')
    """
    exc = fut.exception()
    if exc is None:
        return fut.result()
    return TaskResult(
        task_id=task_id or "",
        status=TaskStatus.FAILED,
        error=ErrorInfo(type(exc).__name__, str(exc)),
    )


class Tracker:
    """Thread-safe state of a group of tasks, one slot per task, in the caller's order.

    Args:
        core: An open ``AsyncOmniQ`` supplying ``started`` events for the running count;
            None: slots show as queued until final.
        label: Names a slot in failure lists (a sweep passes the point's parameters);
            None: the task id.

    Examples:
        >>> import concurrent.futures as cf
        >>> from omniq import TaskResult, TaskStatus
        >>> from omniq.progress import Tracker
        >>> t = Tracker(label=lambda slot: f"point {slot}")
        >>> slots = t.add_slots(2)
        >>> t.begin(slots, ["a", "b"], ["queued", "queued"])
        >>> futures = [cf.Future(), cf.Future()]
        >>> t.attach(slots, futures)
        >>> futures[0].set_result(TaskResult(task_id="a", status=TaskStatus.SUCCEEDED))
        >>> t.counts(), t.complete
        ({'queued': 1, 'succeeded': 1}, False)
        >>> futures[1].set_result(TaskResult(task_id="b", status=TaskStatus.FAILED))
        >>> t.wait(timeout=1), [f.label for f in t.snapshot().failures]
        (True, ['point 1'])
    """

    def __init__(self, core: Any = None, *, label: Callable[[int], str] | None = None) -> None:
        self._core = core
        self._label = label or (lambda slot: self._ids[slot] or f"#{slot}")
        self._lock = threading.Lock()
        self._states: list[str] = []
        self._results: list[TaskResult | None] = []
        self._ids: list[str | None] = []
        self._slot_of: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._waiting = 0
        self._run_finished = 0  # finals that arrived while we watched (for the ETA)
        self._started = time.monotonic()
        self._ended: float | None = None
        self._done = threading.Event()
        self._done.set()
        self._listeners: list[Callable[[], None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._futures: dict[int, cf.Future[TaskResult]] = {}

    # --- feeding ------------------------------------------------------------------------------
    def add_slots(self, n: int) -> range:
        """Append ``n`` slots (state ``pending`` until ``finish`` or ``begin``).

        Args:
            n: How many.

        Returns:
            Their indices.

        Examples:
            >>> from omniq.progress import Tracker
            >>> t = Tracker()
            >>> t.add_slots(2), t.add_slots(1), t.counts()
            (range(0, 2), range(2, 3), {'pending': 3})
        """
        with self._lock:
            start = len(self._states)
            self._states.extend([PENDING] * n)
            self._results.extend([None] * n)
            self._ids.extend([None] * n)
            self._bump(PENDING, n)
            self._waiting += n
            if n:
                self._done.clear()
                self._ended = None
        return range(start, start + n)

    def finish(self, slots: Sequence[int], results: Sequence[TaskResult]) -> None:
        """Record results known up front (a resumed sweep's finished points); they do not
        count towards the ETA rate.

        Args:
            slots: The slots.
            results: Their final results, in the same order.

        Examples:
            >>> from omniq import TaskResult, TaskStatus
            >>> from omniq.progress import Tracker
            >>> t = Tracker()
            >>> t.finish(t.add_slots(1), [TaskResult(task_id="a", status=TaskStatus.SUCCEEDED)])
            >>> t.complete, t.task_id(0)
            (True, 'a')
        """
        if slots:
            self._set_final(list(zip(slots, results)), counted=False)

    def begin(self, slots: Sequence[int], task_ids: Sequence[str], states: Sequence[str]) -> None:
        """Expect these tasks (call *before* handing them to the queue, so an early ``started``
        event is not missed).

        Args:
            slots: The slots (a final slot starts over: retrying a failure).
            task_ids: Their tasks' ids, in the same order.
            states: ``queued`` or ``pending`` each.

        Examples:
            >>> import concurrent.futures as cf
            >>> from omniq import TaskResult, TaskStatus
            >>> from omniq.progress import Tracker
            >>> t = Tracker()
            >>> slots = t.add_slots(2)
            >>> t.begin(slots, ["a", "b"], ["queued", "queued"])
            >>> futures = [cf.Future(), cf.Future()]
            >>> t.attach(slots, futures)
            >>> t.task_id(1), t.state(1)
            ('b', 'queued')
        """
        self._subscribe()
        with self._lock:
            if self._waiting == 0:  # a new run (e.g. retrying failures): restart the clock
                self._started = time.monotonic()
                self._run_finished = 0
            for slot, tid, st in zip(slots, task_ids, states):
                old = self._states[slot]
                if old not in _WAITING:
                    self._waiting += 1
                    self._results[slot] = None
                    self._done.clear()
                    self._ended = None
                old_id = self._ids[slot]
                if old_id is not None:
                    self._slot_of.pop(old_id, None)
                self._bump(old, -1)
                self._bump(st, 1)
                self._states[slot] = st
                self._ids[slot] = tid
                self._slot_of[tid] = slot
        self._changed()

    def attach(self, slots: Sequence[int], futures: Sequence[cf.Future[TaskResult]]) -> None:
        """Follow each slot's future; its final result lands when the future resolves (at
        once, in this thread, for a future already resolved). A future that raised becomes a
        ``failed`` result carrying that error.

        Args:
            slots: The slots.
            futures: Their tasks' futures, in the same order.

        Examples:
            >>> import concurrent.futures as cf
            >>> from omniq import TaskResult, TaskStatus
            >>> from omniq.progress import Tracker
            >>> t = Tracker()
            >>> slots = t.add_slots(2)
            >>> t.begin(slots, ["a", "b"], ["queued", "queued"])
            >>> futures = [cf.Future(), cf.Future()]
            >>> t.attach(slots, futures)
            >>> futures[0].set_exception(OSError("disk full"))
            >>> t.state(0), str(t.result(0).error)
            ('failed', 'OSError: disk full')
        """
        on_done, ids = self._on_done, self._ids
        for slot, fut in zip(slots, futures):
            self._futures[slot] = fut
            fut.add_done_callback(functools.partial(on_done, slot, ids[slot]))

    def sync(self) -> None:
        """Apply futures that resolved but whose callbacks have not run yet. A future wakes
        its waiters before it runs its callbacks, so a caller that just saw every handle finish
        (``%omniq wait``, ``finalize``) calls this to render the true end state.

        Examples:
            ``tracker.sync(); tracker.snapshot()`` after waiting on the handles.
        """
        with self._lock:
            late = [
                (slot, fut) for slot, fut in self._futures.items()
                if fut.done() and self._states[slot] in _WAITING
            ]
        for slot, fut in late:
            self._on_done(slot, self._ids[slot], fut)

    def _on_done(self, slot: int, task_id: str | None, fut: cf.Future[TaskResult]) -> None:
        self._set_final([(slot, result_from_future(task_id, fut))], counted=True, task_id=task_id)

    def _set_final(
        self, items: Sequence[tuple[int, TaskResult]], *, counted: bool, task_id: Any = False
    ) -> None:
        states, ids = self._states, self._ids
        with self._lock:
            for slot, result in items:
                if task_id is not False and ids[slot] != task_id:
                    return  # the slot was resubmitted since: a stale future
                old = states[slot]
                status = TaskStatus(result.status).value
                self._bump(old, -1)
                self._bump(status, 1)
                states[slot] = status
                self._results[slot] = result
                if ids[slot] is None:
                    ids[slot] = result.task_id
                else:
                    self._slot_of.pop(ids[slot] or "", None)
                if old in _WAITING:
                    self._waiting -= 1
                    self._run_finished += counted
            all_done = self._waiting == 0
            if all_done:
                self._ended = time.monotonic()
        if all_done:
            self._unsubscribe_events()
            self._done.set()
        self._changed()

    def _on_events(self, event: TaskEvent) -> None:
        slot = self._slot_of.get(event.task_id)
        if slot is None:
            return
        new = RUNNING if event.type == "started" else QUEUED
        with self._lock:
            old = self._states[slot]
            if old not in _WAITING or old == new or self._ids[slot] != event.task_id:
                return
            self._bump(old, -1)
            self._bump(new, 1)
            self._states[slot] = new
        self._changed()

    def mark_running(self, task_ids: Iterable[str]) -> None:
        """Show these tasks as running if they still wait (see :func:`seed_running`).

        Args:
            task_ids: Ids of tasks known to run.

        Examples:
            >>> import concurrent.futures as cf
            >>> from omniq import TaskResult, TaskStatus
            >>> from omniq.progress import Tracker
            >>> t = Tracker()
            >>> slots = t.add_slots(2)
            >>> t.begin(slots, ["a", "b"], ["queued", "queued"])
            >>> futures = [cf.Future(), cf.Future()]
            >>> t.attach(slots, futures)
            >>> t.mark_running(["b", "unknown"])
            >>> t.counts()
            {'queued': 1, 'running': 1}
        """
        changed = False
        with self._lock:
            for tid in task_ids:
                slot = self._slot_of.get(tid)
                if slot is not None and self._states[slot] in (PENDING, QUEUED):
                    self._bump(self._states[slot], -1)
                    self._bump(RUNNING, 1)
                    self._states[slot] = RUNNING
                    changed = True
        if changed:
            self._changed()

    def _bump(self, state: str, n: int) -> None:
        self._counts[state] = self._counts.get(state, 0) + n

    def _subscribe(self) -> None:
        core = self._core
        if self._unsubscribe is not None or core is None or not getattr(core, "is_open", False):
            return
        try:
            self._unsubscribe = core.on_event(self._on_events, list(_WATCHED_EVENTS))
        except RuntimeError:  # closed in between: no running counts, finals still arrive
            self._unsubscribe = None

    def _unsubscribe_events(self) -> None:
        unsub, self._unsubscribe = self._unsubscribe, None
        if unsub is not None:
            with contextlib.suppress(Exception):
                unsub()

    # --- listening ----------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn()`` (from whichever thread changed the state) after every change.

        Args:
            fn: A callable taking no argument; what it raises is logged, not raised.

        Returns:
            A function that removes the listener.

        Examples:
            >>> from omniq.progress import Tracker
            >>> t = Tracker()
            >>> changes = []
            >>> remove = t.add_listener(lambda: changes.append(t.counts()))
            >>> t.begin(t.add_slots(1), ["a"], ["queued"])
            >>> remove()
            >>> changes
            [{'queued': 1}]
        """
        self._listeners.append(fn)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(fn)

        return remove

    def _changed(self) -> None:
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:  # a display bug must not break result delivery
                log.exception("progress listener %r failed", fn)

    # --- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._states)

    @property
    def complete(self) -> bool:
        """Whether every slot is final (True for a tracker without slots)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every slot is final.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Returns:
            True when every slot is final, False if ``timeout`` passed first.

        Examples:
            See :class:`Tracker`.
        """
        return self._done.wait(timeout)

    def entry(self, slot: int) -> tuple[str, TaskResult | None]:
        """``(state, result)`` of a slot, read together.

        Args:
            slot: The slot's index.

        Returns:
            Its state (``pending``, ``queued``, ``running`` or a final status value) and its
            result (None until final).

        Examples:
            >>> from omniq.progress import Tracker
            >>> t = Tracker()
            >>> t.entry(t.add_slots(1)[0])
            ('pending', None)
        """
        with self._lock:
            return self._states[slot], self._results[slot]

    def state(self, slot: int) -> str:
        """A slot's state (see :meth:`entry`)."""
        return self._states[slot]

    def result(self, slot: int) -> TaskResult | None:
        """A slot's result; None until it is final."""
        return self._results[slot]

    def task_id(self, slot: int) -> str | None:
        """The id of a slot's latest task; None before ``begin`` or ``finish``."""
        return self._ids[slot]

    def slots_in(self, states: Callable[[str], bool]) -> list[int]:
        """Slots whose state passes ``states``.

        Args:
            states: A test of a state, e.g. ``lambda s: s == "failed"``.

        Returns:
            Their indices, in order.

        Examples:
            >>> import concurrent.futures as cf
            >>> from omniq import TaskResult, TaskStatus
            >>> from omniq.progress import Tracker
            >>> t = Tracker()
            >>> slots = t.add_slots(2)
            >>> t.begin(slots, ["a", "b"], ["queued", "queued"])
            >>> futures = [cf.Future(), cf.Future()]
            >>> t.attach(slots, futures)
            >>> t.slots_in(lambda s: s == "queued")
            [0, 1]
        """
        with self._lock:
            return [i for i, s in enumerate(self._states) if states(s)]

    def counts(self) -> dict[str, int]:
        """How many slots are in each state.

        Returns:
            state -> number of slots, only states that occur.

        Examples:
            See :class:`Tracker`.
        """
        with self._lock:
            return {k: v for k, v in self._counts.items() if v}

    def snapshot(self, max_failures: int = 20) -> Snapshot:
        """The counts, elapsed time, ETA and first failures now.

        Args:
            max_failures: Unsuccessful slots listed at most.

        Returns:
            A :class:`Snapshot`.

        Examples:
            See :class:`Tracker` and :class:`Snapshot`.
        """
        with self._lock:
            c = dict(self._counts)
            total = len(self._states)
            now = self._ended if self._ended is not None else time.monotonic()
            elapsed = now - self._started
            run_finished = self._run_finished
            succeeded = c.get(_SUCCEEDED, 0)
            cancelled = c.get("cancelled", 0) + c.get("expired", 0)
            failed = total - succeeded - cancelled - sum(c.get(s, 0) for s in _WAITING)
            failures: list[Failure] = []
            if failed or cancelled:
                for i, st in enumerate(self._states):
                    if st not in _WAITING and st != _SUCCEEDED:
                        r = self._results[i]
                        failures.append(Failure(i, "", st, r.error if r is not None else None))
                        if len(failures) >= max_failures:
                            break
        remaining = total - succeeded - failed - cancelled
        eta: float | None = None
        if not remaining:
            eta = 0.0
        elif run_finished:
            eta = remaining * elapsed / run_finished
        return Snapshot(
            total=total,
            pending=c.get(PENDING, 0),
            queued=c.get(QUEUED, 0),
            running=c.get(RUNNING, 0),
            succeeded=succeeded,
            failed=failed,
            cancelled=cancelled,
            elapsed=elapsed,
            eta=eta,
            failures=tuple(Failure(f.slot, self._label(f.slot), f.status, f.error) for f in failures),
        )

    def close(self) -> None:
        """Stop listening for events (finals still land in the slots).

        Examples:
            ``tracker.close()`` when its display goes away.
        """
        self._unsubscribe_events()


def seed_running(tracker: Tracker, oq: Any, task_ids: Sequence[str]) -> None:
    """Mark tasks that started before ``tracker`` subscribed to events (handles submitted
    earlier) as running: one query of the event store. Only for a sync ``OmniQ``; call it
    after ``begin`` so no ``started`` event falls between the query and the subscription.
    Never raises: on any failure the counts stay ``queued``.

    Args:
        tracker: The tracker.
        oq: An ``OmniQ`` (anything else is ignored).
        task_ids: The tasks to look up.

    Examples:
        >>> from omniq import OmniQ
        >>> from omniq.progress import Tracker, seed_running
        >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
        ...     h = oq.submit(pow, 2, 3)
        ...     t = Tracker()
        ...     t.begin(t.add_slots(1), [h.id], ["queued"])
        ...     seed_running(t, oq, [h.id])      # nothing started: still queued
        ...     t.counts()
        {'queued': 1}
    """
    events = getattr(oq, "events", None)
    if not task_ids or events is None or inspect.iscoroutinefunction(events):
        return
    try:
        since = min(id_time(t) for t in task_ids) - 1.0
        started = events(since=since, types=["started"])
    except Exception:  # not ids of this queue, or storage hiccup: counts stay "queued"
        return
    tracker.mark_running(e.task_id for e in started)


class Throttle:
    """Call ``fn`` on a daemon thread at most once per ``interval`` seconds after ``poke()``.

    The call after the last poke always happens (a trailing call), so the final state lands.
    While ``fn`` returns True (work still going) it is called again every ``heartbeat``
    seconds even without pokes, so elapsed time and ETA keep moving. The thread exits when
    ``fn`` returns False and no poke is pending; the next poke starts a new one.

    Args:
        fn: The update; returns True while there is more to show.
        interval: Seconds between calls at least.
        heartbeat: Seconds between calls while ``fn`` returns True, without pokes; None:
            only after pokes.

    Examples:
        >>> import time
        >>> from omniq.progress import Throttle
        >>> calls = []
        >>> th = Throttle(lambda: calls.append(time.monotonic()) or False, interval=0.2)
        >>> for _ in range(100):
        ...     th.poke()
        >>> time.sleep(0.5)
        >>> 1 <= len(calls) <= 3                 # 100 pokes, a call or two
        True
        >>> th.close()
    """

    def __init__(self, fn: Callable[[], bool], interval: float = 0.1, heartbeat: float | None = 1.0) -> None:
        self._fn = fn
        self.interval = interval
        self.heartbeat = heartbeat
        self._cond = threading.Condition()
        self._dirty = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._call_lock = threading.Lock()  # flush() and the thread never call fn at once
        self._last = -float("inf")  # monotonic time of the latest call

    def poke(self) -> None:
        """Something changed: schedule a call (never blocks on ``fn``).

        Examples:
            See :class:`Throttle`.
        """
        with self._cond:
            if self._closed:
                return
            self._dirty = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="omniq-progress", daemon=True)
                self._thread.start()
            else:
                self._cond.notify()

    def flush(self) -> bool:
        """Call ``fn`` now, in the caller's thread (a pending trailing call still happens).

        Returns:
            What ``fn`` returned (False when it raised; the error is logged).

        Examples:
            >>> from omniq.progress import Throttle
            >>> Throttle(lambda: True).flush()
            True
        """
        return self._call()

    def close(self) -> None:
        """Stop: no more calls, and later pokes are ignored."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _call(self) -> bool:
        with self._call_lock:
            self._last = time.monotonic()
            try:
                return bool(self._fn())
            except Exception:
                log.exception("progress update failed")
                return False

    def _run(self) -> None:
        active = True
        while True:
            with self._cond:
                if not self._dirty and not self._closed:
                    self._cond.wait(self.heartbeat if active else None)
                if self._closed:
                    self._thread = None
                    return
            # never sooner than `interval` after the previous call; pokes meanwhile coalesce
            pause = self._last + self.interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with self._cond:
                self._dirty = False
            active = self._call()
            with self._cond:
                if not active and not self._dirty:
                    self._thread = None
                    return
