"""Handles: a submitted task seen from synchronous code (``TaskHandle``) or async code
(``AsyncTaskHandle``). A handle holds the task's future; it speaks to its client only through
public methods."""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import TYPE_CHECKING, Any

from ..errors import TaskError
from ..models import TaskResult, TaskStatus

if TYPE_CHECKING:
    from .facade import OmniQ
    from .orchestrator import AsyncOmniQ


class HandleBase:
    """What both handles share: the task id, its queue and its future."""

    __slots__ = ("_future", "_id", "queue")

    def __init__(self, task_id: str, queue: str, future: cf.Future[TaskResult]) -> None:
        self._id = task_id
        self.queue = queue
        self._future = future

    @property
    def id(self) -> str:
        """The task's id. A task with a ``key`` that another task held when it was stored
        (``flush()``) was not stored: its handle follows that task, and ``id`` is its id."""
        core = self._core()
        return self._id if core is None else core.waiters.resolve_id(self._id)

    def _core(self) -> AsyncOmniQ | None:
        return None

    def done(self) -> bool:
        """True once the task's final result is known to this process."""
        return self._future.done()

    @property
    def future(self) -> cf.Future[TaskResult]:
        """Resolves with the final ``TaskResult`` (for progress displays and callbacks)."""
        return self._future

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "pending"
        return f"<{type(self).__name__} {self.id} queue={self.queue!r} {state}>"

    def _final_status(self) -> TaskStatus | None:
        """The status of the result the future resolved with; None before (or if it failed)."""
        f = self._future
        if f.done() and f.exception() is None:
            return f.result().status
        return None

    @staticmethod
    def _value(result: TaskResult) -> Any:
        if result.status is TaskStatus.SUCCEEDED:
            return result.value
        raise TaskError.from_info(result.task_id, result.error)


class TaskHandle(HandleBase):
    """A submitted task, seen from synchronous code. Waiting never needs a portal round trip."""

    __slots__ = ("_oq",)

    def __init__(self, oq: OmniQ, task_id: str, queue: str, future: cf.Future[TaskResult]) -> None:
        self._id, self.queue, self._future, self._oq = task_id, queue, future, oq  # 10,000 a map

    @property
    def oq(self) -> OmniQ:
        """The ``OmniQ`` this task was submitted to."""
        return self._oq

    def _core(self) -> AsyncOmniQ | None:
        return self._oq.core

    def status(self) -> TaskStatus:
        final = self._final_status()
        return final if final is not None else self._oq.status(self.id)

    def get(self, timeout: float | None = None) -> TaskResult:
        """The final ``TaskResult`` (whatever its status); ``TimeoutError`` past ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._oq.core
        if not self._future.done():
            core.waiters.poke()
        while True:
            if not self._future.done() and not core.is_open:
                # its instance closed: nothing here resolves the future; read storage instead
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                return self._oq.read_result(self.id, left)
            left = None if deadline is None else deadline - time.monotonic()
            try:
                return self._future.result(timeout=0.5 if left is None else max(0.0, min(left, 0.5)))
            except cf.TimeoutError:
                if left is not None and left <= 0.5:
                    raise TimeoutError(f"task {self.id} did not finish within {timeout} s") from None

    def result(self, timeout: float | None = None) -> Any:
        """The task's value, or ``TaskError`` (remote type, message, traceback) if it did not succeed."""
        return self._value(self.get(timeout))

    def cancel(self) -> bool:
        return self._oq.cancel(self.id)


class AsyncTaskHandle(HandleBase):
    """A submitted task, seen from async code."""

    __slots__ = ("_oq",)

    def __init__(self, oq: AsyncOmniQ, task_id: str, queue: str, future: cf.Future[TaskResult]) -> None:
        self._id, self.queue, self._future, self._oq = task_id, queue, future, oq  # 10,000 a map

    @property
    def oq(self) -> AsyncOmniQ:
        """The ``AsyncOmniQ`` this task was submitted to."""
        return self._oq

    def _core(self) -> AsyncOmniQ | None:
        return self._oq

    async def status(self) -> TaskStatus:
        final = self._final_status()
        return final if final is not None else await self._oq.status(self.id)

    async def get(self, timeout: float | None = None) -> TaskResult:
        return await self._oq.waiters.wait(self.id, self._future, timeout)

    async def result(self, timeout: float | None = None) -> Any:
        return self._value(await self.get(timeout))

    async def cancel(self) -> bool:
        return await self._oq.cancel(self.id)

    def __await__(self) -> Any:
        return self.result().__await__()
