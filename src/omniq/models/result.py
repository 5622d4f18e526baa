"""The outcome of a task, whatever its final status."""

from __future__ import annotations

import reprlib
from typing import Any

import msgspec

from .task import TaskStatus

_UNSET: Any = object()


class ErrorInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """A remote exception, kept as text so any process (or language) can read it.

    ``str()`` is ``"Type: message"``.

    Attributes:
        type: The exception's class name (``"ValueError"``), or OmniQ's word for how the
            task ended (``"WorkerDied"``, ``"TaskExpired"``, ...).
        message: Its message.
        traceback: The remote traceback as text ("" when there is none).

    Examples:
        >>> from omniq import OmniQ
        >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
        ...     h = oq.submit(int, "x")
        ...     r = oq.get_result(h.id, wait=True, timeout=30)
        >>> r.error.type, str(r.error)
        ('ValueError', "ValueError: invalid literal for int() with base 10: 'x'")
    """

    type: str
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


_DECODING: tuple[Any, Any] | None = None


def _decoding() -> tuple[Any, Any]:
    """``(loads, check_result)``, imported on first use: models import no serialization at
    import time, and a from-import out of a package on every ``.value`` costs a microsecond."""
    global _DECODING
    if _DECODING is None:
        from ..serialization import loads
        from ..serialization._seals import check_result

        _DECODING = (loads, check_result)
    return _DECODING


class TaskResult(msgspec.Struct, kw_only=True, omit_defaults=True, dict=True):
    """Final record of a task. ``payload`` is the serialized value; ``value`` decodes it once.

    Storage moves ``payload`` bytes without opening them, so a process worker's result reaches
    the result store without being deserialized in between. ``get_result``,
    ``find_results`` and sweeps return these; a handle's ``result()`` returns the value.

    Attributes:
        task_id: The task's id.
        status: Its final :class:`TaskStatus`.
        payload: The serialized return value (None unless it succeeded).
        error: What went wrong, when it did not succeed.
        attempts: Runs that raised (retries included).
        started_at: When the final run started (epoch seconds).
        finished_at: When it ended.
        worker: The worker that ran it.
        queue: The task's queue.
        name: The function's qualified name.
        key: The task's key (a sweep point's key), if any.
        expires_at: When the result store may drop it (``result_ttl``).
        metadata: The task's metadata.
        blobs: Digests of the large values ``payload`` refers to.
        seal: With a secret key, a MAC binding ``payload`` to this task id and key.

    Examples:
        >>> from omniq import OmniQ
        >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
        ...     tid = oq.enqueue(pow, args=(2, 10), key="p10")
        ...     r = oq.get_result(tid, wait=True, timeout=30)
        >>> r.ok, r.value, r.status, r.key, r.duration >= 0
        (True, 1024, <TaskStatus.SUCCEEDED: 'succeeded'>, 'p10', True)
    """

    task_id: str
    status: TaskStatus
    payload: bytes | None = None
    error: ErrorInfo | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    queue: str = "default"
    name: str = ""
    key: str | None = None
    expires_at: float | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    blobs: tuple[str, ...] = ()  # digests of the large values ``payload`` refers to (BlobStore)
    seal: bytes | None = None  # with a secret key: MAC binding ``payload`` to this task id and key

    @property
    def value(self) -> Any:
        """The task's return value (None unless it succeeded), decoded once and kept.

        Raises:
            SignatureError: With signing on, the payload's seal does not match (it is never
                loaded).
            SerializationError: The value cannot be loaded here (say, a class this process
                cannot import).

        Examples:
            >>> from omniq import OmniQ
            >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
            ...     r = oq.get_result(oq.submit(divmod, 7, 2).id, wait=True, timeout=30)
            >>> r.value
            (3, 1)
        """
        cached = self.__dict__.get("_value", _UNSET)
        if cached is _UNSET:
            if self.payload is None:
                cached = None
            else:
                loads, check_result = _decoding()
                if not self.__dict__.get("_checked"):  # (a map item's chunk was checked)
                    check_result(self)
                cached = loads(self.payload, blobs=self.__dict__.get("_fetch"))
            self.__dict__["_value"] = cached
        return cached

    def __repr__(self) -> str:
        """The value, not its bytes: shown when it is plain data (decoding it runs no code) or
        already loaded; a pickled value is only named, since loading it runs code."""
        parts = [f"task_id={self.task_id!r}", f"status={self.status.value!r}"]
        if self.payload is not None:
            cached = self.__dict__.get("_value", _UNSET)
            if cached is _UNSET and self.payload[:1] == b"M":
                cached = self.value
            if cached is not _UNSET:
                parts.append(f"value={reprlib.repr(cached)}")
            else:
                parts.append(f"value=<not loaded yet: {len(self.payload):,} bytes; read .value>")
        if self.error is not None:
            parts.append(f"error={self.error}")
        parts.append(f"attempts={self.attempts}")
        if self.duration is not None:
            parts.append(f"duration={self.duration:.3f}s")
        if self.key:
            parts.append(f"key={self.key!r}")
        return f"TaskResult({', '.join(parts)})"

    @property
    def duration(self) -> float | None:
        """Seconds the final attempt ran, when it ran at all (else None).

        Examples:
            >>> from omniq import TaskResult, TaskStatus
            >>> TaskResult(task_id="t", status=TaskStatus.SUCCEEDED, started_at=10.0, finished_at=12.5).duration
            2.5
        """
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def ok(self) -> bool:
        """Whether the task succeeded.

        Examples:
            >>> from omniq import TaskResult, TaskStatus
            >>> TaskResult(task_id="t", status=TaskStatus.CANCELLED).ok
            False
        """
        return self.status is TaskStatus.SUCCEEDED
