"""The state of a bucket task queue: shard objects holding one compact row per unfinished (or
recently finished) task, and the pure functions that change them.

A shard is one object, replaced as a whole by compare-and-set; every function here takes a
decoded shard, changes it in place and says what it did, and never does I/O. The lifecycle
rules (claim eligibility and order, lapsed leases, expiry, the dependency cascade, schedule
slots) are ``omniq.lifecycle``'s: nothing is decided twice.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import msgspec

from ...lifecycle import (
    Cascade,
    claim_order,
    claimable,
    expires,
    lease_lapsed,
    on_dependency_end,
    on_lapse,
    ready_status,
)
from ...models import Schedule, Task, TaskStatus

QUEUED, PENDING, RUNNING = TaskStatus.QUEUED, TaskStatus.PENDING, TaskStatus.RUNNING
CANCELLED, FAILED = TaskStatus.CANCELLED, TaskStatus.FAILED
ACTIVE = frozenset({QUEUED, PENDING, RUNNING})


class Row(msgspec.Struct, array_like=True):
    """What changes about a task while it lives (its body, ``tasks/<id>``, never changes)."""

    id: str
    queue: str
    priority: int
    seq: str  # a time-ordered id: enqueue order among equal priorities
    status: TaskStatus
    created_at: float
    max_deliveries: int = 3
    deliveries: int = 0
    attempts: int = 0
    eta: float | None = None
    expires_at: float | None = None
    lease_until: float | None = None
    worker: str | None = None
    cancel_requested: bool = False
    waiting: list[str] = msgspec.field(default_factory=list)  # dependencies not yet succeeded
    dependents: list[str] = msgspec.field(default_factory=list)  # tasks waiting on this one
    key: str | None = None
    finished_at: float | None = None


class Shard(msgspec.Struct):
    """One shard object. ``version`` grows with every write (so no two versions have the same
    bytes, whatever the store's tag is made of); ``finals`` counts the final tasks archived to
    ``done/`` objects, by queue and status; ``schedules`` live in shard 0 (firing a slot and
    storing its task is then one compare-and-set when the task is stored there too)."""

    version: int = 0
    rows: dict[str, Row] = msgspec.field(default_factory=dict)
    finals: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    schedules: dict[str, Schedule] = msgspec.field(default_factory=dict)


def shard_of(task_id: str, shards: int) -> int:
    """Which shard holds a task (stable across processes and Python versions)."""
    return 0 if shards == 1 else zlib.crc32(task_id.encode("utf-8", "surrogatepass")) % shards


def row_of(task: Task, seq: str, status: TaskStatus, waiting: Sequence[str], now: float) -> Row:
    row = Row(
        id=task.id, queue=task.queue, priority=task.priority, seq=seq, status=status,
        created_at=task.created_at, max_deliveries=task.max_deliveries,
        deliveries=task.deliveries, attempts=task.attempts, eta=task.eta,
        expires_at=task.expires_at, waiting=list(waiting), key=task.key,
    )  # fmt: skip
    if status.is_final:
        row.finished_at = now
    return row


def as_task(body: Task, row: Row) -> Task:
    """The stored task as it is now: its body overlaid with its row."""
    running = row.status is RUNNING
    final = row.status.is_final
    return msgspec.structs.replace(
        body,
        status=row.status,
        deliveries=row.deliveries,
        attempts=row.attempts,
        eta=row.eta,
        expires_at=row.expires_at,
        worker=row.worker if (running or final) else None,
        lease_until=row.lease_until if running else None,
        cancel_requested=running and row.cancel_requested,
    )


def end(row: Row, status: TaskStatus, now: float) -> None:
    row.status = status
    row.finished_at = now
    row.lease_until = None
    row.waiting = []


def add_final(shard: Shard, queue: str, status: TaskStatus, n: int) -> None:
    per = shard.finals.setdefault(queue, {})
    per[status.value] = per.get(status.value, 0) + n
    if per[status.value] <= 0:
        del per[status.value]
    if not per:
        del shard.finals[queue]


# --- claim ---------------------------------------------------------------------------------------
def ready(row: Row, now: float) -> bool:
    return claimable(
        row.status, eta=row.eta, expires_at=row.expires_at, waiting=bool(row.waiting), now=now
    )


def candidates(shard: Shard, names: Sequence[str] | None, now: float) -> list[Row]:
    """Claimable rows in claim order."""
    wanted = None if names is None else set(names)
    rows = [
        r for r in shard.rows.values()
        if (wanted is None or r.queue in wanted) and r.status in (QUEUED, PENDING) and ready(r, now)
    ]  # fmt: skip
    rows.sort(key=lambda r: claim_order(r.priority, r.seq))
    return rows


def claim(
    shard: Shard, worker: str, names: Sequence[str] | None, limit: int, lease: float, now: float
) -> list[Row]:
    out = candidates(shard, names, now)[:limit]
    for r in out:
        r.status = RUNNING
        r.worker = worker
        r.lease_until = now + lease
        r.deliveries += 1
    return out


def next_due(shard: Shard) -> float | None:
    """When the earliest delayed task (waiting for nothing but its eta) falls due."""
    etas = [
        r.eta for r in shard.rows.values()
        if r.status is PENDING and not r.waiting and r.eta is not None
    ]  # fmt: skip
    return min(etas) if etas else None


# --- the dependency cascade --------------------------------------------------------------------
External = tuple[str, str, TaskStatus]  # (dependent id, dependency id, dependency's status)


def cascade(
    shard: Shard, ended: list[tuple[str, TaskStatus]], now: float
) -> tuple[list[Row], list[tuple[Row, str]], list[External]]:
    """Release or cancel (transitively) the dependents of tasks that just ended: those in this
    shard now, the others returned as ``External`` for the caller to apply to their shards."""
    released: list[Row] = []
    cancelled: list[tuple[Row, str]] = []
    external: list[External] = []
    todo = list(ended)
    while todo:
        dep_id, dep_status = todo.pop(0)
        dep = shard.rows.get(dep_id)
        for child_id in dep.dependents if dep is not None else ():
            child = shard.rows.get(child_id)
            if child is None:
                external.append((child_id, dep_id, dep_status))
                continue
            fate = dependency_ended(child, dep_id, dep_status, now)
            if fate is Cascade.CANCEL:
                cancelled.append((child, dep_id))
                todo.append((child_id, CANCELLED))
            elif fate is Cascade.RELEASE:
                released.append(child)
    return released, cancelled, external


def dependency_ended(child: Row, dep_id: str, dep_status: TaskStatus, now: float) -> Cascade | None:
    """Apply one dependency's end to a dependent row; its fate, or None when it was not
    waiting for that dependency (any more)."""
    if child.status is not PENDING or dep_id not in child.waiting:
        return None
    left = [d for d in child.waiting if d != dep_id]
    fate = on_dependency_end(dep_status, others_left=bool(left))
    if fate is Cascade.CANCEL:
        end(child, CANCELLED, now)
    elif dep_status is TaskStatus.SUCCEEDED:
        child.waiting = left
        if fate is Cascade.RELEASE:
            child.status = ready_status(child.eta, now)
    return fate


# --- ends of a lease ----------------------------------------------------------------------------
def held(shard: Shard, worker: str, task_id: str) -> Row | None:
    r = shard.rows.get(task_id)
    return r if r is not None and r.status is RUNNING and r.worker == worker else None


def lapse(shard: Shard, now: float) -> tuple[list[Row], list[Row], list[Row]]:
    """RUNNING rows whose lease lapsed: (requeued, dead, cancelled), as ``on_lapse`` decides."""
    requeued: list[Row] = []
    dead: list[Row] = []
    cancelled: list[Row] = []
    lapsed = sorted(
        (r for r in shard.rows.values() if r.status is RUNNING and lease_lapsed(r.lease_until, now)),
        key=lambda r: r.seq,
    )
    for r in lapsed:
        fate = on_lapse(cancel_requested=r.cancel_requested, deliveries=r.deliveries,
                        max_deliveries=r.max_deliveries)  # fmt: skip
        if fate is CANCELLED:
            end(r, CANCELLED, now)
            cancelled.append(r)
        elif fate is QUEUED:
            r.status = QUEUED
            r.worker = None
            r.lease_until = None
            requeued.append(r)
        else:
            end(r, FAILED, now)
            dead.append(r)
    return requeued, dead, cancelled


def due_work(shard: Shard, now: float) -> bool:
    """Whether ``reap`` or ``expire`` at ``now`` would change anything in this shard."""
    return any(
        (r.status is RUNNING and lease_lapsed(r.lease_until, now))
        or expires(r.status, r.expires_at, now)
        for r in shard.rows.values()
    )


def archivable(shard: Shard, now: float, age: float, keep: int) -> list[Row]:
    """Final rows to move out to ``done/`` objects: those finished ``age`` seconds before
    ``now``, and the oldest beyond ``keep`` final rows."""
    finals = sorted(
        (r for r in shard.rows.values() if r.finished_at is not None and r.status.is_final),
        key=lambda r: r.finished_at or 0.0,
    )
    excess = max(0, len(finals) - keep)
    return [r for i, r in enumerate(finals) if i < excess or (r.finished_at or 0.0) <= now - age]


__all__ = [
    "ACTIVE",
    "External",
    "Row",
    "Shard",
    "add_final",
    "archivable",
    "as_task",
    "candidates",
    "cascade",
    "claim",
    "dependency_ended",
    "due_work",
    "end",
    "held",
    "lapse",
    "next_due",
    "ready",
    "row_of",
    "shard_of",
]
