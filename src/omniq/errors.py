"""One error hierarchy for the whole package.

::

    OmniQError
    ├── ConfigError (ValueError)          bad argument, URL, setting or environment value
    ├── OmniQClosed (RuntimeError)        a call on an instance closed by close() / its `with`
    ├── StorageError (RuntimeError)       a backend could not be reached or refused a write
    │   └── StorageUnwritable             the disk is full, or the file / mount is read-only
    ├── SerializationError (TypeError)    a payload could not be written or read
    │   └── SignatureError                a payload failed HMAC verification (never loaded)
    └── TaskError (RuntimeError)          a task ended without a value
        ├── TaskCancelled
        ├── TaskExpired
        └── WorkerDied                    its worker died more than max_deliveries times
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import ErrorInfo


class OmniQError(Exception):
    """Base of every error raised by OmniQ itself."""


class ConfigError(OmniQError, ValueError):
    """An argument, URL, setting or environment variable has a value OmniQ cannot use."""


class OmniQClosed(OmniQError, RuntimeError):
    """A call on an ``OmniQ`` that was closed (``close()``, or the end of its ``with`` block).
    It is not reopened behind the caller's back: ``oq.open()`` or a new ``with`` reopens it.
    Handles of a closed instance still wait for and read their results."""


class StorageError(OmniQError, RuntimeError):
    """A storage backend could not be reached, or refused an operation."""


class StorageUnwritable(StorageError):
    """Local storage refused a write: its disk is full, or the file, directory or mount is
    read-only. Retrying at once does not help; freeing space or fixing permissions does."""


class SerializationError(OmniQError, TypeError):
    """A payload could not be serialized or deserialized."""


class SignatureError(SerializationError):
    """A payload is unsigned or wrongly signed; it was not loaded."""


class TaskError(OmniQError, RuntimeError):
    """A task ended without a value; carries the remote exception's type, message, traceback."""

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
        """The right subclass for a recorded error (cancelled / expired / died / failed)."""
        if info is None:
            return cls("task ended without a value", task_id=task_id)
        sub: type[TaskError] = _BY_TYPE.get(info.type, TaskError)
        return sub(info.message, task_id=task_id, type=info.type, traceback=info.traceback)


class TaskCancelled(TaskError):
    """The task was cancelled (by a user, or because a dependency did not succeed)."""


class TaskExpired(TaskError):
    """The task's TTL ran out before it started."""


class WorkerDied(TaskError):
    """The task's worker died on every delivery up to ``max_deliveries``."""


_BY_TYPE: dict[str, type[TaskError]] = {
    "TaskCancelled": TaskCancelled,
    "TaskExpired": TaskExpired,
    "WorkerDied": WorkerDied,
}
