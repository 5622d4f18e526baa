"""The sweep handles: ``Sweep`` (sync) and ``AsyncSweep``, with all their logic in
``SweepBase``; they differ only in how they wait and call the queue."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._futures import bulk
from ..errors import ConfigError, TaskError
from ..models import TaskResult, TaskStatus
from ..progress import QUEUED, Tracker, seed_running
from .grid import expand_grid
from .identity import (
    function_identity,
    identity_digest,
    params_digest,
    plain_params,
    short_name,
)

if TYPE_CHECKING:
    from ..core import AsyncOmniQ, OmniQ

RESULT_FIELDS = ("value", "status", "error", "duration")
_RAISE: Any = object()
_INLINE_FOLLOW = 256  # larger batches get their future callbacks added on a helper thread
S = TypeVar("S", bound="SweepBase")


def latest_results(found: Iterable[TaskResult]) -> dict[str, TaskResult]:
    """The latest stored result per key (by finish time, then time-ordered task id).

    Args:
        found: Stored results, e.g. from ``find_results(key_prefix)``; those without a key are
            ignored.

    Returns:
        key -> its latest result.

    Examples:
        >>> from omniq import TaskResult, TaskStatus
        >>> from omniq.sweep import latest_results
        >>> old = TaskResult(task_id="t1", status=TaskStatus.FAILED, finished_at=1.0, key="exp1/a/b")
        >>> new = TaskResult(task_id="t2", status=TaskStatus.SUCCEEDED, finished_at=2.0, key="exp1/a/b")
        >>> latest_results([new, old])["exp1/a/b"].task_id
        't2'
    """
    latest: dict[str, TaskResult] = {}
    for r in found:
        if r.key is None:
            continue
        prev = latest.get(r.key)
        if prev is None or (r.finished_at or 0.0, r.task_id) > (prev.finished_at or 0.0, prev.task_id):
            latest[r.key] = r
    return latest


def _record_name(param: str) -> str:
    return f"param_{param}" if param in RESULT_FIELDS else param


def _error_text(r: TaskResult | None) -> str | None:
    if r is None or r.error is None:
        return None if r is None or r.status is TaskStatus.SUCCEEDED else f"{r.status.value}"
    return str(r.error)


# Points in flight per AsyncOmniQ in this process: key -> (task id, future). Starting the same
# sweep again (re-running a notebook cell) follows them instead of submitting them twice.
_INFLIGHT: weakref.WeakKeyDictionary[Any, dict[str, tuple[str, cf.Future[TaskResult]]]] = (
    weakref.WeakKeyDictionary()
)
_INFLIGHT_LOCK = threading.Lock()
_SEEDING: set[asyncio.Task[None]] = set()  # status look-ups of adopted points in flight


def _inflight(core: Any) -> dict[str, tuple[str, cf.Future[TaskResult]]]:
    with _INFLIGHT_LOCK:
        d = _INFLIGHT.get(core)
        if d is None:
            d = _INFLIGHT[core] = {}
        return d


def _remember(core: Any, entries: Iterable[tuple[str, str, cf.Future[TaskResult]]]) -> None:
    """Record points just submitted; finished ones are pruned here rather than by a callback
    per future (a 10,000-point start pays for every callback)."""
    table = _inflight(core)
    with _INFLIGHT_LOCK:
        if len(table) > 1000:
            for key in [k for k, (_, f) in table.items() if f.done()]:
                del table[key]
        for key, tid, fut in entries:
            table[key] = (tid, fut)


# ============================================================================================
# the sweep: all logic in the base; Sweep / AsyncSweep only differ in how they wait and call
# ============================================================================================
class SweepBase:
    """State and logic shared by :class:`Sweep` and :class:`AsyncSweep` (no I/O here).

    Not made directly: ``oq.sweep(...)`` calls :meth:`Sweep.start` (or
    :meth:`AsyncSweep.start`). The reading methods below do no I/O and are plain methods on
    both classes.

    Attributes:
        name: The sweep's name (the first part of every point's key).
        identity: Its function's identity (:func:`~omniq.sweep.function_identity`), or the
            one given to ``start``.
        points: The grid's points, one dict of keyword arguments each, in grid order.
        keys: Each point's result and task key, in grid order.
        key_prefix: ``"{name}/{identity digest}/"``, common to every key.
        submitted: Tasks this object handed to the queue (starts and retries).

    Args:
        oq: The ``OmniQ`` or ``AsyncOmniQ`` the sweep runs on.
        core: Its ``AsyncOmniQ``.
        fn: The function; each point runs ``fn(**point)``.
        grid: A grid (see :func:`~omniq.sweep.expand_grid`).
        name: The sweep's name; None uses the function's name.
        identity: Overrides ``function_identity(fn)``; None computes it.
        options: Enqueue options for every point (``queue``, ``retries``, ``timeout``, ...).

    Raises:
        ConfigError: ``fn`` is not callable, ``name`` is empty, ``identity`` is not a string,
            ``options`` hold ``key``, ``keys`` or ``metadata`` (a sweep sets those), or the
            grid is not valid.

    Examples:
        >>> from omniq import OmniQ
        >>> def train(lr, seed):
        ...     return lr * 10 + seed
        >>> with OmniQ(tasks="memory://", worker="thread", concurrency=2) as oq:
        ...     sw = oq.sweep(train, {"lr": [1, 2], "seed": range(2)}, name="exp1").wait(timeout=30)
        ...     print(len(sw), sw.done(), sw.counts(), sw.key_prefix.startswith("exp1/"))
        4 True {'succeeded': 4} True
    """

    def __init__(
        self,
        oq: Any,
        core: AsyncOmniQ,
        fn: Callable[..., Any],
        grid: Any,
        *,
        name: str | None,
        identity: str | None,
        options: Mapping[str, Any],
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"fn={fn!r} is not valid: expected a callable")
        if name is None:
            name = short_name(fn)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"name={name!r} is not valid: expected a non-empty string")
        if identity is not None and not isinstance(identity, str):
            raise ConfigError(f"identity={identity!r} is not valid: expected a string or None")
        clash = sorted(set(options) & {"key", "keys", "metadata"})
        if clash:
            raise ConfigError(f"{clash[0]}= cannot be given to a sweep: it sets each point's key and metadata")
        self._oq = oq
        self._core = core
        self._fn = fn
        self._options = dict(options)
        self.name = name
        self.identity = identity if identity is not None else function_identity(fn)
        self.points: list[dict[str, Any]] = expand_grid(grid)
        ident = identity_digest(self.identity)
        self.key_prefix = f"{name}/{ident}/"
        self.keys = [f"{self.key_prefix}{params_digest(p)}" for p in self.points]
        self.submitted = 0  # tasks submitted by this object (starts and retries)
        self._tracker = Tracker(core, label=self._label)
        self._tracker.add_slots(len(self.points))
        self._progress: Any = None  # its progress display, made by the client's display hook
        self._futures: dict[int, cf.Future[TaskResult]] = {}  # slot -> its latest task's future
        self._adopt_hook: Callable[[Mapping[str, str]], None] | None = None
        self._n_adopted = 0
        self._adopt_lock = threading.Lock()

    # --- starting --------------------------------------------------------------------------
    def _launch(self: S, found: Sequence[TaskResult]) -> S:
        """Keep points whose latest stored result succeeded, follow ones in flight here,
        submit the rest as one batch."""
        latest = latest_results(found)
        table = _inflight(self._core)
        todo: list[int] = []
        follow: list[tuple[int, str, cf.Future[TaskResult]]] = []
        reused: list[int] = []
        reused_results: list[TaskResult] = []
        for i, key in enumerate(self.keys):
            r = latest.get(key)
            if r is not None and r.status is TaskStatus.SUCCEEDED:
                reused.append(i)
                reused_results.append(r)
                continue
            running = table.get(key)
            if running is None:
                todo.append(i)
                continue
            fut = running[1]
            if not fut.done():
                follow.append((i, running[0], fut))
            elif fut.exception() is None and fut.result().status is TaskStatus.SUCCEEDED:
                reused.append(i)  # finished here after find_results looked
                reused_results.append(fut.result())
            else:
                todo.append(i)
        self._tracker.finish(reused, reused_results)
        if follow:
            slots = [i for i, _, _ in follow]
            followed_ids = [t for _, t, _ in follow]
            self._tracker.begin(slots, followed_ids, [QUEUED] * len(follow))
            self._follow(slots, [f for _, _, f in follow])
            seed_running(self._tracker, self._oq, followed_ids)
        self._submit(todo)
        return self

    def _submit(self, slots: list[int]) -> None:
        if not slots:
            return
        points, keys = self.points, self.keys
        tasks = self._core.build_tasks(
            self._fn,
            [((), points[i]) for i in slots],
            keys=[keys[i] for i in slots],
            metadata=[{"sweep": self.name, "params": plain_params(points[i])} for i in slots],
            **self._options,
        )
        self._tracker.begin(slots, [t.id for t in tasks], [t.status.value for t in tasks])
        self._watch_adoptions()
        with self._adopt_lock:  # the loop may store the batch (and adopt) before we get here
            futures = self._core.submit_tasks(tasks)
            self._futures.update(zip(slots, futures))
        self.submitted += len(tasks)
        self._follow(slots, futures, [t.id for t in tasks])

    def _watch_adoptions(self) -> None:
        """Follow points the queue did not store because a task already held their key (see
        ``AsyncOmniQ._adopt``): their slots take that task's id, so its ``started`` events count
        it as running, and those already running are shown so. Until every point is final."""
        if self._adopt_hook is not None:
            return
        ref = weakref.ref(self)
        core = self._core

        def hook(dups: Mapping[str, str]) -> None:
            sw = ref()
            if sw is None or sw._tracker.complete:
                with contextlib.suppress(ValueError):
                    core.waiters.adopt_listeners.remove(hook)
                if sw is not None:
                    sw._adopt_hook = None
                return
            sw._adopted(dups)

        self._adopt_hook = hook
        core.waiters.adopt_listeners.append(hook)

    def _adopted(self, dups: Mapping[str, str]) -> None:
        """On the loop, as a batch is stored: the slots of duplicates follow their holders."""
        with self._adopt_lock:
            self._follow_holders(dups)

    def _follow_holders(self, dups: Mapping[str, str]) -> None:
        t = self._tracker
        slot_of = {tid: i for i in range(len(self.points)) if (tid := t.task_id(i)) is not None}
        moved = [(slot_of[new], old) for new, old in dups.items() if new in slot_of]
        if not moved:
            return
        slots = [s for s, _ in moved]
        holders = [h for _, h in moved]
        t.begin(slots, holders, [QUEUED] * len(slots))
        t.attach(slots, [self._futures[s] for s in slots])  # callbacks under the holders' ids
        core = self._core

        async def seed() -> None:  # holders already running elsewhere show as running
            with contextlib.suppress(Exception):
                states = await core.session.queue.statuses(holders)
                t.mark_running([h for h, st in states.items() if st is TaskStatus.RUNNING])

        job = asyncio.get_running_loop().create_task(seed())
        _SEEDING.add(job)  # (the loop keeps only weak references to its tasks)
        job.add_done_callback(_SEEDING.discard)
        self._n_adopted += len(moved)

    def _follow(
        self, slots: list[int], futures: Sequence[cf.Future[TaskResult]], new_ids: Sequence[str] = ()
    ) -> None:
        """Attach the tracker to the futures (and remember newly submitted points as in
        flight). ``add_done_callback`` takes each future's lock, ~3 us: a large batch does it
        on a helper thread, so the kernel gets control back at once; waiting works meanwhile."""

        def follow() -> None:
            with bulk():
                self._tracker.attach(slots, futures)
                if new_ids:
                    keys = self.keys
                    _remember(self._core, [(keys[i], tid, f) for i, tid, f in zip(slots, new_ids, futures)])

        if len(slots) <= _INLINE_FOLLOW:
            follow()
        else:
            threading.Thread(target=follow, name="omniq-sweep-follow", daemon=True).start()

    def _retry(self) -> None:
        self._submit(self._tracker.slots_in(_is_unsuccessful_final))

    def _unfinished_ids(self) -> list[str]:
        t = self._tracker
        return [tid for i in t.slots_in(_is_waiting) if (tid := t.task_id(i)) is not None]

    # --- reading (no I/O) ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.points)

    @property
    def adopted(self) -> int:
        """Points whose task was not stored because a task already held their key (queued or
        running from an earlier run, or another process's run of this sweep): this sweep waits
        for those tasks instead. Known once the points are stored (``flush()``).

        Examples:
            >>> from omniq import OmniQ
            >>> import os, tempfile
            >>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "lab.db")
            >>> with OmniQ(tasks=url, concurrency=0) as a, OmniQ(tasks=url, concurrency=0) as b:
            ...     first = a.sweep(pow, {"base": [2, 3], "exp": [2]}, name="again")
            ...     a.flush()
            ...     second = b.sweep(pow, {"base": [2, 3], "exp": [2]}, name="again")  # as elsewhere
            ...     b.flush()
            ...     (first.submitted, first.adopted), (second.submitted, second.adopted)
            ((2, 0), (2, 2))
        """
        return self._n_adopted

    def done(self) -> bool:
        """Whether every point has a final result.

        Returns:
            True once each point succeeded, failed, was cancelled or expired.

        Examples:
            >>> from omniq import OmniQ
            >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
            ...     oq.sweep(pow, {"base": [2, 3], "exp": [2]}, name="later").done()
            False
        """
        return self._tracker.complete

    def counts(self) -> dict[str, int]:
        """How many points are in each state.

        Returns:
            status name -> number of points (``succeeded``, ``failed``, ``queued``,
            ``running``, ``pending``, ``cancelled``, ``expired``); states with no point are
            left out.

        Examples:
            >>> from omniq import OmniQ
            >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
            ...     oq.sweep(pow, {"base": [2, 3], "exp": [2]}, name="later").counts()
            {'queued': 2}
        """
        return self._tracker.counts()

    def _record(self, i: int, *, traceback: bool = False) -> dict[str, Any]:
        state, r = self._tracker.entry(i)
        rec = {_record_name(k): v for k, v in self.points[i].items()}
        ok = r is not None and r.status is TaskStatus.SUCCEEDED
        rec["value"] = r.value if ok and r is not None else None
        rec["status"] = state
        rec["error"] = _error_text(r)
        rec["duration"] = r.duration if r is not None else None
        if traceback:
            rec["traceback"] = r.error.traceback if r is not None and r.error is not None else ""
        return rec

    def results(self) -> list[dict[str, Any]]:
        """One record per point, in grid order.

        Returns:
            A dict per point: its parameters (one named like a field below becomes
            ``param_<name>``) plus ``value``, ``status``, ``error`` (``"Type: message"`` or
            None) and ``duration`` (seconds or None). Unfinished points have status ``queued``,
            ``running`` or ``pending`` and value None.

        Examples:
            >>> from omniq import OmniQ
            >>> def inverse(x):
            ...     return 1 / x
            >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
            ...     sw = oq.sweep(inverse, {"x": [2, 0]}, name="inv").wait(timeout=30)
            ...     for rec in sw.results():
            ...         print(rec["x"], rec["value"], rec["status"], rec["error"])
            2 0.5 succeeded None
            0 None failed ZeroDivisionError: division by zero
        """
        return [self._record(i) for i in range(len(self.points))]

    def failed(self) -> list[dict[str, Any]]:
        """The points that finished without a value (failed, cancelled, expired).

        Returns:
            Their records as :meth:`results` gives them, in grid order, each with the remote
            ``traceback`` text as well (empty when there is none, e.g. cancelled).

        Examples:
            >>> from omniq import OmniQ
            >>> def inverse(x):
            ...     return 1 / x
            >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
            ...     sw = oq.sweep(inverse, {"x": [2, 0]}, name="inv").wait(timeout=30)
            ...     [(r["x"], "ZeroDivisionError" in r["traceback"]) for r in sw.failed()]
            [(0, True)]
        """
        return [self._record(i, traceback=True) for i in self._tracker.slots_in(_is_unsuccessful_final)]

    def values(self, default: Any = _RAISE) -> list[Any]:
        """The points' values, in grid order.

        Args:
            default: Stands in for the value of a point that has none (unfinished, failed,
                cancelled, expired). Not given: such a point raises.

        Returns:
            One value per point.

        Raises:
            TaskError: A point has no value and no ``default`` is given; the message says how
                many, and names the first point and its error.

        Examples:
            >>> from omniq import OmniQ, TaskError
            >>> def inverse(x):
            ...     return 1 / x
            >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
            ...     sw = oq.sweep(inverse, {"x": [2, 0]}, name="inv").wait(timeout=30)
            ...     print(sw.values(default=None))
            ...     try:
            ...         sw.values()
            ...     except TaskError as e:
            ...         print(e.message)
            [0.5, None]
            1 of 2 points of sweep 'inv' have no value (see .failed()); first: x=0: ZeroDivisionError: division by zero
        """
        out = []
        missing: list[int] = []
        for i in range(len(self.points)):
            r = self._tracker.result(i)
            if r is not None and r.status is TaskStatus.SUCCEEDED:
                out.append(r.value)
            else:
                missing.append(i)
                out.append(default)
        if missing and default is _RAISE:
            first = missing[0]
            r = self._tracker.result(first)
            what = f"{len(missing)} of {len(self.points)} points of sweep {self.name!r} have no value"
            if r is None:
                raise TaskError(f"{what} (not finished: wait() first); first: {self._label(first)}")
            err = TaskError.from_info(r.task_id, r.error)
            raise TaskError(
                f"{what} (see .failed()); first: {self._label(first)}: {err.type}: {err.message}",
                task_id=r.task_id, type=err.type, traceback=err.traceback,
            )
        return out

    def to_pandas(self) -> Any:
        """:meth:`results` as a pandas DataFrame.

        Returns:
            A ``pandas.DataFrame``: one row per point in grid order; a column per parameter,
            then ``value``, ``status``, ``error`` and ``duration``.

        Raises:
            ImportError: pandas is not installed (the ``notebook`` extra installs it).

        Examples:
            >>> from omniq import OmniQ
            >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
            ...     df = oq.sweep(pow, {"base": [2, 3], "exp": [2]}, name="pow").wait(timeout=30).to_pandas()
            >>> df[["base", "exp", "value", "status"]]
               base  exp  value     status
            0     2    2      4  succeeded
            1     3    2      9  succeeded
        """
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("Sweep.to_pandas() needs pandas: pip install pandas") from exc
        cols = [_record_name(k) for k in dict.fromkeys(k for p in self.points for k in p)]
        return pd.DataFrame.from_records(self.results(), columns=[*cols, *RESULT_FIELDS])

    def _label(self, slot: int) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.points[slot].items())

    # --- display ---------------------------------------------------------------------------
    @property
    def tracker(self) -> Tracker:
        """The live per-point state (what the progress widget shows).

        Examples:
            >>> from omniq import OmniQ
            >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
            ...     oq.sweep(pow, {"base": [2, 3], "exp": [2]}, name="later").tracker.snapshot().total
            2
        """
        return self._tracker

    @property
    def oq(self) -> Any:
        """The ``OmniQ`` or ``AsyncOmniQ`` this sweep runs on.

        Examples:
            >>> from omniq import OmniQ
            >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
            ...     oq.sweep(pow, {"base": [2], "exp": [2]}, name="later").oq is oq
            True
        """
        return self._oq

    def progress(self, **options: Any) -> Any:
        """This sweep's progress display (one per sweep; a widget in a kernel, a text line
        elsewhere), made by the client's display hook (``AsyncOmniQ.display``).

        Args:
            **options: The display's options (for the notebook widget, those of
                :func:`omniq.notebook.widgets.progress`), used when it is first made.

        Returns:
            The display; the same object on every call.

        Examples:
            >>> from omniq import OmniQ
            >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
            ...     sw = oq.sweep(pow, {"base": [2], "exp": [2]}, name="now").wait(timeout=30)
            ...     sw.progress() is sw.progress()
            True
        """
        if self._progress is None:
            self._progress = self._core.display.make(self._oq, self, title=f"sweep {self.name}", **options)
        return self._progress

    def _ipython_display_(self) -> None:
        if self._core.display.active():
            self.progress()._ipython_display_()
        else:
            print(repr(self))

    def __repr__(self) -> str:
        c = self.counts()
        parts = ", ".join(f"{n} {s}" for s, n in c.items())
        return f"<{type(self).__name__} {self.name!r} {len(self.points)} points: {parts}>"


def _is_waiting(state: str) -> bool:
    return state in ("pending", "queued", "running")


def _is_unsuccessful_final(state: str) -> bool:
    return not _is_waiting(state) and state != "succeeded"


class Sweep(SweepBase):
    """A running sweep, from synchronous code. Made by ``OmniQ.sweep``, which returns at once.

    See :class:`SweepBase` for its attributes and reading methods.

    Examples:
        >>> from omniq import OmniQ
        >>> def train(lr, seed):
        ...     return lr * 10 + seed
        >>> with OmniQ(tasks="memory://", worker="thread", concurrency=2) as oq:
        ...     sw = oq.sweep(train, {"lr": [1, 2], "seed": range(2)}, name="exp1")
        ...     print(sw.wait(timeout=30).values())
        ...     again = oq.sweep(train, {"lr": [1, 2], "seed": range(3)}, name="exp1")
        ...     print(again.submitted, again.wait(timeout=30).values())  # 4 points reused
        [10, 11, 20, 21]
        2 [10, 11, 12, 20, 21, 22]
    """

    @classmethod
    def start(cls, oq: OmniQ, fn: Callable[..., Any], grid: Any, *, name: str | None = None,
              identity: str | None = None, **options: Any) -> Sweep:
        """Expand ``grid``, reuse finished points of an earlier run, submit the others.

        Points whose latest stored result succeeded are kept (one ``find_results`` call);
        points still in flight from an earlier start in this process are followed; the rest
        are submitted as one batch. ``oq.sweep(fn, grid, name=..., **options)`` calls this.

        Args:
            oq: An open ``OmniQ``.
            fn: The function; each point runs ``fn(**point)``.
            grid: A grid (see :func:`~omniq.sweep.expand_grid`).
            name: The sweep's name; None uses the function's name.
            identity: Overrides ``function_identity(fn)`` (the cell magic passes a digest of
                the cell source).
            **options: Enqueue options for every point (``queue``, ``priority``, ``retries``,
                ``timeout``, ...; not ``key`` or ``metadata``).

        Returns:
            The sweep, started.

        Raises:
            ConfigError: A bad argument or grid, named.

        Examples:
            >>> from omniq import OmniQ
            >>> from omniq.sweep import Sweep
            >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
            ...     Sweep.start(oq, pow, {"base": [2, 3], "exp": [2]}, name="p").wait(timeout=30).values()
            [4, 9]
        """
        with bulk():
            sw = cls(oq, oq.core, fn, grid, name=name, identity=identity, options=options)
            found = oq.find_results(sw.key_prefix)
            return sw._launch(found)

    def wait(self, timeout: float | None = None) -> Sweep:
        """Block until every point is final.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Returns:
            This sweep, so ``sw.wait().results()`` reads well.

        Raises:
            TimeoutError: Points are unfinished after ``timeout`` seconds (the message gives
                the counts); the sweep goes on.

        Examples:
            >>> from omniq import OmniQ
            >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
            ...     try:
            ...         oq.sweep(pow, {"base": [2], "exp": [2]}, name="nobody").wait(timeout=0.1)
            ...     except TimeoutError as e:
            ...         print(e)
            sweep 'nobody' did not finish within 0.1 s: {'queued': 1}
        """
        if not self._tracker.wait(timeout):
            raise TimeoutError(f"sweep {self.name!r} did not finish within {timeout} s: {self.counts()}")
        return self

    def retry_failed(self) -> Sweep:
        """Submit failed, cancelled and expired points again, in place.

        Returns:
            This sweep (so a displayed widget keeps tracking, and
            ``sw.retry_failed().wait()`` reads well).

        Examples:
            >>> from omniq import OmniQ
            >>> import os, tempfile
            >>> marker = os.path.join(tempfile.mkdtemp(), "tried")
            >>> def flaky(x):
            ...     if not os.path.exists(marker):
            ...         open(marker, "w").close()
            ...         raise RuntimeError("first try fails")
            ...     return x
            >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
            ...     sw = oq.sweep(flaky, {"x": [7]}, name="flaky").wait(timeout=30)
            ...     print(sw.counts(), sw.retry_failed().wait(timeout=30).counts(), sw.values())
            {'failed': 1} {'succeeded': 1} [7]
        """
        self._retry()
        return self

    def cancel(self) -> int:
        """Cancel every unfinished point.

        Returns:
            The number of tasks cancelled (running ones stop as the worker's kind allows; see
            ``OmniQ.cancel``).

        Examples:
            >>> from omniq import OmniQ
            >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
            ...     sw = oq.sweep(pow, {"base": [2, 3], "exp": [2]}, name="later")
            ...     print(sw.cancel(), sw.counts())
            2 {'cancelled': 2}
        """
        ids = self._unfinished_ids()
        return self._oq.cancel_many(ids) if ids else 0


class AsyncSweep(SweepBase):
    """A running sweep, from async code. Made by ``AsyncOmniQ.sweep``. Waiting and
    cancelling are coroutines; reading results is not (it does no I/O), as with
    ``AsyncTaskHandle.done()``. See :class:`SweepBase` for its attributes and reading methods.

    Examples:
        >>> import asyncio
        >>> from omniq import AsyncOmniQ
        >>> async def main():
        ...     async with AsyncOmniQ(tasks="memory://", worker="async", concurrency=2) as oq:
        ...         sw = await oq.sweep(pow, {"base": [2, 3], "exp": [2]}, name="p")
        ...         await sw.wait(timeout=30)
        ...         return sw.values()
        >>> asyncio.run(main())
        [4, 9]
    """

    @classmethod
    async def start(cls, oq: AsyncOmniQ, fn: Callable[..., Any], grid: Any, *,
                    name: str | None = None, identity: str | None = None, **options: Any) -> AsyncSweep:
        """Expand ``grid``, reuse finished points of an earlier run, submit the others.

        ``await oq.sweep(fn, grid, name=..., **options)`` calls this.

        Args:
            oq: An open ``AsyncOmniQ``.
            fn: The function; each point runs ``fn(**point)``.
            grid: A grid (see :func:`~omniq.sweep.expand_grid`).
            name: The sweep's name; None uses the function's name.
            identity: Overrides ``function_identity(fn)``.
            **options: Enqueue options for every point.

        Returns:
            The sweep, started.

        Raises:
            ConfigError: A bad argument or grid, named.

        Examples:
            See :class:`AsyncSweep`; it works as :meth:`Sweep.start`.
        """
        with bulk():
            sw = cls(oq, oq, fn, grid, name=name, identity=identity, options=options)
        found = await oq.find_results(sw.key_prefix)
        with bulk():
            return sw._launch(found)

    async def wait(self, timeout: float | None = None) -> AsyncSweep:
        """Wait until every point is final.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Returns:
            This sweep.

        Raises:
            TimeoutError: Points are unfinished after ``timeout`` seconds; the sweep goes on.

        Examples:
            See :class:`AsyncSweep`; it works as :meth:`Sweep.wait`.
        """
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(changed.set)

        remove = self._tracker.add_listener(wake)
        try:
            with anyio.move_on_after(timeout):
                while not self._tracker.complete:
                    await changed.wait()
                    changed.clear()
        finally:
            remove()
        if not self._tracker.complete:
            raise TimeoutError(f"sweep {self.name!r} did not finish within {timeout} s: {self.counts()}")
        return self

    async def retry_failed(self) -> AsyncSweep:
        """Submit failed, cancelled and expired points again, in place.

        Returns:
            This sweep.

        Examples:
            ``await (await sw.retry_failed()).wait()``; it works as :meth:`Sweep.retry_failed`.
        """
        self._retry()
        return self

    async def cancel(self) -> int:
        """Cancel every unfinished point.

        Returns:
            The number of tasks cancelled.

        Examples:
            ``n = await sw.cancel()``; it works as :meth:`Sweep.cancel`.
        """
        return await self._core.cancel_many(self._unfinished_ids())

