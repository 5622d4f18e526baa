"""Results the system writes itself (a worker died, a ttl ran out, a cancel): stored, announced
as events and handed to this process's waiters, the same way for every caller."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..models import EventType, Task, TaskResult
from ..workers.base import cancelled_results

if TYPE_CHECKING:
    from ..client.session import Session


class Outcomes:
    """Writes system-made results: ``record`` any, ``cancelled`` for cancelled tasks."""

    def __init__(self, session: Session, on_results: Callable[[Sequence[TaskResult]], None]) -> None:
        self.session = session
        self.on_results = on_results  # (the waiters': wake whoever waits here)

    async def record(self, results: Sequence[TaskResult], kind: EventType,
                     detail: Callable[[TaskResult], str | None] = lambda r: None) -> None:
        """Store ``results``, emit a ``kind`` event for each (with ``detail(result)``), and
        resolve the waiters here."""
        await self.session.results.put_results(results)
        for r in results:
            self.session.events.emit(r.task_id, kind.value, queue=r.queue, detail=detail(r))
        self.on_results(results)

    async def cancelled(self, pairs: Sequence[tuple[Task, str]]) -> None:
        """``(task, cause)``: each task's CANCELLED result, naming the task whose end cancelled
        it (a task that is its own cause was cancelled by the user)."""
        res = cancelled_results(pairs)
        for r, (t, cause) in zip(res, pairs):
            if t.id == cause and r.error is not None:
                r.error = type(r.error)("TaskCancelled", "cancelled by user")
        await self.record(res, EventType.CANCELLED, lambda r: r.error.message if r.error else None)
