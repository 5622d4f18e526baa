"""The rules of a task's life, decided once: pure functions, no I/O, no asyncio.

Every backend stores tasks its own way (heaps in memory, files renamed between folders, NATS
stream records, SQL rows, Redis hashes), but what happens to a task is the same everywhere, and
it is decided here:

- **claim eligibility** (:func:`claimable`, :func:`claim_order`): QUEUED, or PENDING whose eta
  has come and whose dependencies all succeeded; never once expired; highest priority first,
  then enqueue order.
- **a lapsed lease** (:func:`lease_lapsed`, :func:`on_lapse`): the task goes round again
  (QUEUED) while it has deliveries left, fails (``WorkerDied``) at ``max_deliveries``, and is
  CANCELLED when someone had asked to cancel it.
- **expiry** (:func:`expires`): a QUEUED or PENDING task past ``expires_at`` is EXPIRED.
- **the dependency cascade** (:func:`on_dependency_end`): a dependent is released when its last
  dependency succeeds, cancelled when one fails, is cancelled or expires.
- **schedule slots** (:func:`slot_fires`, :func:`fired`): a slot fires when the schedule is
  unpaused and its ``next_run`` is still the one the firer read; the backend makes that check
  and the write one compare-and-set. Which slot is due and which comes next is calendar maths
  (:func:`omniq.scheduling.due_slot`, :func:`omniq.scheduling.after_fire`): the scheduler
  decides it before it calls ``fire_schedule``, so no backend repeats it.

Backends that can decide in Python (memory, file://, NATS) call these functions; PostgreSQL,
SQLite and Redis must decide server-side, in one statement or one Lua script, for atomicity:
``tests/storage/test_lifecycle_table.py`` checks every backend against the same table of cases
built from these functions, so a copy that drifts fails there.
"""

from __future__ import annotations

import enum

import msgspec

from .models.schedule import Schedule
from .models.task import TaskStatus

QUEUED = TaskStatus.QUEUED
PENDING = TaskStatus.PENDING
RUNNING = TaskStatus.RUNNING
CANCELLED = TaskStatus.CANCELLED

#: Final statuses that cancel a task's dependents.
UNSUCCESSFUL = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED})
#: Statuses from which a task can still expire or be cancelled before it runs.
WAITING = frozenset({QUEUED, PENDING})


# --- time ---------------------------------------------------------------------------------------
def is_due(eta: float | None, now: float) -> bool:
    """Whether a task with this ``eta`` may run at ``now`` (no eta: at once)."""
    return eta is None or eta <= now


def is_expired(expires_at: float | None, now: float) -> bool:
    """Whether ``expires_at`` has come (the instant itself counts as expired)."""
    return expires_at is not None and expires_at <= now


def lease_lapsed(lease_until: float | None, now: float) -> bool:
    """Whether a lease ending at ``lease_until`` is over at ``now`` (the instant itself is not:
    a worker extending its lease right on time keeps it)."""
    return lease_until is not None and lease_until < now


def ready_status(eta: float | None, now: float) -> TaskStatus:
    """Where a task that waits for nothing but its eta goes: QUEUED, or PENDING until ``eta``
    (a released dependent, a retried attempt, a lease given back)."""
    return QUEUED if is_due(eta, now) else PENDING


# --- claim ---------------------------------------------------------------------------------------
def claimable(
    status: TaskStatus, *, eta: float | None, expires_at: float | None, waiting: bool, now: float
) -> bool:
    """Whether ``claim`` at ``now`` may lease this task: QUEUED, or PENDING with its eta come
    and no dependency left to wait for (``waiting``); an expired task never (``expire`` ends
    it, and another worker with another clock must not have it either)."""
    if is_expired(expires_at, now):
        return False
    if status is QUEUED:
        return True
    return status is PENDING and not waiting and is_due(eta, now)


def claim_order(priority: int, seq: object) -> tuple[int, object]:
    """Sort key of claimable tasks: highest priority first, then enqueue order (``seq``, any
    value that grows with enqueue order: a counter, a time-ordered id)."""
    return (-priority, seq)


# --- lapsed leases --------------------------------------------------------------------------------
def on_lapse(*, cancel_requested: bool, deliveries: int, max_deliveries: int) -> TaskStatus:
    """What a RUNNING task whose lease lapsed (its worker died or hangs) becomes.

    CANCELLED when someone asked to cancel it (it would have been stopped anyway); QUEUED, to be
    delivered again, while ``deliveries < max_deliveries`` (death is not failure: ``retries``
    count the task's own exceptions, not lost workers); FAILED past that, which the orchestrator
    records as ``WorkerDied`` (a task that kills its process every time is not run forever).
    """
    if cancel_requested:
        return TaskStatus.CANCELLED
    if deliveries < max_deliveries:
        return QUEUED
    return TaskStatus.FAILED


# --- a failed attempt -------------------------------------------------------------------------------
def retry_after(*, retryable: bool, attempt: int, retries: int, retry_delay: float,
                jitter: float = 1.0) -> float | None:
    """Seconds until attempt ``attempt`` (1-based, just failed) runs again, or None: the task
    fails. Only the task's own exceptions count (``retryable``: not a bad signature or an
    unreadable payload), ``retries`` times; the delay doubles per attempt, and ``jitter`` (the
    caller's random factor, 0.75-1.25) keeps many retries from landing at once."""
    if not retryable or attempt > retries:
        return None
    return retry_delay * (2 ** max(0, attempt - 1)) * jitter


# --- expiry -----------------------------------------------------------------------------------------
def expires(status: TaskStatus, expires_at: float | None, now: float) -> bool:
    """Whether ``expire`` at ``now`` ends this task as EXPIRED: it has not started (QUEUED or
    PENDING) and its ``expires_at`` has come. A RUNNING task runs to its end."""
    return status in WAITING and is_expired(expires_at, now)


# --- dependencies -------------------------------------------------------------------------------------
class Cascade(enum.Enum):
    """What a dependency's end does to one PENDING dependent."""

    WAIT = "wait"  # other dependencies still unfinished (or the dependency is not final)
    RELEASE = "release"  # its last dependency succeeded: QUEUED, or PENDING on its eta
    CANCEL = "cancel"  # a dependency failed, was cancelled or expired: CANCELLED (transitively)


def on_dependency_end(dep_status: TaskStatus, *, others_left: bool) -> Cascade:
    """The dependent's fate when a dependency ends with ``dep_status``; ``others_left``: it still
    waits for another dependency besides this one. A cancelled dependent cancels its own
    dependents in turn (the backend walks on with the dependent as the ended task)."""
    if dep_status in UNSUCCESSFUL:
        return Cascade.CANCEL
    if dep_status is TaskStatus.SUCCEEDED and not others_left:
        return Cascade.RELEASE
    return Cascade.WAIT


# --- schedule slots -------------------------------------------------------------------------------------
def slot_fires(schedule: Schedule | None, expected_next_run: float) -> bool:
    """The compare of a schedule's compare-and-set: the caller read ``expected_next_run`` as the
    slot to fire, and wins it only if the schedule still exists, is not paused and nobody moved
    ``next_run`` on since. The backend makes this check and the write atomic."""
    return schedule is not None and not schedule.paused and schedule.next_run == expected_next_run


def fired(schedule: Schedule, *, next_run: float | None, now: float, task_id: str) -> Schedule:
    """The schedule as stored once its slot fired at ``now`` with task ``task_id`` (a copy)."""
    return msgspec.structs.replace(schedule, next_run=next_run, last_run=now, last_task_id=task_id)


__all__ = [
    "CANCELLED",
    "PENDING",
    "QUEUED",
    "RUNNING",
    "UNSUCCESSFUL",
    "WAITING",
    "Cascade",
    "claim_order",
    "claimable",
    "expires",
    "fired",
    "is_due",
    "is_expired",
    "lease_lapsed",
    "on_dependency_end",
    "on_lapse",
    "ready_status",
    "slot_fires",
]
