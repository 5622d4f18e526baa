"""The executor machinery over an open client: futures that follow tasks, ``submit`` and
``map`` through the batched intake, cancel and shutdown. ``oq.executor()`` returns a
``BoundExecutor``; ``omniq.Executor`` (``omniq/executor.py``, where its behaviour is described
as users meet it) is the one that makes and closes an OmniQ of its own.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import concurrent.futures as cf
import contextlib
import inspect
import io
import os
import pickle
import re
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import TYPE_CHECKING, Any

from .. import _chunks
from .._futures import ResultFuture, settle
from ..errors import ConfigError, SerializationError, TaskError
from ..models import TaskEvent, TaskResult, TaskStatus
from ..serialization._blobs import THRESHOLD as BLOB_THRESHOLD
from ..serialization._blobs import data_nbytes
from .checks import callable_name

if TYPE_CHECKING:
    from ..models import Task
    from .facade import OmniQ
    from .orchestrator import AsyncOmniQ

__all__ = ["BoundExecutor", "ExecutorFuture", "remote_exception"]

# --------------------------------------------------------------------------------------------
# remote exceptions
# --------------------------------------------------------------------------------------------
#: error types OmniQ itself records: they stay ``TaskError`` (or its subclasses)
_OWN_TYPES = frozenset({"TaskError", "TaskCancelled", "TaskExpired", "WorkerDied", "TaskTimeout",
                        "MemoryLimitExceeded", "SignatureError"})
_QUALNAME = re.compile(r"([A-Za-z_][\w.]*)(?::|$)")


def remote_exception(result: TaskResult) -> BaseException:
    """The exception a task that did not succeed raises in this process.

    Its remote exception is rebuilt with the original type when that type can be found here
    (a builtin, or a class of a module already imported) and built from its message; its
    ``__cause__`` is then the ``TaskError`` with the remote traceback. Otherwise, and for
    OmniQ's own ends (cancelled, expired, worker died, timeout, memory limit, signature), the
    ``TaskError`` (or its subclass) itself.

    Args:
        result: a ``TaskResult`` whose status is not ``SUCCEEDED``.

    Returns:
        The exception to raise (not raised here).

    Examples:
        >>> from omniq import ErrorInfo, TaskResult, TaskStatus
        >>> from omniq.executor import remote_exception
        >>> r = TaskResult(task_id="t1", status=TaskStatus.FAILED,
        ...                error=ErrorInfo(type="KeyError", message="'lr'", traceback="..."))
        >>> e = remote_exception(r)
        >>> type(e).__name__, type(e.__cause__).__name__
        ('KeyError', 'TaskError')
    """
    err = TaskError.from_info(result.task_id, result.error)
    if result.error is None or err.type in _OWN_TYPES or type(err) is not TaskError:
        return err
    exc = _rebuild(err.type, err.message, err.traceback)
    if exc is None:
        return err
    exc.__cause__ = err
    return exc


def _rebuild(name: str, message: str, tb: str) -> BaseException | None:
    cls = _find_class(name, tb)
    if cls is None:
        return None
    for args in _candidate_args(cls, message):
        try:
            exc = cls(*args)
            if type(exc) is cls and str(exc) == message:
                return exc
        except Exception:
            continue
    try:  # a constructor that wants other arguments: the message as its only argument
        exc = cls.__new__(cls)
        exc.args = (message,)
        str(exc)
        return exc
    except Exception:
        return None


def _candidate_args(cls: type, message: str) -> list[tuple[Any, ...]]:
    literal: list[tuple[Any, ...]] = []
    try:
        literal = [(ast.literal_eval(message),)] if message else []
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    plain = [(message,)] if message else [(), ("",)]
    # KeyError's str() is the repr of its key: the literal first
    return literal + plain if issubclass(cls, KeyError) else plain + literal


def _find_class(name: str, tb: str) -> type[BaseException] | None:
    """The exception class named ``name``, found by the qualified name the traceback's last
    line gives (``pkg.mod.Name: message``) in ``builtins``, ``__main__`` or a module this
    process has already imported (nothing is imported for it)."""
    qual = name
    for line in reversed(tb.splitlines()):
        m = _QUALNAME.match(line)
        if m and (m[1] == name or m[1].endswith("." + name)):
            qual = m[1]
            break
    parts = qual.split(".")
    candidates: list[tuple[Any, list[str]]] = []
    if len(parts) == 1:
        candidates = [(builtins, parts), (sys.modules.get("__main__"), parts)]
    for i in range(len(parts) - 1, 0, -1):
        candidates.append((sys.modules.get(".".join(parts[:i])), parts[i:]))
    for module, path in candidates:
        if module is None:
            continue
        obj: Any = module
        for p in path:
            obj = getattr(obj, p, None)
            if obj is None:
                break
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__name__ == name:
            return obj
    return None


# --------------------------------------------------------------------------------------------
# futures
# --------------------------------------------------------------------------------------------
class ExecutorFuture(ResultFuture[Any]):
    """A ``concurrent.futures.Future`` for one task of an executor.

    Made by ``Executor.submit`` and ``Executor.map``, never by hand. ``cf.wait``,
    ``cf.as_completed``, ``asyncio.wrap_future`` and ``loop.run_in_executor`` take it as it is.

    Attributes:
        task_id: the OmniQ task it follows (``oq.get_result(f.task_id)`` reads the stored
            result; ``oq.events(task_id=...)`` its history).

    Examples:
        >>> from omniq import Executor
        >>> with Executor(max_workers=1, tasks="memory://", worker="thread") as ex:
        ...     f = ex.submit(abs, -3)
        ...     print(f.result(timeout=30), ex.oq.get_result(f.task_id).status.value)
        3 succeeded
    """

    __slots__ = ("_checked", "_st", "task_id")

    def __init__(self, state: _State, task_id: str) -> None:
        super().__init__()
        self._st: _State | None = state
        self.task_id = task_id
        self._checked = state.watching  # started events reach it (else: ask once, in running())

    def running(self) -> bool:
        """Whether a worker runs (or holds) the task now.

        Asked first, this starts following OmniQ's ``started`` events for the executor and looks
        the task up once, so it turns True a few milliseconds after the task started.

        Returns:
            True while the task runs; False while it is queued and once it is done.

        Examples:
            >>> import time
            >>> from omniq import Executor
            >>> with Executor(max_workers=1, tasks="memory://", worker="thread") as ex:
            ...     f = ex.submit(time.sleep, 0.5)
            ...     while not f.running() and not f.done():
            ...         time.sleep(0.01)
            ...     print(f.running() or f.done())
            True
        """
        st = self._st
        if self._state == PENDING and st is not None and not self._checked:
            st.look_running(self)
        return self._state == RUNNING

    def cancel(self) -> bool:
        """Cancel the call if it has not started, its OmniQ task too.

        A task a worker already holds is left to run, as the standard library's executors do.

        Returns:
            True when the future is (now) cancelled; False when it runs or is done.

        Examples:
            >>> from omniq import OmniQ
            >>> with OmniQ(tasks="memory://", concurrency=0) as oq:    # no workers: stays queued
            ...     ex = oq.executor()
            ...     f = ex.submit(abs, -1)
            ...     print(f.cancel(), f.cancelled(), oq.get_result(f.task_id, wait=True).status.value)
            ...     ex.shutdown()
            True True cancelled
        """
        state = self._state
        if state in (RUNNING, FINISHED):
            return False
        if state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            return True
        st = self._st
        if st is None:
            return _cancel_here(self)
        return self in st.cancel([self])

    def _take(self, inner: cf.Future[TaskResult]) -> None:
        """``inner`` (the task's ``TaskResult`` future) is done: settle this one (on OmniQ's loop)."""
        st, self._st = self._st, None
        if st is not None:
            st.forget(self)
        if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED):
            return
        exc = inner._exception  # (done: read without the condition)
        if exc is not None:  # the task could not be stored
            settle(self, exc, failed=True)
            return
        r: TaskResult = inner._result  # type: ignore[assignment]
        if r.status is TaskStatus.SUCCEEDED:
            try:
                box = [r.value]
            except Exception as e:  # e.g. a class this process cannot import
                settle(self, SerializationError(f"task {r.task_id}: its result could not be read here: {e}"),
                       failed=True)
            else:
                r.__dict__.pop("_value", None)  # the result record keeps no copy
                _give(self, box)
        elif r.status is TaskStatus.CANCELLED and self._state == PENDING:
            _cancel_here(self)
        else:
            settle(self, remote_exception(r), failed=True)

    def _mark_running(self) -> None:
        with self._condition:
            if self._state == PENDING:
                self._state = RUNNING


def _give(f: ExecutorFuture, box: list[Any]) -> None:
    """``set_result(box.pop())`` holding no other reference to the value once waiters wake:
    a caller who drops the value finds it freed at once, as with the standard executors
    (CPython's ``test_free_reference``)."""
    with f._condition:
        if f._state not in (PENDING, RUNNING):
            box.clear()
            return
        f._result = box.pop()
        f._state = FINISHED
        for w in f._waiters:
            w.add_result(f)
        f._condition.notify_all()
    f._invoke_callbacks()


def _cancel_here(f: cf.Future[Any]) -> bool:
    """Cancel the future itself (not its task) and notify its waiters, as an executor's
    worker does for a cancelled call: ``wait`` and ``as_completed`` count it done."""
    with f._condition:
        if f._state in (RUNNING, FINISHED):
            return False
        if f._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            return True
        f._state = CANCELLED_AND_NOTIFIED
        for waiter in f._waiters:
            waiter.add_cancelled(f)
        f._condition.notify_all()
    f._invoke_callbacks()  # type: ignore[attr-defined]
    return True


# --------------------------------------------------------------------------------------------
# what an executor needs of its OmniQ
# --------------------------------------------------------------------------------------------
_NOT_TASK_OPTIONS = frozenset({"self", "fn", "args", "kwargs", "task_id", "payload", "blobs", "now", "key",
                               "depends_on"})


def task_option_names() -> frozenset[str]:
    """Options one task takes (``enqueue``'s keywords, less ``key`` and ``depends_on``).

    Returns:
        The names ``Executor(...)``, ``oq.executor(...)`` and the joblib backend accept as task
        options.

    Examples:
        >>> from omniq.executor import task_option_names
        >>> {"queue", "retries", "timeout"} <= task_option_names(), "key" in task_option_names()
        (True, False)
    """
    from .intake import Intake

    params = inspect.signature(Intake.make_task).parameters
    return frozenset(params) - _NOT_TASK_OPTIONS


def check_task_options(options: dict[str, Any], where: str) -> dict[str, Any]:
    """Check that every name in ``options`` is a task option.

    Args:
        options: option names and values.
        where: the call to name in the error (``"executor()"``).

    Returns:
        ``options`` itself.

    Raises:
        ConfigError: naming the first option that is not a task option, and the valid ones.

    Examples:
        >>> from omniq import ConfigError
        >>> from omniq.executor import check_task_options
        >>> check_task_options({"retries": 2}, "executor()")
        {'retries': 2}
        >>> try:
        ...     check_task_options({"retry": 2}, "executor()")
        ... except ConfigError as e:
        ...     print(str(e).split(":")[0])
        executor() got an unknown option 'retry'
    """
    valid = task_option_names()
    for name in options:
        if name not in valid:
            raise ConfigError(f"{where} got an unknown option {name!r}: expected task options "
                              f"({', '.join(sorted(valid))})")
    return options


class _State:
    """An executor's state, shared with its futures (which must not keep the executor alive):
    the OmniQ, task options, the futures not final yet and the tasks they follow."""

    def __init__(self, core: AsyncOmniQ, sync: OmniQ | None, task_options: dict[str, Any], *,
                 owned: bool) -> None:
        self.oq: OmniQ | AsyncOmniQ = core if sync is None else sync
        self.sync = sync
        self.core = core
        self.task_options = task_options
        self.owned = owned
        self.lock = threading.Lock()
        self.closed = False
        self.pending: set[ExecutorFuture] = set()
        # task id -> its future: for `started` events
        self.watch: dict[str, ExecutorFuture] = {}
        # started events are followed from the first running() on (they cost the loop ~20% of
        # a submit's throughput, and only running() needs them)
        self.watching = False
        self._unsubscribe: Callable[[], None] | None = None

    # --- handing tasks over --------------------------------------------------------------------
    def accept(self, tasks: Sequence[Task]) -> list[ResultFuture[TaskResult]]:
        if self.sync is not None:
            return self.sync._hand_over(tasks)
        return self.core.intake.accept(tasks)

    def follow(self, task_ids: Sequence[str], inner: Sequence[cf.Future[TaskResult]]) -> list[ExecutorFuture]:
        """One executor future per task, settled from the task's ``TaskResult`` future."""
        out = []
        pending, watch = self.pending, self.watch
        for tid, f in zip(task_ids, inner):
            uf = watch[tid] = ExecutorFuture(self, tid)
            pending.add(uf)
            out.append(uf)
            f.add_done_callback(uf._take)
        return out

    def forget(self, f: ExecutorFuture) -> None:
        self.pending.discard(f)
        self.watch.pop(f.task_id, None)

    def look_running(self, f: ExecutorFuture) -> None:
        """``running()`` asked about a future: follow started events from now on, and look its
        task up once (it may have started before)."""
        f._checked = True
        core = self.core
        if not self.watching:
            with self.lock:
                if not self.watching and core.is_open:
                    try:
                        self._unsubscribe = core.on_event(self._on_event, ["started"])
                        self.watching = True
                    except RuntimeError:  # closed meanwhile
                        return
        if threading.get_ident() == core.session.loop_thread or not core.is_open:
            return
        with contextlib.suppress(Exception):
            if f.task_id in self._run(_held_by_workers, core, [f.task_id]):
                f._mark_running()

    def _on_event(self, ev: TaskEvent) -> None:
        f = self.watch.get(ev.task_id)
        if f is not None:
            f._mark_running()

    # --- cancelling -----------------------------------------------------------------------------
    def cancel(self, futures: Iterable[ExecutorFuture], *, spare: int = 0) -> set[ExecutorFuture]:
        """Cancel the queued tasks of ``futures`` (all but the first ``spare`` of them, which the
        idle worker slots take next) and those futures; the cancelled futures. Futures whose
        task a worker holds are marked running and left alone."""
        cand = [f for f in futures if f._state == PENDING]
        if not cand:
            return set()
        roots = dict.fromkeys(f.task_id for f in cand)
        core = self.core
        if not core.is_open:  # nothing can run it any more
            return {f for f in cand if _cancel_here(f)}
        if threading.get_ident() == core.session.loop_thread:
            # on OmniQ's loop (a done callback, a coroutine of an AsyncOmniQ): we cannot wait for
            # the storage here, so the futures are cancelled now and the tasks right after
            loop = core.session.loop
            assert loop is not None
            loop.create_task(core.cancel_many(list(roots)))
            return {f for f in cand if _cancel_here(f)}
        try:
            cancelled, running = self._run(_cancel_queued, core, list(roots), spare)
        except Exception:
            if core.is_open:
                raise
            return {f for f in cand if _cancel_here(f)}
        out = set()
        for f in cand:
            root = f.task_id
            if root in cancelled:
                if _cancel_here(f) or f.cancelled():
                    out.add(f)
            elif root in running:
                f._mark_running()
        return out

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``await fn(*args)`` on OmniQ's loop, from another thread."""
        if self.sync is not None:
            thread = self.sync._thread
            if thread is None:
                raise RuntimeError("this OmniQ is closed")
            return thread.call(fn, *args)
        loop = self.core.session.loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(fn(*args), loop).result()

    def local_slots(self) -> int:
        """Worker slots of this instance serving the executor's queue (0: none here)."""
        core = self.core
        queue = self.task_options.get("queue", "default")
        return core.config.concurrency if core.session.serves(queue) else 0

    # --- ending ---------------------------------------------------------------------------------
    def wait_all(self) -> None:
        while True:
            fs = list(self.pending)
            if not fs:
                return
            cf.wait(fs)
            for f in fs:
                if f.done():
                    self.pending.discard(f)

    def close(self, *, wait: bool) -> None:
        """After ``shutdown``: wait for the futures (``wait``), stop following events, and
        close the OmniQ if this executor owns it."""
        if wait:
            self.wait_all()
        with self.lock:
            if self.closed:
                return
            self.closed = True
        unsub, self._unsubscribe = self._unsubscribe, None
        if unsub is not None:
            with contextlib.suppress(Exception):
                unsub()
        if self.owned and self.sync is not None:
            self.sync.close(drain=True)


async def _held_by_workers(core: AsyncOmniQ, ids: list[str]) -> set[str]:
    """Those of ``ids`` a worker holds (RUNNING in storage)."""
    await core.flush()
    resolved = {tid: core.waiters.resolve_id(tid) for tid in ids}
    states = await core.session.queue.statuses(list(dict.fromkeys(resolved.values())))
    return {t for t in ids if states.get(resolved[t]) is TaskStatus.RUNNING}


async def _cancel_queued(core: AsyncOmniQ, ids: list[str], spare: int) -> tuple[set[str], set[str]]:
    """Cancel those of ``ids`` still waiting (queued or pending) but the first ``spare`` queued
    ones; ``(cancelled ids, ids a worker holds)``."""
    await core.flush()
    resolved = {tid: core.waiters.resolve_id(tid) for tid in ids}
    states = await core.session.queue.statuses(list(dict.fromkeys(resolved.values())))
    waiting = [t for t in ids if states.get(resolved[t]) in (TaskStatus.QUEUED, TaskStatus.PENDING)]
    running = {t for t in ids if states.get(resolved[t]) is TaskStatus.RUNNING}
    if spare > 0:
        queued = [t for t in waiting if states.get(resolved[t]) is TaskStatus.QUEUED]
        keep = set(queued[:spare])
        running |= keep
        waiting = [t for t in waiting if t not in keep]
    if waiting:
        await core.cancel_many(waiting)
    return set(waiting), running


# --------------------------------------------------------------------------------------------
# the executor
# --------------------------------------------------------------------------------------------
_global_shutdown = False
_LIVE: weakref.WeakSet[_State] = weakref.WeakSet()


def _python_exit() -> None:
    """At interpreter exit (before non-daemon threads are joined), as the standard library's
    executors: no new futures, and executors still open finish their work, then close."""
    global _global_shutdown
    _global_shutdown = True
    for st in list(_LIVE):
        if st.owned and not st.closed:
            with contextlib.suppress(BaseException):
                st.close(wait=True)


_register = getattr(threading, "_register_atexit", None)
try:
    if _register is None:  # pragma: no cover - every supported Python has it
        raise RuntimeError
    _register(_python_exit)
except RuntimeError:  # imported while the interpreter exits, or no such hook
    import atexit

    atexit.register(_python_exit)


class BoundExecutor(cf.Executor):
    """A ``concurrent.futures.Executor`` whose calls run as tasks of an open OmniQ.

    ``oq.executor(**task_options)`` returns one; its ``shutdown`` leaves the OmniQ open.
    ``omniq.Executor`` is the one that makes (and closes) an OmniQ of its own.

    Examples:
        >>> from omniq import OmniQ
        >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
        ...     ex = oq.executor(retries=1)
        ...     print(ex.submit(divmod, 7, 2).result(timeout=30), oq.core.is_open)
        (3, 1) True
    """

    def __init__(self, core: AsyncOmniQ, task_options: dict[str, Any] | None = None, *,
                 sync: OmniQ | None = None, owned: bool = False) -> None:
        """Args:
            core: the open ``AsyncOmniQ`` the tasks go to.
            task_options: options applied to every call (``queue``, ``retries``, ...).
            sync: the ``OmniQ`` facade over ``core``, when the caller has one (calls then go
                through its loop thread).
            owned: close the OmniQ on ``shutdown`` (``omniq.Executor``).

        Raises:
            ConfigError: an unknown task option, or ``core`` is not open (and not ``owned``).
        """
        task_options = check_task_options(dict(task_options or {}), "executor()")
        if not owned and not core.is_open:
            raise ConfigError(f"{sync or core!r} is not open: open it first (`with OmniQ(...) as oq:` or "
                              "oq.open()); an executor does not reopen an OmniQ")
        if task_options:  # validated once here, not on every submit
            core.intake.make_task(_noop, **task_options)
        if owned and sync is not None:
            sync.open()
        self._st = _State(core, sync, task_options, owned=owned)
        self._max_workers = core.config.concurrency
        self._shutdown = False
        _LIVE.add(self._st)
        if owned:
            weakref.finalize(self, _close_dropped, self._st)

    @property
    def oq(self) -> OmniQ | AsyncOmniQ:
        """The OmniQ the tasks go to (the one it made, or the one ``oq.executor()`` was called on).

        Examples:
            >>> from omniq import Executor
            >>> with Executor(max_workers=1, tasks="memory://") as ex:
            ...     print(ex.oq.config.default_worker, ex.oq.config.concurrency)
            process 1
        """
        return self._st.oq

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "open"
        return f"<omniq.Executor {state} {self._st.oq!r} pending={len(self._st.pending)}>"

    # --- submitting ---------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Run ``fn(*args, **kwargs)`` as an OmniQ task.

        The task is handed to OmniQ's batched intake and stored within milliseconds; leaving the
        ``with`` block (or ``shutdown()``) waits for it.

        Args:
            fn: the function; defined in ``__main__``, a notebook or a closure, it travels by
                value (the globals it reads with it).
            *args: its positional arguments.
            **kwargs: its keyword arguments.

        Returns:
            An ``ExecutorFuture`` (a ``concurrent.futures.Future``): its result is ``fn``'s
            value; its exception the remote one with its own type where possible (see
            ``remote_exception``).

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the executor was shut down.
            SerializationError: ``fn`` or an argument cannot be serialized.

        Examples:
            >>> from omniq import Executor
            >>> with Executor(max_workers=1, tasks="memory://") as ex:
            ...     f = ex.submit(int, "ff", base=16)
            ...     print(f.result(timeout=30))
            255
        """
        if not callable(fn):
            raise TypeError(f"submit(): fn={fn!r} is not callable")
        st = self._st
        with st.lock:
            self._check_open()
            task = st.core.intake.make_task(fn, args, kwargs, **st.task_options)
            (inner,) = st.accept([task])
            uf = st.watch[task.id] = ExecutorFuture(st, task.id)
            st.pending.add(uf)
        inner.add_done_callback(uf._take)
        return uf

    def _submit_tasks(self, tasks: Sequence[Task], inner: list[Any] | None = None) -> list[ExecutorFuture]:
        """Futures for tasks built elsewhere (the joblib backend: keys, names); ``inner``
        receives the tasks' ``TaskResult`` futures (for a progress display)."""
        st = self._st
        with st.lock:
            self._check_open()
            fs = st.accept(tasks)
            if inner is not None:
                inner.extend(fs)
            return st.follow([t.id for t in tasks], fs)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | str = 1,
    ) -> Iterator[Any]:
        """``fn(*args)`` for each ``args`` of ``zip(*iterables)``, results in order, as
        ``ProcessPoolExecutor.map``.

        Every call is submitted before it returns (with chunks, each as soon as it is pickled).

        Args:
            fn: the function.
            *iterables: its arguments, one iterable per parameter (zipped, shortest wins).
            timeout: seconds, counted from this call, for all results; None waits as long as
                it takes.
            chunksize: calls per task. 1 (default): a task and a future per call. N > 1 or
                ``"auto"`` (four chunks per worker slot): one task per chunk, ``fn`` serialized
                once, far fewer rows for many small calls; a chunk's calls succeed or fail
                together.

        Returns:
            An iterator of the values in input order; iterating it raises the first call's
            exception as ``Future.result()`` would.

        Raises:
            TypeError: ``fn`` is not callable, or ``chunksize`` is not an int or ``"auto"``.
            ValueError: ``chunksize`` < 1.
            RuntimeError: the executor was shut down.
            TimeoutError: (while iterating) a value was not ready by ``timeout``; the calls
                not finished are cancelled.

        Examples:
            >>> from omniq import Executor
            >>> with Executor(max_workers=2, tasks="memory://") as ex:
            ...     print(list(ex.map(pow, [2, 3, 4], [2, 2, 2], chunksize=2)))
            [4, 9, 16]
        """
        if not callable(fn):
            raise TypeError(f"map(): fn={fn!r} is not callable")
        if chunksize != "auto" and (isinstance(chunksize, bool) or not isinstance(chunksize, int)):
            raise TypeError(f"chunksize={chunksize!r} is not valid: expected an int >= 1 or 'auto'")
        if chunksize != "auto" and chunksize < 1:  # type: ignore[operator]
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        calls = list(zip(*iterables))
        st = self._st
        if not calls:
            with st.lock:
                self._check_open()
            return iter(())
        with st.lock:
            self._check_open()
            if chunksize == 1:
                tasks = st.core.build_tasks(fn, [(args, {}) for args in calls], **st.task_options)
                fs = st.follow([t.id for t in tasks], st.accept(tasks))
            else:  # as ProcessPoolExecutor.map: one task and one future per chunk
                return _chained(_results(self._map_chunks(fn, calls, chunksize), end_time, st))
        return _results(fs, end_time, st)

    def _map_chunks(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], chunksize: int | str) -> list[ExecutorFuture]:
        """One task per ``chunksize`` calls, each returning its calls' values as one list
        (one result to store and decode, as ``ProcessPoolExecutor``'s chunks); ``fn`` is
        serialized once for all of them. Under ``st.lock``."""
        import msgspec

        from ..serialization import dumps_call

        st = self._st
        core = st.core
        size = _chunks.chunk_length(chunksize, len(calls), core.config.concurrency or os.cpu_count() or 1)
        opts = dict(st.task_options)
        timeout = opts.pop("timeout", None)
        sink = core.intake.blob_sink()
        fn_payload = dumps_call(fn, blobs=sink)
        fn_blobs = core.intake.hold_blobs(sink)
        name = callable_name(fn)
        out: list[ExecutorFuture] = []
        # Chunk by chunk: each is handed over as soon as it is pickled, so the first ones are
        # stored and running while the later ones are pickled (pickling them all first made the
        # workers wait for the whole map: 50 ms for 200,000 calls, a third of the map's time).
        for i in range(0, len(calls), size):
            c = calls[i : i + size]
            packed = pack(c)
            (t,) = core.build_tasks(_run_calls, [((fn_payload, c), {}) if packed is None else
                                                 ((fn_payload, *packed), {})], **opts)
            t = msgspec.structs.replace(t, name=name, timeout=float(timeout) * len(c) if timeout else None,
                                        blobs=tuple(dict.fromkeys(t.blobs + fn_blobs)) if fn_blobs else t.blobs)
            out.extend(st.follow([t.id], st.accept([t])))
        return out

    # --- ending -------------------------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no new calls, as the standard library's executors do.

        The ``OmniQ`` is closed when this executor made it (after its calls finish, also with
        ``wait=False``); one given by ``oq.executor()`` stays open. Calling it again does
        nothing more.

        Args:
            wait: wait until every call submitted is done (and the ``OmniQ`` closed).
            cancel_futures: cancel the calls still queued, their OmniQ tasks too, except those
                the idle worker slots take next (as ``ProcessPoolExecutor`` hands up to
                ``max_workers + 1`` calls to its processes).

        Examples:
            >>> from omniq import Executor
            >>> ex = Executor(max_workers=1, tasks="memory://", worker="thread")
            >>> f = ex.submit(abs, -5)
            >>> ex.shutdown()
            >>> f.result(), ex.oq.core.is_open
            (5, False)
        """
        st = self._st
        with st.lock:
            self._shutdown = True
        if cancel_futures:
            spare = 0
            if st.core.is_open:
                spare = st.local_slots() - sum(1 for f in list(st.pending) if f._state == RUNNING)
            st.cancel(sorted(st.pending, key=_order), spare=max(0, spare))
        if wait:
            st.close(wait=True)
        elif not st.closed:
            threading.Thread(target=st.close, kwargs={"wait": True}, name="omniq-executor-shutdown",
                             daemon=False).start()


def _order(f: ExecutorFuture) -> str:
    return f.task_id  # time-ordered ids: submission order


def _noop() -> None:
    return None


def _close_dropped(st: _State) -> None:
    """An owned executor was garbage-collected without ``shutdown``: finish and close (off
    this thread, as collection can happen anywhere)."""
    if not st.closed and not _global_shutdown:
        threading.Thread(target=st.close, kwargs={"wait": True}, name="omniq-executor-shutdown",
                         daemon=False).start()


def _results(fs: list[ExecutorFuture], end_time: float | None, st: _State) -> Iterator[Any]:
    """Values in order (``Executor.map``'s iterator): what is left when it stops early (a
    timeout, an exception, the caller dropping it) is cancelled in one call."""
    try:
        fs.reverse()
        while fs:
            if end_time is None:
                yield _result_or_cancel(fs.pop())
            else:
                yield _result_or_cancel(fs.pop(), end_time - time.monotonic())
    finally:
        if fs:
            with contextlib.suppress(Exception):
                st.cancel(fs)


# --------------------------------------------------------------------------------------------
# many calls as one argument: the C pickler, with OmniQ's serializer where it must decide
# --------------------------------------------------------------------------------------------
def pack(obj: Any) -> tuple[bytes, tuple[Any, ...]] | None:
    """Pickle ``obj`` with the C pickler, leaving to OmniQ's serializer what it must decide.

    Tens of times faster than going through dill, which OmniQ's serializer does for anything
    not plain data. ``refs`` holds what OmniQ's serializer must handle itself: functions and
    classes defined in ``__main__`` or locally (shipped by value) and large numpy / pandas
    data (blobs, stored once however many calls share them).

    Args:
        obj: the value (a chunk of calls, a joblib batch).

    Returns:
        ``(bytes, refs)``, or None when the C pickler cannot take ``obj``.

    Examples:
        >>> from omniq.executor import pack, unpack
        >>> data, refs = pack([(abs, (-1,)), (lambda x: x, (2,))])
        >>> len(refs), unpack(data, refs)[0]
        (1, (<built-in function abs>, (-1,)))
    """
    buf = io.BytesIO()
    p = _RefPickler(buf)
    try:
        p.dump(obj)
    except Exception:
        return None
    return buf.getvalue(), tuple(p.refs)


def unpack(data: bytes, refs: Sequence[Any]) -> Any:
    """``pack``'s inverse (in the worker).

    Args:
        data: the bytes ``pack`` gave.
        refs: its ``refs``, as OmniQ's serializer brought them back.

    Returns:
        The value packed.

    Examples:
        >>> from omniq.executor import pack, unpack
        >>> unpack(*pack({"a": [1, 2]}))
        {'a': [1, 2]}
    """
    return _RefUnpickler(io.BytesIO(data), refs).load()


def _ref(index: int) -> Any:  # pragma: no cover - resolved by _RefUnpickler.find_class
    raise RuntimeError("a packed value was unpickled without its refs (use omniq.executor.unpack)")


class _RefPickler(pickle.Pickler):
    def __init__(self, file: Any) -> None:
        super().__init__(file, protocol=5)
        self.refs: list[Any] = []
        self._index: dict[int, int] = {}

    def reducer_override(self, obj: Any) -> Any:
        # not called for plain ints, strs, lists, dicts, ... (the C pickler's fast paths)
        t = type(obj)
        if t is types.FunctionType or isinstance(obj, type):
            mod = getattr(obj, "__module__", None)
            if not (mod is None or mod == "__main__" or "<" in getattr(obj, "__qualname__", "<")):
                return NotImplemented
        elif not (t.__module__.startswith(("numpy", "pandas")) and data_nbytes(obj) >= BLOB_THRESHOLD):
            return NotImplemented
        i = self._index.get(id(obj))
        if i is None:
            i = self._index[id(obj)] = len(self.refs)
            self.refs.append(obj)
        return _ref, (i,)


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, refs: Sequence[Any]) -> None:
        super().__init__(file)
        self._refs = refs

    def find_class(self, module: str, name: str) -> Any:
        if name == "_ref" and module == __name__:
            return self._refs.__getitem__
        return super().find_class(module, name)


def _chained(lists: Iterator[list[Any]]) -> Iterator[Any]:
    """The values of a chunked ``map``, in order; each chunk's list is emptied as it is read
    (no reference kept to a value already yielded)."""
    for values in lists:
        values.reverse()
        while values:
            yield values.pop()


def _run_calls(fn_payload: bytes, calls: Any, refs: Sequence[Any] | None = None) -> list[Any]:
    """A chunk of ``Executor.map`` in the worker: ``fn(*args)`` for each ``args``, in order
    (the first exception fails the chunk, as in ``ProcessPoolExecutor.map``). ``calls`` is
    ``pack``ed when ``refs`` is given."""
    fn = _chunks._load(fn_payload)
    if refs is not None:
        calls = unpack(calls, refs)
    return [fn(*args) for args in calls]


def _result_or_cancel(fut: cf.Future[Any], timeout: float | None = None) -> Any:
    try:
        try:
            return fut.result(timeout)
        finally:
            fut.cancel()
    finally:
        # map's futures are its own: drop the value now, as OmniQ's loop may still hold the
        # future a moment (running its callbacks) when the caller drops the value
        fut._result = None
        del fut  # no reference to the future (nor its value) is kept by this frame
