"""Schedules wired to a client: the ``Scheduler`` loop (``omniq.scheduling``) over the session's
task queue, with the task each due slot becomes, and its ``enqueued`` event."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .. import ids
from ..models import EventType, Schedule, Task
from ..scheduling import Scheduler
from ..serialization._seals import check_schedule, seal_tasks

if TYPE_CHECKING:
    from ..client.session import Session


class Schedules:
    """Starts the scheduler when its session opens; ``add`` / ``pause`` / ``resume`` /
    ``delete`` / ``list`` act on the stored schedules."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.scheduler: Scheduler

    def start(self) -> None:
        """On the loop, when the session opens."""
        self.scheduler = Scheduler(self.session.queue, self.make_task, on_fired=self.on_fired)
        self.session.spawn(self.scheduler.run())

    def make_task(self, schedule: Schedule, slot: float) -> Task:
        """The task a schedule's due ``slot`` becomes, sealed."""
        check_schedule(schedule)  # its call was not swapped for another in storage
        now = time.time()
        opts: dict[str, Any] = dict(schedule.options or {})
        task = Task(
            id=ids.new_id(),
            payload=schedule.payload,
            name=schedule.func_name or schedule.name,
            queue=schedule.queue,
            priority=schedule.priority,
            created_at=now,
            max_deliveries=self.session.config.max_deliveries,
            retries=int(opts.get("retries") or 0),
            timeout=opts.get("timeout"),
            expires_at=(now + float(opts["ttl"])) if opts.get("ttl") else None,
            metadata={"schedule": schedule.id, "slot": slot},
        )
        seal_tasks((task,))
        return task

    def on_fired(self, task: Task) -> None:
        self.session.events.emit(task.id, EventType.ENQUEUED.value, queue=task.queue,
                                 detail=f"schedule {task.metadata.get('schedule')}", timestamp=task.created_at)

    async def add(self, **schedule: Any) -> str:
        """Store a schedule (see ``Scheduler.add``); its id."""
        return await self.scheduler.add(**schedule)

    async def pause(self, schedule_id: str) -> bool:
        return await self.scheduler.pause(schedule_id)

    async def resume(self, schedule_id: str) -> bool:
        return await self.scheduler.resume(schedule_id)

    async def delete(self, schedule_id: str) -> bool:
        return await self.scheduler.delete(schedule_id)

    async def list(self) -> list[dict[str, Any]]:
        """One row per schedule, with its next run."""
        return await self.scheduler.list()
