"""The operators' part of the bucket task queue (``oq.tasks`` / ``task`` / ``retry`` /
``purge``): a page of tasks, a final task run again under its id, finished tasks purged.

These are the only operations that list the bucket: ``tasks/`` (every stored task's body, named
by its time-ordered id) for a page, ``done/`` for a purge. A listing returns 1,000 names a
request, so a page costs about one request per 1,000 tasks stored, plus one read per archived
task it shows; the queue's own work (claims, finishes) never lists."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

import msgspec

from ...models import Task, TaskStatus
from .._codec import decoder
from ..checks import REQUEUABLE
from ..fsspec.layout import decode_name
from . import shards as sh
from .state import ShardStore

_row_dec = decoder(sh.Row)
_SUFFIX = ".msgpack"


class OperatorOps(ShardStore):
    """``list_tasks``, ``requeue`` and ``purge_tasks`` on the shards and ``done/`` objects."""

    if TYPE_CHECKING:

        def notify(self) -> None: ...  # TaskQueue's, beside this class in BucketQueueBackend

    async def _stored_ids(self) -> list[str]:
        """Every stored task's id (from the bodies' names), newest first."""
        root = f"{self._q}/tasks/"
        listed = await self._io("list tasks in", self.files.find(root))
        ids = []
        for path in listed:
            name = path.rsplit("/", 1)[-1]
            if name.endswith(_SUFFIX):
                with contextlib.suppress(UnicodeDecodeError, ValueError):
                    ids.append(decode_name(name[: -len(_SUFFIX)]))
        ids.sort(reverse=True)
        return ids

    async def _list_tasks(
        self, statuses: Collection[TaskStatus] | None, queue: str | None, name: str | None, limit: int,
        before: str | None,
    ) -> list[Task]:
        wanted = set(statuses) if statuses is not None else None
        ids = [t for t in await self._stored_ids() if before is None or t < before]
        shards = await self._all()
        live = {tid: r for s in shards.values() for tid, r in s.rows.items()}
        out: list[Task] = []
        step = max(limit, 64)
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            rows = {t: r for t in chunk if (r := live.get(t)) is not None}
            rows.update(await self._done_rows([t for t in chunk if t not in rows]))
            picked = [
                rows[t] for t in chunk
                if t in rows and (wanted is None or rows[t].status in wanted)
                and (queue is None or rows[t].queue == queue)
            ]  # fmt: skip
            tasks = await self._tasks(picked)
            out += [t for t in tasks if name is None or t.name == name]
            if len(out) >= limit:
                break
        return out[:limit]

    async def requeue(self, task_id: str, *, now: float, attempts: int) -> TaskStatus | None:
        archived = (await self._done_rows([task_id])).get(task_id)

        def fn(shard: sh.Shard) -> tuple[TaskStatus | None, bool]:
            r = shard.rows.get(task_id)
            if r is None:
                if archived is None:
                    return None, False
                r = msgspec.structs.replace(archived)
                if r.status in REQUEUABLE:  # back from done/: it no longer counts there
                    sh.add_final(shard, r.queue, r.status, -1)
                    shard.rows[task_id] = r
            before = r.status
            if before not in REQUEUABLE:
                return before, False
            r.status = TaskStatus.QUEUED
            r.worker = r.lease_until = r.expires_at = r.finished_at = None
            r.cancel_requested = False
            r.deliveries = 0
            r.attempts = attempts
            r.waiting = []
            return before, True

        before = await self._update(self._shard(task_id), fn)
        if before in REQUEUABLE:
            if archived is not None:  # its row is in the shard again (rows are what counts)
                await self._io("requeue a task in", self.files.delete([self._done_path(task_id)]))
            self.notify()
        return before

    async def purge_tasks(
        self, *, before: float, statuses: Collection[TaskStatus] | None = None
    ) -> list[str]:
        """Final tasks finished before ``before``: those still in shards, then archived ones
        (``done/`` is listed only here)."""
        wanted = {s for s in (statuses if statuses is not None else TaskStatus) if s.is_final}
        gone: list[sh.Row] = []
        for i in range(self.shards):

            def fn(shard: sh.Shard) -> tuple[list[sh.Row], bool]:
                rows = [r for r in shard.rows.values()
                        if r.status in wanted and (r.finished_at or 0.0) < before]  # fmt: skip
                for r in rows:
                    del shard.rows[r.id]
                return rows, bool(rows)

            gone += await self._update(i, fn)
        listed = await self._io("list finished tasks in", self.files.find(f"{self._q}/done"))
        archived = await self._io("read finished tasks in", self.files.get_many(listed))
        old: dict[str, sh.Row] = {}
        for data in archived.values():
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                r = _row_dec.decode(data)
                if r.status in wanted and (r.finished_at or 0.0) < before:
                    old[r.id] = r
        for i, ids in self._group(old).items():

            def uncount(shard: sh.Shard, ids: list[str] = ids) -> tuple[list[str], bool]:
                out = [t for t in ids if t not in shard.rows]  # (a row again: requeued meanwhile)
                for t in out:
                    sh.add_final(shard, old[t].queue, old[t].status, -1)
                return out, bool(out)

            kept = set(ids) - set(await self._update(i, uncount))
            for t in kept:
                del old[t]
        await self._io("purge tasks in", self.files.delete([self._done_path(t) for t in old]))
        every = gone + list(old.values())
        await self._io("purge tasks in", self.files.delete([self._body_path(r.id) for r in every]))
        for r in every:
            self._bodies.pop(r.id, None)
            if r.key is not None:
                await self._io("purge keys in", self.keys.forget(r.key, r.id, r.status, time.time()))
        return [r.id for r in sorted(every, key=lambda r: r.id)]


__all__ = ["OperatorOps"]
