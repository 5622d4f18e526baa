"""``concurrent.futures.Executor`` over OmniQ: code written for ``ProcessPoolExecutor`` runs
unchanged, with OmniQ's durable queue, process workers and results underneath.

``Executor(max_workers=None, **options)`` owns an ``OmniQ`` (process workers by default,
``max_workers`` slots, storage from ``options`` or the configured default) and closes it on
``shutdown``. ``oq.executor(**task_options)`` is the same executor over an OmniQ that is
already open; its ``shutdown`` leaves that OmniQ open.

Futures are real ``concurrent.futures.Future`` objects (the package's cheap
``ResultFuture``), so ``cf.wait``, ``cf.as_completed``, ``asyncio.wrap_future`` and
``loop.run_in_executor`` take them as they are. Each resolves from its task's ``TaskResult``:

* succeeded: its value;
* failed: the remote exception rebuilt with its original type when that type can be found in
  this process (``builtins`` or a module already imported) and built from its message; its
  ``__cause__`` is the ``TaskError`` carrying the remote traceback text. Otherwise the
  ``TaskError`` itself (``TaskExpired``, ``WorkerDied``, a timeout, ...);
* cancelled: the future is cancelled.

``running()`` is True once a worker holds the task: the first call looks the task up in
storage and starts following OmniQ's ``started`` events for the executor (a few milliseconds'
lag). ``cancel()`` cancels the OmniQ task too when it is still queued; a task that a worker
already holds is left to run and ``cancel()`` returns False, as the standard library's
executors do. ``shutdown(cancel_futures=True)`` cancels the queued tasks except those the
executor's idle worker slots take next, as ``ProcessPoolExecutor`` hands up to
``max_workers + 1`` calls to its processes at once. At interpreter exit an executor that was
not shut down finishes its calls first, as the standard library's do.

``map`` submits every call before it returns: one batch with ``chunksize=1``, else each chunk as
soon as it is pickled (the first ones run meanwhile). With ``chunksize`` > 1 (or ``"auto"``) it
works as ``ProcessPoolExecutor.map``: one task and one future per chunk, whose value is the list of
its calls' values; the chunk's calls travel pickled by the C pickler (``pack``), the function
once for all chunks.

A future keeps its value or exception only; the function and arguments live in the stored
task, and results are not cached anywhere else in this process.

Examples:
    >>> import concurrent.futures as cf
    >>> from omniq import Executor
    >>> with Executor(max_workers=2, tasks="memory://") as ex:
    ...     futures = [ex.submit(pow, 2, n) for n in range(4)]
    ...     print(sorted(f.result(timeout=30) for f in cf.as_completed(futures)))
    [1, 2, 4, 8]
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from .client.executor import (
    BoundExecutor,
    ExecutorFuture,
    check_task_options,
    pack,
    remote_exception,
    task_option_names,
    unpack,
)
from .client.facade import OmniQ
from .errors import ConfigError

__all__ = ["BoundExecutor", "Executor", "ExecutorFuture", "check_task_options", "omniq_option_names",
           "pack", "remote_exception", "task_option_names", "unpack"]


def omniq_option_names() -> frozenset[str]:
    """The ``OmniQ`` constructor's keywords.

    Returns:
        The names ``Executor(...)`` and the joblib backend pass on to the ``OmniQ`` they make.

    Examples:
        >>> from omniq.executor import omniq_option_names
        >>> {"tasks", "results", "worker", "concurrency"} <= omniq_option_names()
        True
    """
    return frozenset(inspect.signature(OmniQ.__init__).parameters) - {"self"}


class Executor(BoundExecutor):
    """A ``concurrent.futures.Executor`` that runs calls as OmniQ tasks.

    ``Executor(max_workers=None, **options)`` owns an ``OmniQ`` built from ``options`` and
    closes it on ``shutdown``. ``oq.executor(**task_options)`` makes one over an ``OmniQ`` that
    is already open, and its ``shutdown`` leaves that ``OmniQ`` open.

    Args:
        max_workers: worker slots of the ``OmniQ`` it makes (default: ``concurrency`` from the
            options, config or environment, else one per CPU).
        **options: ``OmniQ`` constructor options (``tasks``, ``results``, ``events``,
            ``worker`` -- ``"process"`` unless given --, ``queues``, ``config``, ...) and task
            options applied to every call (``queue``, ``priority``, ``retries``, ``timeout``,
            ``ttl``, ``memory_limit``, ...).

    Raises:
        TypeError: ``max_workers`` is not an int.
        ValueError: ``max_workers`` (or the resulting ``concurrency``) is not above 0.
        ConfigError: an option is neither an ``OmniQ`` option nor a task option, or
            ``max_workers`` and ``concurrency`` disagree, or a value is not valid.

    Examples:
        >>> from omniq import Executor
        >>> with Executor(max_workers=2, tasks="memory://", retries=1) as ex:
        ...     print(ex.submit(pow, 3, 2).result(timeout=30), list(ex.map(abs, [-1, -2])))
        9 [1, 2]
    """

    def __init__(self, max_workers: int | None = None, **options: Any) -> None:
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers={max_workers!r} is not valid: expected an int > 0 or None")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        ctor, tasks = omniq_option_names(), task_option_names()
        oq_opts: dict[str, Any] = {}
        task_opts: dict[str, Any] = {}
        for name, value in options.items():
            if name in ctor:
                oq_opts[name] = value
            elif name in tasks:
                task_opts[name] = value
            else:
                raise ConfigError(
                    f"Executor() got an unknown option {name!r}: expected max_workers, OmniQ options "
                    f"({', '.join(sorted(ctor))}) or task options ({', '.join(sorted(tasks))})"
                )
        env = os.environ
        if max_workers is not None:
            if oq_opts.get("concurrency") not in (None, max_workers):
                raise ConfigError(f"max_workers={max_workers} and concurrency={oq_opts['concurrency']} "
                                  "disagree: give one of them")
            oq_opts["concurrency"] = max_workers
        elif oq_opts.get("concurrency") is None and "config" not in oq_opts and "OMNIQ_CONCURRENCY" not in env:
            oq_opts["concurrency"] = os.cpu_count() or 1
        if oq_opts.get("worker") is None and "config" not in oq_opts and "OMNIQ_DEFAULT_WORKER" not in env:
            oq_opts["worker"] = "process"
        oq = OmniQ(**oq_opts)
        if oq.config.concurrency < 1:
            raise ValueError("max_workers must be greater than 0")
        super().__init__(oq.core, task_opts, sync=oq, owned=True)
