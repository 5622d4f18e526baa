"""The file:// backend: results and events (``FsspecBackend``) plus a task queue on a shared
POSIX directory (``TaskDir``), and ``open_fsspec``."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar

import anyio
import anyio.to_thread

from ...errors import ConfigError, StorageError
from ...models import Schedule, Task, TaskStatus
from ..base import UNSUCCESSFUL, Backend, Finished, Overrun, Reaped, TaskQueue, WorkerInfo
from ..blobs import (
    LIVE_TASK_STATUSES,
)
from ..checks import check_new_tasks, watched_after
from .files import (
    R,
    no_task_queue_message,
    parse_url,
    read_file,
)
from .store import (
    FsspecBackend,
)
from .taskdir import (
    TaskDir,
)


class FileTaskQueueBackend(FsspecBackend, TaskQueue):
    """Tasks, results and events in one directory on a local or shared POSIX filesystem (NFS
    included: claims are renames, compare-and-set is ``os.link``, neither needs a lock)."""

    can_hold_tasks: ClassVar[bool] = True
    _layout: ClassVar[dict[str, str]] = {
        **FsspecBackend._layout,
        "tasks": "tasks/<status>/...: one file per task, see omniq.storage.fsspec.taskdir.TaskDir",
    }
    #: ``wait_for_tasks`` notices work enqueued by other processes (it polls the directories).
    cross_process_wakeups = True

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(url, storage_options=storage_options)
        if not self.location.local:
            raise ConfigError(no_task_queue_message(url))
        self._tasks = TaskDir(self.root)
        self._tasks.succeeded_result = self._succeeded_result
        self._watched: set[str] | None = set()  # queues claimed from (None: all)

    async def _open(self) -> None:
        await super()._open()
        try:
            await self._run("open the task queue in", self._tasks.setup)
        except BaseException:
            await super()._close()
            raise

    async def _run(self, action: str, fn: Callable[..., R], *args: Any) -> R:
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args))
        except (StorageError, ConfigError):
            raise
        except OSError as exc:
            raise self._error(action, exc) from exc

    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        if not tasks:
            return {}
        self._tasks.results_here = self.results_here
        ready, dups = await self._run("enqueue tasks in", self._tasks.enqueue, list(tasks))
        if ready:
            self.notify()
        return dups

    def _succeeded_result(self, task_id: str) -> bool:
        """Whether a SUCCEEDED result of ``task_id`` is stored here (in the queue's thread)."""
        path = self.result_path(task_id)
        data = read_file(path)
        r = self._decode_result(path, data) if data is not None else None
        return r is not None and r.status is TaskStatus.SUCCEEDED

    async def _live_tasks(self, task_ids: list[str]) -> set[str]:
        """Which of these tasks may still run (pending, queued or running here)."""
        if not task_ids:
            return set()
        found = await self._run("read task statuses in", self._tasks.statuses, task_ids)
        return {t for t, s in found.items() if s.value in LIVE_TASK_STATUSES}

    async def _claim(
        self, worker: str, names: list[str] | None, limit: int, lease: float, now: float
    ) -> list[Task]:
        self._watched = watched_after(self._watched, names)
        return await self._run(
            "claim tasks from", self._tasks.claim, worker, names, limit, lease, now
        )

    async def _finish(self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], now: float) -> Finished:
        out = await self._run("finish tasks in", self._tasks.finish, worker, list(outcomes), now)
        if out.released:
            self.notify()
        return out

    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        if await self._run("retry a task in", self._tasks.retry, worker, task_id, eta, attempts):
            self.notify()

    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        if await self._run("release tasks in", self._tasks.release, worker, list(task_ids)):
            self.notify()

    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        await self._run("extend leases in", self._tasks.extend, worker, list(task_ids), lease_until)

    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        return await self._run("read leases in", self._tasks.overrun, now, limit)

    async def reap(self, *, now: float) -> Reaped:
        out = await self._run("reap leases in", self._tasks.reap, now)
        if out.requeued:
            self.notify()
        return out

    async def expire(self, *, now: float) -> list[Task]:
        return await self._run("expire tasks in", self._tasks.expire, now)

    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        return await self._run("cancel tasks in", self._tasks.cancel, list(task_ids), now)

    async def get_task(self, task_id: str) -> Task | None:
        return await self._run("read a task from", self._tasks.get_task, task_id)

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        return await self._run("read task statuses from", self._tasks.statuses, list(task_ids))

    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        return await self._run(
            "read cancel requests from", self._tasks.cancel_requests, list(task_ids)
        )

    async def counts(self) -> dict[str, dict[str, int]]:
        return await self._run("count tasks in", self._tasks.counts)

    async def oldest_queued(self) -> dict[str, float]:
        return await self._run("read queues in", self._tasks.oldest_queued)

    async def purge_tasks(
        self, *, before: float, statuses: Collection[TaskStatus] | None = None
    ) -> list[str]:
        return await self._run("purge tasks in", self._tasks.purge, before, statuses)

    async def _list_tasks(
        self, statuses: Collection[TaskStatus] | None, queue: str | None, name: str | None, limit: int,
        before: str | None,
    ) -> list[Task]:
        return await self._run("list tasks in", self._tasks.list_tasks, statuses, queue, name, limit, before)

    async def requeue(self, task_id: str, *, now: float, attempts: int) -> TaskStatus | None:
        before = await self._run("requeue a task in", self._tasks.requeue, task_id, attempts)
        if before in UNSUCCESSFUL:
            self.notify()
        return before

    async def add_schedule(self, schedule: Schedule) -> None:
        await self._run("write a schedule to", self._tasks.add_schedule, schedule)

    async def get_schedules(self) -> list[Schedule]:
        return await self._run("read schedules from", self._tasks.get_schedules)

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_run: float | None
    ) -> bool:
        return await self._run(
            "update a schedule in", self._tasks.set_schedule_paused, schedule_id, paused, next_run
        )

    async def delete_schedule(self, schedule_id: str) -> bool:
        return await self._run("delete a schedule in", self._tasks.delete_schedule, schedule_id)

    async def _fire_schedule(
        self, schedule_id: str, expected_next_run: float, next_run: float | None, now: float, task: Task
    ) -> bool:
        fired, ready = await self._run(
            "fire a schedule in",
            self._tasks.fire_schedule,
            schedule_id,
            expected_next_run,
            next_run,
            now,
            task,
        )
        if ready:
            self.notify()
        return fired

    async def heartbeat(self, info: WorkerInfo) -> None:
        await self._run("write a heartbeat to", self._tasks.heartbeat, info)

    async def remove_worker(self, worker_id: str) -> None:
        await self._run("remove a worker from", self._tasks.remove_worker, worker_id)

    async def workers(self) -> list[WorkerInfo]:
        return await self._run("read workers from", self._tasks.workers)

    async def wait_for_tasks(self, timeout: float) -> None:
        """Return on ``notify`` or when another process made work claimable (the queue
        directories are polled every 5 ms, backing off to 100 ms), or after ``timeout``."""
        deadline = anyio.current_time() + timeout
        delay = 0.005
        while not self._wakeup.is_set():
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            with anyio.move_on_after(min(delay, left)):
                await self._wakeup.wait()
            if self._wakeup.is_set() or self._files is None:
                break
            queues = sorted(self._watched) if self._watched else None
            if await self._run("poll", self._tasks.claimable, queues, time.time()):
                break
            delay = min(delay * 2, 0.1)
        self._wakeup = anyio.Event()


def open_fsspec(url: str, storage_options: dict[str, Any] | None = None) -> Backend:
    """The backend for an fsspec URL: ``FileTaskQueueBackend`` (tasks too) for ``file://``,
    ``FsspecBackend`` (results and events) for object stores. Not connected yet."""
    if parse_url(url).local:
        return FileTaskQueueBackend(url, storage_options=storage_options)
    return FsspecBackend(url, storage_options=storage_options)
