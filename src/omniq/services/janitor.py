"""The janitor: twice a second, the housekeeping no single call triggers. Leases that lapsed
(the task is delivered again, or fails as ``WorkerDied`` at ``max_deliveries``), ttls that ran
out before a task started, results past their ``result_ttl``, and blobs nothing refers to."""

from __future__ import annotations

import contextlib
import heapq
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from ..logs import Outage, get_logger
from ..models import ErrorInfo, EventType, TaskResult, TaskStatus
from ..redact import masked
from .outcomes import Outcomes

if TYPE_CHECKING:
    from ..client.session import Session

log = get_logger("omniq")


class Janitor:
    """Runs ``run()`` while its session is open; ``sweep_blobs()`` on demand too."""

    def __init__(self, session: Session, outcomes: Outcomes, *, blob_grace: float, blob_sweep_every: float) -> None:
        self.session = session
        self.outcomes = outcomes
        #: seconds a blob, or an owner of one, is kept however unreferenced
        self.blob_grace = blob_grace
        self.blob_sweep_every = blob_sweep_every  # seconds between sweeps of unreferenced blobs
        self._expiries: list[float] = []  # heap of result expiry times written here

    def on_results(self, results: Sequence[TaskResult]) -> None:
        """Results stored here: purge each as its ``result_ttl`` passes."""
        for r in results:
            if r.expires_at is not None:
                heapq.heappush(self._expiries, r.expires_at)

    async def run(self) -> None:
        """Leases that lapsed, TTLs that ran out, and results finished by other processes."""
        s = self.session
        last_purge = 0.0
        last_sweep = time.time()
        outage = Outage(log, "housekeeping", masked(s.tasks_url))
        while True:
            await anyio.sleep(0.5)
            now = time.time()
            try:
                reaped = await s.queue.reap(now=now)
                for t in reaped.requeued:  # stamped at the reap: a worker woken by it may
                    # claim the task and emit `started` before this coroutine resumes
                    s.events.emit(t.id, EventType.REQUEUED.value, queue=t.queue, detail="lease lapsed", timestamp=now)
                if reaped.requeued:
                    s.queue.notify()
                if reaped.dead:
                    dead = [
                        TaskResult(
                            task_id=t.id, status=TaskStatus.FAILED, queue=t.queue, name=t.name, key=t.key,
                            attempts=t.attempts, finished_at=now, metadata=t.metadata,
                            error=ErrorInfo(
                                "WorkerDied",
                                f"worker {t.worker} stopped responding; delivered {t.deliveries} times "
                                f"(max_deliveries={t.max_deliveries})",
                            ),
                        )
                        for t in reaped.dead
                    ]
                    await self.outcomes.record(dead, EventType.FAILED, lambda r: "WorkerDied")
                if reaped.cancelled:
                    await self.outcomes.cancelled(reaped.cancelled)
                expired = await s.queue.expire(now=now)
                if expired:
                    exp = [
                        TaskResult(
                            task_id=t.id, status=TaskStatus.EXPIRED, queue=t.queue, name=t.name, key=t.key,
                            finished_at=now, metadata=t.metadata,
                            error=ErrorInfo("TaskExpired", "its ttl ran out before it started"),
                        )
                        for t in expired
                        if t.status is TaskStatus.EXPIRED
                    ]
                    await self.outcomes.record(exp, EventType.EXPIRED)
                    dependents = [t for t in expired if t.status is TaskStatus.CANCELLED]
                    if dependents:
                        gone = {t.id for t in expired}
                        await self.outcomes.cancelled([
                            (t, next((d for d in t.depends_on if d in gone), exp[0].task_id if exp else ""))
                            for t in dependents
                        ])
                expiries = self._expiries
                if now - last_purge > self.purge_every() or (expiries and now >= expiries[0]):
                    while expiries and expiries[0] <= now:
                        heapq.heappop(expiries)
                    last_purge = now
                    await s.results.purge_results(now=now)
                if now - last_sweep > self.blob_sweep_every:
                    last_sweep = now
                    await self.sweep_blobs(now=now)
                outage.ok()
            except Exception as exc:
                outage.failed(exc)

    async def sweep_blobs(self, *, now: float | None = None) -> int:
        """Remove blobs no unfinished task and no stored result refers to any more (older than
        ``blob_grace``); ``run()`` calls this every ``blob_sweep_every`` seconds."""
        now = time.time() if now is None else now
        removed = 0
        s = self.session
        stores = {id(st): st for st in (s.queue, s.results)}
        for store in stores.values():
            with contextlib.suppress(NotImplementedError):
                removed += await store.sweep_blobs(older_than=now - self.blob_grace)
        return removed

    def purge_every(self) -> float:
        """Purge expired results at least as often as the default result TTL (0.5-60 s)."""
        return max(0.5, min(60.0, self.session.config.result_ttl or 60.0))
