"""Record builders the storage tests share: tasks, results and events on a fake clock.

Times come from a fake clock (``T0``): backends take ``now`` from the caller.

A helper module, not a test module: test_contract.py and the backends' test modules import
from here.
"""

from __future__ import annotations

from omniq.ids import new_id
from omniq.models import Task, TaskEvent, TaskResult, TaskStatus
from omniq.storage.base import TaskQueue

T0 = 1_000_000.0


def task(**kw: object) -> Task:
    kw.setdefault("id", new_id())
    kw.setdefault("payload", b"payload")
    kw.setdefault("created_at", T0)
    return Task(**kw)  # type: ignore[arg-type]


async def claim(
    q: TaskQueue,
    limit: int = 1000,
    *,
    worker: str = "w1",
    queues: list[str] | None = None,
    now: float = T0,
    lease: float = 30.0,
) -> list[Task]:
    return await q.claim(worker, queues=queues, limit=limit, lease=lease, now=now)


def result(**kw: object) -> TaskResult:
    kw.setdefault("task_id", new_id())
    kw.setdefault("status", TaskStatus.SUCCEEDED)
    return TaskResult(**kw)  # type: ignore[arg-type]


def event(task_id: str, type: str, ts: float, **kw: object) -> TaskEvent:
    return TaskEvent(task_id=task_id, type=type, timestamp=ts, **kw)  # type: ignore[arg-type]
