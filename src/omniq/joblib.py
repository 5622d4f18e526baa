"""joblib backend ``"omniq"``: ``joblib.Parallel`` -- and so scikit-learn's ``n_jobs`` -- on OmniQ.

```python
from omniq.joblib import register
register()                                    # (``%load_ext omniq`` does it too)
with joblib.parallel_config(backend="omniq", oq=oq, name="grid-1"):
    GridSearchCV(model, grid, n_jobs=-1).fit(X, y)
```

Inside the block every ``Parallel`` call sends its batches to ``oq`` as tasks (through an
``oq.executor()``), so they run on its workers -- process workers, ``omniq worker`` processes on
other machines -- and their results are stored like any task's.

Options of ``parallel_config(backend="omniq", ...)``:

- ``oq``: an open ``OmniQ`` (or ``AsyncOmniQ``). Without it: the kernel's instance from
  ``%omniq init``, else a private one per set of options (process workers, one slot per CPU,
  the configured storage), kept open for later calls and closed at exit.
- ``name``: makes calls resumable. Each call is then one task keyed as a sweep point:
  ``"{name}/{function identity}/{arguments digest}"`` (the function's code and closure, and a
  digest of its arguments; a wrapper such as scikit-learn's ``delayed`` is looked through,
  its ``config`` counts as an argument). Running the same code again -- after a kernel
  restart, in another process on the same storage -- adopts each call whose task is still
  queued or running and reuses each stored success, so only missing and failed calls run.
- ``chunksize``: calls per task (default: joblib's automatic batch size, which grows while
  batches finish faster than 0.2 s; 1 with ``name``).
- ``progress``: the live progress widget, shown by default when running in a Jupyter kernel.
- anything else: ``OmniQ`` constructor options for the private instance (``tasks``,
  ``worker``, ``concurrency``, ...), or task options for every call (``queue``, ``priority``,
  ``retries``, ``timeout``, ...). An unknown name is a ``ConfigError`` naming it.

``n_jobs=-1`` (or ``None``) means every worker slot of the instance (``concurrency``, or the
slots of the live workers when it has none of its own), at least 2 so that joblib does not fall
back to running calls in the caller; ``n_jobs=-2`` one fewer, and so on; a positive
``n_jobs`` is taken as asked. An exception raised by a call is re-raised with its original
type (see ``omniq.executor.remote_exception``); the remaining queued tasks are cancelled.

Every ``Parallel`` call made in the block goes through OmniQ, however deep in library code it
is (``cross_val_score`` -> ``cross_validate`` -> ``Parallel``), and so does a ``Parallel`` call
made *inside* a task (a ``GridSearchCV`` over a ``RandomForest(n_jobs=-1)``: each fit's trees),
as far as there is room: the task making it waits for it, so it lends its own worker slot and
OmniQ takes the rest only while slots are free; a pool whose every slot is busy runs the inner
call inline, and an inner task that no slot gets to in time is run by the waiting task itself,
so nested calls cannot deadlock (``NestedBackend`` says how). Storage other processes cannot
reach (``memory://``) keeps joblib's default there: the worker's threads.

Examples:
    >>> import joblib
    >>> from omniq import OmniQ
    >>> from omniq.joblib import register
    >>> register()
    >>> with OmniQ(tasks="memory://", concurrency=2) as oq:
    ...     with joblib.parallel_config(backend="omniq", oq=oq):
    ...         print(joblib.Parallel(n_jobs=-1)(joblib.delayed(pow)(2, n) for n in range(5)))
    [1, 2, 4, 8, 16]
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import contextlib
import hashlib
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from joblib.parallel import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
    ThreadingBackend,
    register_parallel_backend,
)

from ._futures import settle
from .client.checks import callable_name
from .core import AsyncOmniQ, OmniQ
from .errors import ConfigError
from .executor import BoundExecutor, omniq_option_names, pack, task_option_names, unpack
from .models import TaskStatus
from .redact import masked
from .sweep import Canon, function_identity, identity_digest, latest_results

if TYPE_CHECKING:
    from .models import Task

__all__ = ["BACKEND", "OmniQBackend", "call_key", "register"]

BACKEND = "omniq"


def register() -> None:
    """Register the joblib backend ``"omniq"`` (idempotent).

    ``%load_ext omniq`` calls it; elsewhere call it once before
    ``joblib.parallel_config(backend="omniq", ...)``.

    Examples:
        >>> import joblib
        >>> from omniq.joblib import BACKEND, register
        >>> register()
        >>> BACKEND in joblib.parallel.BACKENDS
        True
    """
    register_parallel_backend(BACKEND, OmniQBackend)


# --------------------------------------------------------------------------------------------
# in the worker
# --------------------------------------------------------------------------------------------
def run_batch(batch: Callable[[], list[Any]], threads: int | None = None) -> list[Any]:
    """A task's body: the calls of one joblib batch, in order.

    Nested ``Parallel`` calls use the backend the batch carries. ``threads`` caps the BLAS /
    OpenMP thread pools meanwhile, as joblib's process backends do for their workers: two
    workers each running a BLAS pool as wide as the machine made scikit-learn fits 5x slower.

    Args:
        batch: joblib's batch of calls (a callable returning their values).
        threads: the cap on BLAS / OpenMP threads (needs threadpoolctl), or None.

    Returns:
        The calls' values, in order.

    Examples:
        >>> from omniq.joblib import run_batch
        >>> run_batch(lambda: [abs(-1), abs(-2)], threads=1)
        [1, 2]
    """
    ctl = _controller() if threads is not None else None
    if ctl is None:
        return batch()
    with ctl.limit(limits=threads):
        return batch()


def run_pickled_batch(data: bytes, refs: Sequence[Any], threads: int | None = None) -> list[Any]:
    """``run_batch`` for a batch pickled by ``omniq.executor.pack``.

    Args:
        data: the pickled batch.
        refs: the values ``pack`` left to OmniQ's serializer (functions and classes shipped by
            value, large arrays as blobs).
        threads: as for ``run_batch``.

    Returns:
        The calls' values, in order.

    Examples:
        >>> import functools
        >>> from omniq.executor import pack
        >>> from omniq.joblib import run_pickled_batch
        >>> run_pickled_batch(*pack(functools.partial(divmod, 7, 2)))
        (3, 1)
    """
    return run_batch(unpack(data, refs), threads)


_CONTROLLER: list[Any] = [None, -1]  # threadpoolctl's controller, and len(sys.modules) then


def _controller() -> Any:
    """A ``threadpoolctl.ThreadpoolController`` (None without threadpoolctl), made again when
    modules were imported since (they may have loaded another thread pool)."""
    ctl, seen = _CONTROLLER
    if seen != len(sys.modules):
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        ctl = ThreadpoolController()
        _CONTROLLER[:] = [ctl, len(sys.modules)]
    return ctl


def _pickle_batch(batch: Any) -> tuple[bytes, tuple[Any, ...]] | None:
    """``(bytes, refs)`` for a batch (``executor.pack``: the C pickler, 50x faster than dill on
    scikit-learn's arguments), or None: the batch then travels through OmniQ's serializer."""
    return pack(batch)


# --------------------------------------------------------------------------------------------
# keys of resumable calls
# --------------------------------------------------------------------------------------------
#: classes whose instances describe a run, not a call (scikit-learn's callback context holds a
#: fresh UUID and start time on every fit): they count in a key by their type only. Add the
#: qualified name of your own such classes here.
RUN_CONTEXT_TYPES: set[str] = {"sklearn.callback._callback_context.CallbackContext"}


def call_key(name: str, calls: Sequence[tuple[Callable[..., Any], Sequence[Any], dict[str, Any]]]) -> str:
    """The idempotency key of one task's calls, for a backend given ``name=``.

    The identity digests each function's code and closure (``sweep.function_identity``;
    wrappers with ``__wrapped__`` are looked through); the arguments digest their values (and
    a wrapper's ``config``): plain data and arrays by content, objects with scikit-learn's
    ``get_params`` by their type and parameters (an estimator, a search running its fits),
    ``RUN_CONTEXT_TYPES`` by type, other objects by their serialized bytes.

    Args:
        name: the ``name=`` given to ``parallel_config``.
        calls: ``(function, args, kwargs)`` for each call of the task.

    Returns:
        ``"{name}/{identity}/{arguments}"``: equal for the same calls in any process.

    Examples:
        >>> from omniq.joblib import call_key
        >>> a = call_key("grid", [(pow, (2, 3), {})])
        >>> a == call_key("grid", [(pow, (2, 3), {})]), a == call_key("grid", [(pow, (2, 4), {})])
        (True, False)
        >>> a.startswith("grid/")
        True
    """
    idents = []
    values: list[Any] = []
    for func, args, kwargs in calls:
        base = inspect.unwrap(func)
        idents.append(function_identity(base))
        config = getattr(func, "config", None) if base is not func else None
        values.append((config if isinstance(config, dict) else None, tuple(args), dict(kwargs)))
    c = _KeyCanon(hashlib.sha256())
    c.value(values)
    return f"{name}/{identity_digest('|'.join(idents))}/{c.h.hexdigest()[:16]}"


class _KeyCanon(Canon):
    """``sweep.Canon`` with the rules of ``call_key`` for objects."""

    def _object(self, v: Any) -> None:
        t = type(v)
        qual = f"{t.__module__}.{t.__qualname__}"
        if qual in RUN_CONTEXT_TYPES:
            self._w(b"X", qual.encode())
            return
        if qual == "numpy.ndarray" and not v.dtype.hasobject:  # by content, without a pickler
            self._w(b"A", f"{v.dtype.str}{v.shape}".encode())
            self._w(b"a", v.tobytes())
            return
        get_params = getattr(v, "get_params", None)
        if callable(get_params) and not isinstance(v, type):
            try:
                params = get_params(deep=False)
            except Exception:
                params = None
            if isinstance(params, dict):
                self._w(b"K", qual.encode())
                self.value(params)
                return
        super()._object(v)


# --------------------------------------------------------------------------------------------
# the instance a backend uses
# --------------------------------------------------------------------------------------------
_PRIVATE: dict[str, OmniQ] = {}
_PRIVATE_LOCK = threading.Lock()


def _kernel_instance() -> OmniQ | None:
    """The instance ``%omniq init`` opened in this kernel, if any."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    try:
        ip = ipython.get_ipython()
        magics = ip.magics_manager.registry.get("OmniQMagics") if ip is not None else None
    except Exception:
        return None
    oq = getattr(magics, "_oq", None)
    return oq if oq is not None and oq.core.is_open else None


def _private(options: dict[str, Any]) -> OmniQ:
    """One private instance per set of options, opened once and kept for later calls."""
    key = repr(sorted(options.items()))
    with _PRIVATE_LOCK:
        oq = _PRIVATE.get(key)
        if oq is None or not oq.core.is_open:
            opts = dict(options)
            env = os.environ
            if opts.get("worker") is None and "config" not in opts and "OMNIQ_DEFAULT_WORKER" not in env:
                opts["worker"] = "process"
            if opts.get("concurrency") is None and "config" not in opts and "OMNIQ_CONCURRENCY" not in env:
                opts["concurrency"] = os.cpu_count() or 1
            oq = _PRIVATE[key] = OmniQ(**opts).open()
        return oq


def _is_open(oq: Any) -> bool:
    core = getattr(oq, "core", oq)
    return bool(getattr(core, "is_open", False))


# --------------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------------
class OmniQBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``ParallelBackendBase`` on an OmniQ (see the module's documentation).

    joblib makes it from ``parallel_config(backend="omniq", **options)``; its methods are
    joblib's interface, called by ``Parallel``.

    Args:
        oq: an open ``OmniQ`` or ``AsyncOmniQ``; None: the ``%omniq init`` instance, else a
            private one made from ``options``.
        name: makes calls resumable (each call a task keyed by ``call_key``).
        chunksize: calls per task; None: joblib's automatic batching (1 with ``name``).
        progress: show the progress widget; None: in a Jupyter kernel only.
        nesting_level: joblib's.
        inner_max_num_threads: BLAS / OpenMP threads per worker (default: CPUs / n_jobs).
        **options: ``OmniQ`` options for the private instance, or task options for every call.

    Raises:
        ConfigError: an option is unknown or not valid, ``oq`` is not an open OmniQ, or ``oq``
            and ``OmniQ`` options are both given.

    Examples:
        >>> import joblib
        >>> from omniq import ConfigError
        >>> from omniq.joblib import register
        >>> register()
        >>> try:
        ...     with joblib.parallel_config(backend="omniq", retry=2):
        ...         pass
        ... except ConfigError as e:
        ...     print(str(e).split(":")[0])
        joblib backend 'omniq' got an unknown option 'retry'
    """

    supports_retrieve_callback = True  # results come back through future callbacks
    supports_inner_max_num_threads = True  # parallel_config(inner_max_num_threads=N)
    uses_threads = False
    supports_sharedmem = False
    default_n_jobs = -1
    MIN_IDEAL_BATCH_DURATION = 0.2
    MAX_IDEAL_BATCH_DURATION = 1.0

    def __init__(
        self,
        oq: OmniQ | AsyncOmniQ | None = None,
        name: str | None = None,
        chunksize: int | None = None,
        progress: bool | None = None,
        *,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if name is not None and (not isinstance(name, str) or not name.strip() or name != name.strip()):
            raise ConfigError(f"name={name!r} is not valid: expected a non-empty string (no surrounding spaces) or None")
        if chunksize is not None and (isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1):
            raise ConfigError(f"chunksize={chunksize!r} is not valid: expected an int >= 1 or None (automatic)")
        if progress is not None and not isinstance(progress, bool):
            raise ConfigError(f"progress={progress!r} is not valid: expected True, False or None (in a kernel)")
        ctor, task = omniq_option_names(), task_option_names()
        self._omniq_options: dict[str, Any] = {}
        self._task_options: dict[str, Any] = {}
        for key, value in options.items():
            if key in ctor:
                self._omniq_options[key] = value
            elif key in task:
                self._task_options[key] = value
            else:
                raise ConfigError(
                    f"joblib backend 'omniq' got an unknown option {key!r}: expected oq, name, chunksize, "
                    f"progress, OmniQ options ({', '.join(sorted(ctor))}) or task options "
                    f"({', '.join(sorted(task))})"
                )
        if oq is not None:
            if not isinstance(oq, (OmniQ, AsyncOmniQ)):
                raise ConfigError(f"oq={oq!r} is not valid: expected an open OmniQ or AsyncOmniQ")
            if self._omniq_options:
                raise ConfigError(f"oq= and OmniQ options ({', '.join(sorted(self._omniq_options))}) are both "
                                  "given: the options build a private instance; give one or the other")
            if not _is_open(oq):
                raise ConfigError(f"oq={oq!r} is not open: open it first (`with OmniQ(...) as oq:` or oq.open())")
        if self._task_options:  # checked now, at the parallel_config call
            probe = AsyncOmniQ(tasks="memory://", concurrency=0)
            probe.intake.make_task(run_batch, (None,), **self._task_options)
        self._oq = oq
        self.name = name
        self.chunksize = chunksize
        self.progress = progress
        self._ex: BoundExecutor | None = None
        self._stored: dict[str, Any] = {}  # key -> stored success (a named call's start)
        self._threads: int | None = None  # BLAS / OpenMP threads per worker (configure)
        self._tracker: Any = None
        self._widget: Any = None
        self.parallel: Any = None

    # --- the instance -------------------------------------------------------------------------
    def _instance(self) -> OmniQ | AsyncOmniQ:
        oq = self._oq
        if oq is not None:
            if not _is_open(oq):
                raise ConfigError(f"oq={oq!r} is not open (closed since parallel_config was entered): "
                                  "open it again or give an open one")
            return oq
        if not self._omniq_options:
            oq = _kernel_instance()
            if oq is not None:
                return oq
        return _private(self._omniq_options)

    def _slots(self, oq: OmniQ | AsyncOmniQ) -> int:
        core = oq.core if isinstance(oq, OmniQ) else oq
        n = core.config.concurrency if core.worker is not None else 0
        if n > 0:
            return n
        if isinstance(oq, OmniQ):  # workers elsewhere only: the live ones' slots
            with contextlib.suppress(Exception):
                return max(1, sum(int(w.get("slots") or 1) for w in oq.health()["workers"] if w.get("alive")))
        return 1

    # --- joblib's interface ------------------------------------------------------------------
    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The number of calls joblib keeps going for ``n_jobs`` (joblib's interface).

        Args:
            n_jobs: as given to ``Parallel``: a positive count, or -1 / None (every worker
                slot), -2 (one fewer), ...

        Returns:
            A positive count: ``n_jobs`` itself when positive, else from the instance's worker
            slots (at least 2).

        Raises:
            ValueError: ``n_jobs`` is 0.
        """
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is not None and n_jobs > 0:
            return int(n_jobs)
        slots = self._slots(self._instance())
        return max(2, slots + 1 + (n_jobs if n_jobs is not None else -1))

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, require: Any = None,
                  **backend_kwargs: Any) -> int:
        """Get ready for one ``Parallel`` call (joblib's interface): pick the instance, open an
        executor over it, cap BLAS / OpenMP threads per worker.

        Args:
            n_jobs: as for ``effective_n_jobs``.
            parallel: the ``Parallel`` object.
            prefer: joblib's hint (ignored: OmniQ's workers are what they are).
            require: joblib's constraint (ignored).
            **backend_kwargs: unused.

        Returns:
            The effective number of jobs.

        Raises:
            ConfigError: the instance given is closed.
        """
        self.parallel = parallel
        oq = self._instance()
        n = self.effective_n_jobs(n_jobs)
        self._threads = self.inner_max_num_threads or max(1, (os.cpu_count() or 1) // n)
        if self._ex is None:
            self._ex = oq.executor(**self._task_options)
        return n

    def start_call(self) -> None:
        """A ``Parallel`` call starts (joblib's interface): with ``name``, read the stored
        successes under it once; in a kernel, show the progress widget."""
        self._stored = {}
        if self.name is not None and self._ex is not None:
            self._stored = _stored_successes(self._ex, f"{self.name}/")
        if self.progress or (self.progress is None and _in_kernel()):
            with contextlib.suppress(Exception):  # a display problem never stops the call
                self._start_widget()

    def stop_call(self) -> None:
        """A ``Parallel`` call ended (joblib's interface): close the widget and the executor
        (the instance stays open)."""
        self._stop_widget()
        ex, self._ex = self._ex, None
        if ex is not None:
            ex.shutdown(wait=False)

    def terminate(self) -> None:
        """joblib's interface: as ``stop_call``."""
        self.stop_call()

    def compute_batch_size(self) -> int:
        """Calls per task (joblib's interface).

        Returns:
            ``chunksize`` when given; 1 with ``name`` (each call keyed on its own); else
            joblib's automatic size.
        """
        if self.chunksize is not None:
            return self.chunksize
        if self.name is not None:
            return 1
        return int(super().compute_batch_size())

    def submit(self, func: Any, callback: Callable[[Any], Any] | None = None) -> Any:
        """Send one joblib batch as an OmniQ task (joblib's interface).

        A named call whose result is stored is not sent again: its future resolves with the
        stored value.

        Args:
            func: joblib's batch of calls.
            callback: called with the future once it is done.

        Returns:
            A ``concurrent.futures.Future`` of the batch's values.

        Raises:
            RuntimeError: the backend is not configured (its call has ended).
            TypeError: a call in the batch is not callable.
        """
        ex = self._ex
        if ex is None:
            raise RuntimeError("the omniq joblib backend was not configured (or its call has ended)")
        task = self._task_for(func, ex)
        tracker = self._tracker
        stored = self._stored.get(task.key) if task.key is not None else None
        if stored is not None:  # a named call whose result is stored: nothing to run
            if tracker is not None:
                tracker.finish(tracker.add_slots(1), [stored])
            return _resolved_later(ex, stored, callback)
        slots = None
        if tracker is not None:
            slots = tracker.add_slots(1)
            tracker.begin(slots, [task.id], ["queued"])
        inner: list[Any] = []
        (fut,) = ex._submit_tasks([task], inner)
        if tracker is not None:
            tracker.attach(slots, inner)
        if callback is not None:
            fut.add_done_callback(callback)
        return fut

    def retrieve_result_callback(self, out: Any) -> Any:
        """The batch's values from its done future (joblib's interface).

        Args:
            out: The batch's future, done.

        Returns:
            The batch's values, in order.

        Raises:
            Exception: The call's own exception, with its own type (rebuilt from the task's
                error where it can be).
        """
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call raised (joblib's interface): cancel every task of this call still queued.

        Args:
            ensure_ready: joblib's (the backend stays usable either way).
        """
        ex = self._ex
        if ex is not None:
            with contextlib.suppress(Exception):
                ex._st.cancel(list(ex._st.pending))

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """The backend of ``Parallel`` calls made inside this call's tasks (joblib's interface).

        ``NestedBackend`` (through this OmniQ, the waiting task lending its slot) when a worker
        can reach the instance's storage; otherwise joblib's default for a process backend:
        threads in the worker at the first level, sequential beyond.

        Returns:
            ``(backend, n_jobs)``; joblib reads None as the backend's own default.
        """
        level = (self.nesting_level or 0) + 1
        ex = self._ex
        spec = _nested_spec(ex, self._threads) if ex is not None and level == 1 else None
        if spec is not None:
            return NestedBackend(spec, nesting_level=level), None
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        return ThreadingBackend(nesting_level=level), None

    # --- tasks ----------------------------------------------------------------------------------
    def _task_for(self, batch: Any, ex: BoundExecutor) -> Task:
        return _batch_task(batch, ex, self.name, self._threads)

    # --- progress -------------------------------------------------------------------------------
    def _start_widget(self) -> None:
        from .notebook.progress import Tracker
        from .notebook.widgets import Progress

        ex = self._ex
        if ex is None:
            return
        tracker = Tracker(ex._st.core)
        title = f"joblib {self.name}" if self.name else "joblib"
        widget = Progress(ex.oq, tracker, title=title)
        self._tracker, self._widget = tracker, widget
        widget.display()

    def _stop_widget(self) -> None:
        widget, self._widget = self._widget, None
        tracker, self._tracker = self._tracker, None
        if widget is not None:
            with contextlib.suppress(Exception):
                widget.finalize()
                widget.close()
        if tracker is not None:
            with contextlib.suppress(Exception):
                tracker.close()


def _batch_task(batch: Any, ex: BoundExecutor, name: str | None, threads: int | None, **metadata: Any) -> Task:
    """The OmniQ task of one joblib batch: keyed by ``call_key`` with ``name``, named after its
    function, the batch pickled by ``pack`` when the C pickler takes it."""
    items = list(getattr(batch, "items", ()))
    for func, _, _ in items:
        if not callable(func):
            raise TypeError(f"joblib call {func!r} is not callable: Parallel takes delayed(fn)(*args) calls")
    core = ex._st.core
    opts = dict(ex._st.task_options)
    key = call_key(name, items) if name is not None and items else None
    md = dict(opts.pop("metadata", None) or {})
    md.setdefault("joblib", name or "")
    md["calls"] = len(items)
    md.update(metadata)
    packed = _pickle_batch(batch)
    if packed is None:
        task = core.intake.make_task(run_batch, (batch, threads), None, key=key, metadata=md, **opts)
    else:
        task = core.intake.make_task(run_pickled_batch, (*packed, threads), None, key=key, metadata=md, **opts)
    if items:
        names = {callable_name(inspect.unwrap(f)) for f, _, _ in items}
        task = msgspec.structs.replace(task, name=names.pop() if len(names) == 1 else "joblib batch")
    return task


# --------------------------------------------------------------------------------------------
# nested calls: a Parallel call made inside a task
# --------------------------------------------------------------------------------------------
#: seconds an inner batch sent to OmniQ may stay unfinished, beyond 1.5x the usual duration of
#: this call's batches, before the waiting task runs it itself
NESTED_GRACE = 1.0
#: task options an inner call takes from its outer call (plain values; callbacks stay outside)
_INHERITED = ("queue", "priority", "retries", "retry_delay", "timeout", "ttl", "result_ttl", "memory_limit")
_CLIENTS: dict[tuple[str, ...], OmniQ] = {}
#: seconds a backend reuses its count of free slots: scikit-learn asks ``effective_n_jobs``
#: and then ``Parallel`` configures, and one storage query serves both (a stale count errs
#: safely: the lender runs whatever no slot takes)
ROOM_FRESH = 0.25


def _reachable(url: str) -> str | None:
    """``url`` as a worker process opens it, or None: in-memory storage (no other process
    reaches it), or a URL with a password (never written into a task's payload)."""
    if url.startswith("memory://") or (url.startswith("sqlite:") and ":memory:" in url):
        return None
    if masked(url) != url:
        return None
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):  # relative to this cwd
        path, sep, query = url[len("sqlite:///"):].partition("?")
        return f"sqlite:///{os.path.abspath(path)}{sep}{query}"
    return url


def _nested_spec(ex: BoundExecutor, threads: int | None) -> dict[str, Any] | None:
    """What a worker needs to send a nested call's batches to the outer call's OmniQ (plain,
    picklable values), or None when it cannot reach that storage (see ``_reachable``)."""
    from .serialization import get_secret_keys

    core = ex._st.core
    if core.config.storage_options:  # credentials, as a rule
        return None
    if get_secret_keys()[0] is not None:  # a process worker's child holds no key to sign tasks
        return None
    urls = [_reachable(u) for u in (core.tasks_url, core.results_url, core.events_url)]
    if any(u is None for u in urls):
        return None
    opts = {k: v for k, v in ex._st.task_options.items() if k in _INHERITED}
    # above the outer call's tasks: a free slot finishes work already started before taking
    # more of it (depth first: fewer outer tasks wait, half-done, for their inner calls)
    opts["priority"] = int(opts.get("priority") or 0) + 1
    return {"urls": tuple(urls), "options": opts, "threads": threads}


def _client(urls: tuple[str, ...]) -> OmniQ:
    """This process's OmniQ (no worker slots) on ``urls``, opened once and kept (closed at exit)."""
    with _PRIVATE_LOCK:
        oq = _CLIENTS.get(urls)
        if oq is None or not oq.core.is_open:
            oq = _CLIENTS[urls] = OmniQ(tasks=urls[0], results=urls[1], events=urls[2], concurrency=0).open()
        return oq


async def _free_slots(core: AsyncOmniQ, queue: str) -> int:
    """Worker slots serving ``queue`` that run nothing now: the live workers' slots less the
    tasks RUNNING in the queues they serve (claimed tasks waiting in a prefetch buffer count as
    running, so this errs low)."""
    q = core.session.queue
    now = time.time()
    workers = await q.workers()
    serving = [w for w in workers if now - w.last_heartbeat <= (w.lease or core.config.lease)
               and (w.queues is None or queue in w.queues)]
    if not serving:
        return 0
    served = None if any(w.queues is None for w in serving) else {n for w in serving for n in w.queues or ()}
    counts = await q.counts()
    running = sum(c.get(TaskStatus.RUNNING.value, 0) for name, c in counts.items() if served is None or name in served)
    return max(0, sum(max(0, w.slots - w.missing) for w in serving) - running)


def _inner_jobs(n_jobs: int | None, room: int) -> int:
    """Batches a nested call keeps going: the free slots and the waiting task's own (-1, None),
    one fewer (-2), ...; a positive ``n_jobs`` up to that."""
    cap = room + 1
    if n_jobs is None or n_jobs < 0:
        return max(1, cap + 1 + (n_jobs if n_jobs is not None else -1))
    return max(1, min(int(n_jobs), cap))


class NestedBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's backend for a ``Parallel`` call made inside an OmniQ task of the ``"omniq"``
    backend (``OmniQBackend.get_nested_backend``): a ``GridSearchCV`` over a
    ``RandomForest(n_jobs=-1)``, whose trees are built inside each fit's task.

    The task making the call waits for it, holding its worker slot; sending all the inner
    batches to the shared queue could deadlock (every slot running an outer task waiting for
    inner ones that no slot is left to run, or that a busy slot claimed ahead of time into its
    prefetch buffer). So the call goes to OmniQ only as far as there is room, and the waiting
    task lends its own slot:

    - ``configure`` counts the free slots serving the queue (live workers' slots less the
      running tasks). None: the call runs inline, sequentially, in the waiting task (its slot
      is the one CPU it was given). Else ``n_jobs`` is at most the free slots plus one.
    - One thread of the waiting task's process (the ``_Lender``) runs batches here: the first,
      and whatever is left over. At most ``n_jobs - 1`` batches are in OmniQ at once (as tasks
      with ``priority + 1``, metadata ``nested``: they show up as OmniQ tasks, results stored);
      the next batch goes to whichever finishes first, the lender or an OmniQ slot.
    - The waiting task never waits on a slot it does not control: once the lender has nothing
      else, a batch still unfinished in OmniQ after ``NESTED_GRACE`` plus 1.5x the batches'
      usual duration is taken back when still queued (its task cancelled) and otherwise run
      here as well (a backup copy: the first to finish counts; the OmniQ task's result is
      stored whenever it ends). So a call finishes even when every slot is busy, at worst as
      fast as running it inline.

    Deeper levels (a ``Parallel`` inside an inner batch sent to OmniQ) run sequentially.
    Storage no other process reaches (``memory://``) or URLs with a password (they would be
    written into every inner task's payload) keep joblib's default: threads in the worker.

    Args:
        spec: from ``_nested_spec``: the storage URLs, task options, BLAS / OpenMP threads.
        nesting_level: joblib's.
        inner_max_num_threads: joblib's.
    """

    supports_retrieve_callback = True
    uses_threads = False
    supports_sharedmem = False
    default_n_jobs = -1
    MIN_IDEAL_BATCH_DURATION = 0.2
    MAX_IDEAL_BATCH_DURATION = 1.0

    def __init__(self, spec: dict[str, Any] | None = None, *, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.spec: dict[str, Any] = dict(spec or {})
        self._seen: tuple[float, OmniQ, int] | None = None  # (when, client, free slots)
        self._ex: BoundExecutor | None = None
        self._lender: _Lender | None = None
        self.parallel: Any = None

    def __getstate__(self) -> dict[str, Any]:  # what travels in a batch: no executor, no thread
        return {"spec": self.spec, "nesting_level": self.nesting_level,
                "inner_max_num_threads": self.inner_max_num_threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], nesting_level=state["nesting_level"],  # type: ignore[misc]
                      inner_max_num_threads=state["inner_max_num_threads"])

    def _room(self) -> tuple[OmniQ, int] | None:
        """This process's OmniQ on the outer call's storage and its free slots now; None when
        that storage cannot be reached from here (the call then runs inline)."""
        seen = self._seen
        if seen is not None and time.monotonic() - seen[0] < ROOM_FRESH and _is_open(seen[1]):
            return seen[1], seen[2]
        try:
            oq = _client(tuple(self.spec["urls"]))
            thread = oq._thread
            if thread is None:
                return None
            room = int(thread.call(_free_slots, oq.core, self.spec.get("options", {}).get("queue", "default")))
        except Exception:
            return None
        self._seen = (time.monotonic(), oq, room)
        return oq, room

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """joblib's interface: 1 (inline) when no slot is free, else up to the free slots plus
        the waiting task's own (see the class)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        got = self._room() if n_jobs != 1 else None
        return _inner_jobs(n_jobs, got[1]) if got is not None else 1

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, require: Any = None,
                  **backend_kwargs: Any) -> int:
        """joblib's interface: count the free slots; none (or ``n_jobs=1``): fall back to
        running the call inline, sequentially; else start the lender."""
        self.parallel = parallel
        got = self._room() if n_jobs != 1 else None
        n = _inner_jobs(n_jobs, got[1]) if got is not None else 1
        if got is None or n <= 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._ex = got[0].executor(**self.spec.get("options", {}))
        self._lender = _Lender(self._ex, n - 1, self.spec.get("threads"))
        return n

    def submit(self, func: Any, callback: Callable[[Any], Any] | None = None) -> cf.Future[Any]:
        """joblib's interface: the batch goes to the lender or to OmniQ (see the class)."""
        lender = self._lender
        if lender is None:
            raise RuntimeError("the nested omniq joblib backend was not configured (or its call has ended)")
        out: cf.Future[Any] = cf.Future()
        if callback is not None:
            out.add_done_callback(callback)
        lender.take(func, out)
        return out

    def retrieve_result_callback(self, out: Any) -> Any:
        """joblib's interface: the batch's values, or its exception raised."""
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """joblib's interface: a batch raised; drop the batches not started, cancel the queued
        tasks."""
        if self._lender is not None:
            self._lender.abort()

    def stop_call(self) -> None:
        """joblib's interface: the lender's last batch ends, the executor is let go (the
        process's OmniQ stays open for the next call)."""
        lender, self._lender = self._lender, None
        if lender is not None:
            lender.close()
        ex, self._ex = self._ex, None
        if ex is not None:  # tasks still unfinished were backed up here: nothing waits for them
            for f in list(ex._st.pending):
                ex._st.forget(f)
            ex.shutdown(wait=True)

    def terminate(self) -> None:
        """joblib's interface: as ``stop_call``."""
        self.stop_call()

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """Deeper levels run sequentially where they are."""
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None


class _Lender:
    """The waiting task's slot, lent to its nested call: one thread here runs batches, at most
    ``cap`` others are OmniQ tasks at a time (see ``NestedBackend``)."""

    def __init__(self, ex: BoundExecutor, cap: int, threads: int | None) -> None:
        self.ex, self.cap, self.threads = ex, cap, threads
        self.cond = threading.Condition()
        self.backlog: collections.deque[tuple[Any, cf.Future[Any]]] = collections.deque()
        # joblib's future -> [batch, OmniQ's future, sent at, backed up]
        self.remote: dict[cf.Future[Any], list[Any]] = {}
        self.busy = False  # the lender runs a batch
        self.closed = False
        self.took = [0.0, 0]  # seconds and count of batches finished (here or in OmniQ)
        self.thread = threading.Thread(target=self._loop, name="omniq-joblib-lender", daemon=True)
        self.thread.start()

    # --- routing ---------------------------------------------------------------------------------
    def take(self, batch: Any, out: cf.Future[Any]) -> None:
        with self.cond:
            if self.closed:
                raise RuntimeError("the nested omniq joblib call has ended")
            if (not self.busy and not self.backlog) or len(self.remote) >= self.cap:
                self.backlog.append((batch, out))
                self.cond.notify()
                return
            entry = self.remote[out] = [batch, None, time.monotonic(), False]
        self._send(out, entry)

    def _send(self, out: cf.Future[Any], entry: list[Any]) -> None:
        """Make ``entry``'s batch an OmniQ task (outside the lock: storing may take a while)."""
        try:
            task = _batch_task(entry[0], self.ex, None, self.threads, nested=True)
            (fut,) = self.ex._submit_tasks([task])
        except BaseException as exc:
            with self.cond:
                self.remote.pop(out, None)
            settle(out, exc, failed=True)
            return
        entry[1] = fut
        fut.add_done_callback(lambda f, out=out: self._remote_done(out, f))

    def _remote_done(self, out: cf.Future[Any], fut: cf.Future[Any]) -> None:
        with self.cond:
            entry = self.remote.pop(out, None)
            if entry is not None:
                self.took[0] += time.monotonic() - entry[2]
                self.took[1] += 1
            nxt = self.backlog.popleft() if self.backlog and not self.closed and self.busy else None
            if nxt is not None:
                self.remote[nxt[1]] = entry2 = [nxt[0], None, time.monotonic(), False]
            self.cond.notify()
        if not fut.cancelled():  # cancelled: the lender took it back and runs it
            exc = fut.exception()
            settle(out, exc if exc is not None else fut.result(), failed=exc is not None)
        if nxt is not None:
            self._send(nxt[1], entry2)

    # --- the lent slot -----------------------------------------------------------------------------
    def _grace(self) -> float:
        seconds, n = self.took
        return NESTED_GRACE + (1.5 * seconds / n if n else 0.0)

    def _straggler(self) -> tuple[Any, cf.Future[Any], Any] | None:
        """The oldest batch in OmniQ unfinished past the grace and not backed up yet."""
        limit = time.monotonic() - self._grace()
        for out, entry in self.remote.items():
            if not entry[3] and entry[1] is not None and entry[2] <= limit and not out.done():
                entry[3] = True
                return entry[0], out, entry[1]
        return None

    def _loop(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self.closed:
                        return
                    if self.backlog:
                        batch, out = self.backlog.popleft()
                        fut = None
                        break
                    job = self._straggler()
                    if job is not None:
                        batch, out, fut = job
                        break
                    self.cond.wait(0.1 if self.remote else None)
                self.busy = True
            if fut is not None:  # taken back if still queued (then it is no copy)
                with contextlib.suppress(Exception):
                    self.ex._st.cancel([fut])
            if not out.done():
                began = time.monotonic()
                try:
                    value = run_batch(batch)
                except BaseException as exc:
                    settle(out, exc, failed=True)
                else:
                    settle(out, value, failed=False)
                with self.cond:
                    self.took[0] += time.monotonic() - began
                    self.took[1] += 1
            with self.cond:
                self.busy = False
            del batch, out, fut

    # --- ending ------------------------------------------------------------------------------------
    def abort(self) -> None:
        with self.cond:
            self.backlog.clear()
            futs = [e[1] for e in self.remote.values() if e[1] is not None]
        with contextlib.suppress(Exception):
            self.ex._st.cancel(futs)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.backlog.clear()
            self.cond.notify_all()
        if self.thread is not threading.current_thread():
            self.thread.join()


def _in_kernel() -> bool:
    from .notebook.widgets import in_kernel

    return in_kernel()


def _stored_successes(ex: BoundExecutor, prefix: str) -> dict[str, Any]:
    """Key -> latest stored result, for keys under ``prefix`` whose latest result succeeded
    (one storage call when a named ``Parallel`` call starts)."""
    st = ex._st
    core = st.core
    try:
        if st.sync is not None:
            found = st.sync.find_results(prefix)
        elif threading.get_ident() != core.session.loop_thread and core.session.loop is not None:
            found = asyncio.run_coroutine_threadsafe(core.find_results(prefix), core.session.loop).result()
        else:  # on an AsyncOmniQ's own loop: adoption by key still skips finished calls
            return {}
    except Exception:
        return {}
    return {k: r for k, r in latest_results(found).items() if r.status is TaskStatus.SUCCEEDED}


def _resolved_later(ex: BoundExecutor, result: Any, callback: Callable[[Any], Any] | None) -> cf.Future[Any]:
    """A future for a stored result, resolved on OmniQ's loop like any other (joblib's
    callback dispatches the next batch from there; resolving it here would recurse)."""
    fut: cf.Future[Any] = cf.Future()
    if callback is not None:
        fut.add_done_callback(callback)

    def resolve() -> None:
        try:
            value = result.value
        except Exception as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    loop = ex._st.core.session.loop
    assert loop is not None
    loop.call_soon_threadsafe(resolve)
    return fut
