"""One error hierarchy for the whole package.

Every error OmniQ raises is an ``OmniQError``; each also subclasses the builtin whose meaning
fits, so ``except ValueError`` catches a bad argument as it would anywhere else.

```text
OmniQError
├── ConfigError (ValueError)          bad argument, URL, setting or environment value
├── OmniQClosed (RuntimeError)        a call on an instance closed by close() / its `with`
├── TaskNotFound (KeyError)           a task id the storage does not know (task(), retry())
├── StorageError (RuntimeError)       a backend could not be reached or refused a write
│   └── StorageUnwritable             the disk is full, or the file / mount is read-only
├── SerializationError (TypeError)    a payload could not be written or read
│   └── SignatureError                a payload failed HMAC verification (never loaded)
└── TaskError (RuntimeError)          a task ended without a value
    ├── TaskCancelled
    ├── TaskExpired
    └── WorkerDied                    its worker died more than max_deliveries times
```

A task's own exception is not raised in the worker's caller as itself: ``TaskHandle.result()``
raises a ``TaskError`` carrying the remote type, message and traceback text (``omniq.Executor``
and the joblib backend rebuild the original type where they can).

Examples:
    >>> from omniq import ConfigError, OmniQ
    >>> try:
    ...     OmniQ(worker="fork")
    ... except ValueError as e:              # a ConfigError is a ValueError
    ...     print(type(e).__name__, isinstance(e, ConfigError))
    ConfigError True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import ErrorInfo


class OmniQError(Exception):
    """Base of every error raised by OmniQ itself.

    Examples:
        >>> from omniq import OmniQError, TaskError
        >>> issubclass(TaskError, OmniQError)
        True
    """


class ConfigError(OmniQError, ValueError):
    """An argument, URL, setting or environment variable has a value OmniQ cannot use.

    Raised where the value enters (the constructor, ``enqueue``, ``from_config``, a
    ``parallel_config`` call, ...), naming the argument, key or variable and what would be
    valid; never a traceback from inside a driver.

    Examples:
        >>> from omniq import ConfigError, OmniQ
        >>> try:
        ...     OmniQ.from_config({"concurency": 2})
        ... except ConfigError as e:
        ...     print(str(e).split(" Valid keys")[0])
        unknown config key 'concurency' in config dict. Did you mean 'concurrency'?
    """


class OmniQClosed(OmniQError, RuntimeError):
    """A call on an ``OmniQ`` that was closed (``close()``, or the end of its ``with`` block).

    It is not reopened behind the caller's back: ``oq.open()`` or a new ``with`` reopens it.
    Handles of a closed instance still wait for and read their results.

    Examples:
        >>> from omniq import OmniQ
        >>> from omniq.errors import OmniQClosed
        >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
        ...     pass
        >>> try:
        ...     oq.enqueue(print)
        ... except OmniQClosed:
        ...     print("closed")
        closed
    """


class TaskNotFound(OmniQError, KeyError):
    """A task id the task queue does not know (never stored, or purged): ``oq.task(id)``,
    ``oq.retry(id)``, ``omniq show ID``. A ``KeyError``, so ``except KeyError`` catches it.

    Examples:
        >>> from omniq.errors import TaskNotFound
        >>> e = TaskNotFound("0123abcd")
        >>> e.task_id, isinstance(e, KeyError), str(e)
        ('0123abcd', True, 'no task 0123abcd in this storage (never stored, or purged)')
    """

    def __init__(self, task_id: str, where: str = "") -> None:
        super().__init__(task_id)
        self.task_id = task_id
        self.where = where

    def __str__(self) -> str:  # KeyError's own str() is the repr of its argument
        place = f" in {self.where}" if self.where else " in this storage"
        return f"no task {self.task_id}{place} (never stored, or purged)"


class StorageError(OmniQError, RuntimeError):
    """A storage backend could not be reached, or refused an operation.

    The message names the URL (password masked). Servers that go away are retried for
    ``reconnect_timeout`` seconds first (PostgreSQL, Redis); this is what is left after that.

    Examples:
        >>> from omniq import OmniQ, StorageError
        >>> try:
        ...     OmniQ(tasks="redis://:secret@127.0.0.1:1/0?reconnect_timeout=0.1", concurrency=0).open()
        ... except StorageError as e:
        ...     print("secret" in str(e), "redis://:***@127.0.0.1:1/0" in str(e))
        False True
    """


class StorageUnwritable(StorageError):
    """Local storage refused a write: its disk is full, or the file, directory or mount is
    read-only.

    Retrying at once does not help; freeing space or fixing permissions does. The message
    names the URL and says which ("disk full", "read-only").

    Examples:
        >>> from omniq.errors import StorageError, StorageUnwritable
        >>> issubclass(StorageUnwritable, StorageError)
        True
    """


class SerializationError(OmniQError, TypeError):
    """A payload could not be serialized or deserialized.

    Raised at the call site when a function, its arguments or the globals it reads cannot be
    pickled (the message says which value and why); a stored payload that cannot be read fails
    its task with this type instead.

    Examples:
        >>> from omniq import OmniQ, SerializationError
        >>> numbers = (n for n in range(3))           # a generator cannot be pickled
        >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
        ...     try:
        ...         oq.enqueue(print, args=(numbers,))
        ...     except SerializationError:
        ...         print("not serializable")
        not serializable
    """


class SignatureError(SerializationError):
    """A payload is unsigned or wrongly signed; it was not loaded.

    Only with ``OMNIQ_SECRET_KEY`` set: a task whose payload fails the check fails with this
    type and is never retried; reading a result's ``.value`` raises it. See the reliability and
    security guide for what signing protects.

    Examples:
        >>> from omniq import SerializationError, SignatureError
        >>> issubclass(SignatureError, SerializationError)
        True
    """


class TaskError(OmniQError, RuntimeError):
    """A task ended without a value; carries the remote exception's type, message, traceback.

    ``TaskHandle.result()`` raises it for a task that failed, and its subclasses for a task
    that was cancelled, expired or whose worker kept dying. ``str()`` gives the remote
    traceback too.

    Args:
        message: the remote exception's message (or why the task ended).
        task_id: the task's id, when known.
        type: the remote exception's class name (``"ValueError"``), or OmniQ's word for the
            end (``"TaskCancelled"``, ``"MemoryLimitExceeded"``, ...).
        traceback: the remote traceback as text ("" when there was none).

    Attributes:
        task_id: as given.
        type: as given.
        message: as given.
        traceback: as given.

    Examples:
        >>> from omniq import OmniQ, TaskError
        >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
        ...     try:
        ...         oq.submit(int, "x").result(timeout=30)
        ...     except TaskError as e:
        ...         print(e.type, "|", e.message, "|", "Traceback" in e.traceback)
        ValueError | invalid literal for int() with base 10: 'x' | True
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str | None = None,
        type: str = "TaskError",
        traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.type = type
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        head = f"{self.type}: {self.message}" if self.type else self.message
        if self.task_id:
            head = f"task {self.task_id} failed with {head}"
        if self.traceback:
            return f"{head}\n\nRemote traceback:\n{self.traceback.rstrip()}"
        return head

    @classmethod
    def from_info(cls, task_id: str, info: ErrorInfo | None) -> TaskError:
        """The right subclass for a recorded error (cancelled / expired / died / failed).

        Args:
            task_id: the task the error belongs to.
            info: the ``ErrorInfo`` of its ``TaskResult``, or None.

        Returns:
            ``TaskCancelled``, ``TaskExpired`` or ``WorkerDied`` for those ends, else
            ``TaskError``; ``TaskError("task ended without a value")`` when ``info`` is None.

        Examples:
            >>> from omniq import ErrorInfo, TaskCancelled, TaskError
            >>> e = TaskError.from_info("t1", ErrorInfo(type="TaskCancelled", message="by user"))
            >>> isinstance(e, TaskCancelled), str(e)
            (True, 'task t1 failed with TaskCancelled: by user')
        """
        if info is None:
            return cls("task ended without a value", task_id=task_id)
        sub: type[TaskError] = _BY_TYPE.get(info.type, TaskError)
        return sub(info.message, task_id=task_id, type=info.type, traceback=info.traceback)


class TaskCancelled(TaskError):
    """The task was cancelled (by a user, or because a dependency did not succeed).

    Examples:
        >>> from omniq import OmniQ, TaskCancelled
        >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
        ...     h = oq.submit(print, "never")
        ...     _ = h.cancel()
        ...     try:
        ...         h.result(timeout=30)
        ...     except TaskCancelled:
        ...         print("cancelled")
        cancelled
    """


class TaskExpired(TaskError):
    """The task's TTL (``ttl=`` seconds) ran out before it started.

    Examples:
        >>> from omniq import TaskError, TaskExpired
        >>> issubclass(TaskExpired, TaskError)
        True
    """


class WorkerDied(TaskError):
    """The task's worker died on every delivery up to ``max_deliveries``.

    A worker that dies once is not a failure: the task is delivered again when its lease
    lapses. The message says "out of memory?" when a process child was killed by SIGKILL.

    Examples:
        >>> from omniq import TaskError, WorkerDied
        >>> issubclass(WorkerDied, TaskError)
        True
    """


_BY_TYPE: dict[str, type[TaskError]] = {
    "TaskCancelled": TaskCancelled,
    "TaskExpired": TaskExpired,
    "WorkerDied": WorkerDied,
}
