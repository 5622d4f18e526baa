"""Schedules (fired by compare-and-set on their entry) and worker heartbeats, in the META
bucket."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ...errors import ConfigError
from ...lifecycle import (
    fired,
    slot_fires,
)
from ...models import Schedule, Task
from .._codec import encode
from ..base import (
    WorkerInfo,
)
from .guard import (
    guarded,
)
from .records import (
    decode_schedule,
    decode_worker,
    token,
)
from .tasks import (
    NatsTaskRecords,
)


class NatsSchedules(NatsTaskRecords):
    """Schedules and worker heartbeats."""

    # --- schedules ----------------------------------------------------------------------------------------
    def _schedule_subject(self, schedule_id: str) -> str:
        return f"$KV.{self.meta_bucket}.s.{token(schedule_id)}"

    async def _get_schedule(self, schedule_id: str) -> tuple[int, Schedule] | None:
        m = await self._get_last(f"KV_{self.meta_bucket}", self._schedule_subject(schedule_id))
        return None if m is None else (m.seq, decode_schedule(m.data))

    @guarded
    async def add_schedule(self, schedule: Schedule) -> None:
        await self._publish_ok([(self._schedule_subject(schedule.id), encode(schedule), None)])

    @guarded
    async def get_schedules(self) -> list[Schedule]:
        msgs = await self._scan(f"KV_{self.meta_bucket}", f"$KV.{self.meta_bucket}.s.>",
                                last_per_subject=True)  # fmt: skip
        return [decode_schedule(m.data) for m in msgs if m.data]

    @guarded
    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_run: float | None
    ) -> bool:
        async def change(s: Schedule) -> Schedule:
            s.paused = paused
            if not paused or next_run is not None:
                s.next_run = next_run
            return s

        return await self._change_schedule(schedule_id, change)

    @guarded
    async def delete_schedule(self, schedule_id: str) -> bool:
        if await self._get_schedule(schedule_id) is None:
            return False
        await self._purge(f"KV_{self.meta_bucket}", self._schedule_subject(schedule_id))
        return True

    @guarded
    async def _fire_schedule(
        self, schedule_id: str, expected_next_run: float, next_run: float | None, now: float, task: Task
    ) -> bool:
        """The slot is taken by compare-and-set on the schedule entry, then the task is stored."""

        async def change(s: Schedule) -> Schedule | None:
            if not slot_fires(s, expected_next_run):
                return None
            if await self._get_rec(task.id) is not None:
                raise ConfigError(f"task id {task.id!r} already exists")
            return fired(s, next_run=next_run, now=now, task_id=task.id)

        if not await self._change_schedule(schedule_id, change):
            return False
        await self._insert([task], now)
        return True

    async def _change_schedule(
        self, schedule_id: str, change: Callable[[Schedule], Awaitable[Schedule | None]]
    ) -> bool:
        """Compare-and-set ``change(schedule)`` on its entry until it sticks; False when the
        schedule is unknown or ``change`` gives None."""
        while True:
            got = await self._get_schedule(schedule_id)
            if got is None:
                return False
            rev, s = got
            new = await change(s)
            if new is None:
                return False
            if await self._cas(self._schedule_subject(schedule_id), encode(new), rev) is not None:
                return True

    # --- workers -------------------------------------------------------------------------------------------
    def _worker_subject(self, worker_id: str) -> str:
        return f"$KV.{self.meta_bucket}.w.{token(worker_id)}"

    @guarded
    async def heartbeat(self, info: WorkerInfo) -> None:
        await self._publish_ok([(self._worker_subject(info.id), encode(info), None)])

    @guarded
    async def remove_worker(self, worker_id: str) -> None:
        await self._purge(f"KV_{self.meta_bucket}", self._worker_subject(worker_id))

    @guarded
    async def workers(self) -> list[WorkerInfo]:
        msgs = await self._scan(f"KV_{self.meta_bucket}", f"$KV.{self.meta_bucket}.w.>",
                                last_per_subject=True)  # fmt: skip
        return sorted((decode_worker(m.data) for m in msgs if m.data), key=lambda w: w.id)
