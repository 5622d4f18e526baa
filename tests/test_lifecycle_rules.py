"""The pure lifecycle rules (``omniq.lifecycle``), without a loop or a backend.

``tests/storage/test_lifecycle_table.py`` checks that every backend applies them.
"""

from __future__ import annotations

import pytest

from omniq import lifecycle
from omniq.lifecycle import Cascade
from omniq.models import Schedule, TaskStatus

S = TaskStatus
T0 = 1_000.0


@pytest.mark.parametrize(
    ("eta", "now", "due"), [(None, T0, True), (T0, T0, True), (T0 + 1, T0, False), (T0 - 1, T0, True)]
)
def test_is_due_and_ready_status(eta: float | None, now: float, due: bool) -> None:
    assert lifecycle.is_due(eta, now) is due
    assert lifecycle.ready_status(eta, now) is (S.QUEUED if due else S.PENDING)


def test_expiry_instant_counts_as_expired_and_lease_instant_does_not_lapse() -> None:
    assert lifecycle.is_expired(T0, T0)
    assert not lifecycle.is_expired(T0 + 1, T0)
    assert not lifecycle.is_expired(None, T0)
    assert not lifecycle.lease_lapsed(T0, T0)
    assert lifecycle.lease_lapsed(T0 - 0.001, T0)
    assert not lifecycle.lease_lapsed(None, T0)


@pytest.mark.parametrize(
    ("status", "eta", "expires_at", "waiting", "now", "ok"),
    [
        (S.QUEUED, None, None, False, T0, True),
        (S.QUEUED, None, T0, False, T0, False),  # expired: never claimed
        (S.QUEUED, None, T0 + 1, False, T0, True),
        (S.PENDING, T0 + 1, None, False, T0, False),  # not due
        (S.PENDING, T0, None, False, T0, True),
        (S.PENDING, T0, None, True, T0, False),  # waits for a dependency
        (S.PENDING, T0, T0, False, T0, False),
        (S.RUNNING, None, None, False, T0, False),
        (S.SUCCEEDED, None, None, False, T0, False),
        (S.CANCELLED, None, None, False, T0, False),
    ],
)
def test_claimable(
    status: TaskStatus, eta: float | None, expires_at: float | None, waiting: bool, now: float,
    ok: bool,
) -> None:  # fmt: skip
    assert lifecycle.claimable(status, eta=eta, expires_at=expires_at, waiting=waiting, now=now) is ok


def test_claim_order_is_priority_then_enqueue_order() -> None:
    tasks = [(0, 1), (5, 2), (0, 0), (5, 3), (-1, 4)]
    ordered = sorted(tasks, key=lambda t: lifecycle.claim_order(*t))
    assert ordered == [(5, 2), (5, 3), (0, 0), (0, 1), (-1, 4)]


@pytest.mark.parametrize(
    ("cancel", "deliveries", "max_deliveries", "fate"),
    [
        (False, 1, 3, S.QUEUED),
        (False, 2, 3, S.QUEUED),
        (False, 3, 3, S.FAILED),  # WorkerDied at the delivery bound
        (False, 4, 3, S.FAILED),
        (False, 1, 1, S.FAILED),
        (True, 1, 3, S.CANCELLED),  # asked to cancel: never delivered again
        (True, 3, 3, S.CANCELLED),
    ],
)
def test_on_lapse(cancel: bool, deliveries: int, max_deliveries: int, fate: TaskStatus) -> None:
    got = lifecycle.on_lapse(
        cancel_requested=cancel, deliveries=deliveries, max_deliveries=max_deliveries
    )
    assert got is fate


@pytest.mark.parametrize("status", list(TaskStatus))
def test_expires_only_tasks_that_have_not_started(status: TaskStatus) -> None:
    waiting = status in (S.QUEUED, S.PENDING)
    assert lifecycle.expires(status, T0, T0) is waiting
    assert lifecycle.expires(status, T0, T0 + 1) is waiting
    assert not lifecycle.expires(status, T0 + 1, T0)
    assert not lifecycle.expires(status, None, T0)


@pytest.mark.parametrize(
    ("dep", "others_left", "fate"),
    [
        (S.SUCCEEDED, False, Cascade.RELEASE),
        (S.SUCCEEDED, True, Cascade.WAIT),
        (S.FAILED, False, Cascade.CANCEL),
        (S.FAILED, True, Cascade.CANCEL),
        (S.CANCELLED, True, Cascade.CANCEL),
        (S.EXPIRED, False, Cascade.CANCEL),
        (S.RUNNING, False, Cascade.WAIT),  # not final: nothing to decide yet
    ],
)
def test_on_dependency_end(dep: TaskStatus, others_left: bool, fate: Cascade) -> None:
    assert lifecycle.on_dependency_end(dep, others_left=others_left) is fate
    assert {S.FAILED, S.CANCELLED, S.EXPIRED} == lifecycle.UNSUCCESSFUL


def test_slot_fires_is_a_compare_on_next_run() -> None:
    s = Schedule(id="s", name="s", payload=b"x", interval=60.0, next_run=T0)
    assert lifecycle.slot_fires(s, T0)
    assert not lifecycle.slot_fires(s, T0 - 60)  # another firer moved it on
    assert not lifecycle.slot_fires(None, T0)  # deleted
    paused = Schedule(id="s", name="s", payload=b"x", interval=60.0, next_run=T0, paused=True)
    assert not lifecycle.slot_fires(paused, T0)


def test_fired_records_the_slot_on_a_copy() -> None:
    s = Schedule(id="s", name="s", payload=b"x", interval=60.0, next_run=T0)
    after = lifecycle.fired(s, next_run=T0 + 60, now=T0 + 1, task_id="t1")
    assert (after.next_run, after.last_run, after.last_task_id) == (T0 + 60, T0 + 1, "t1")
    assert (s.next_run, s.last_run, s.last_task_id) == (T0, None, None)
    assert not lifecycle.slot_fires(after, T0)


@pytest.mark.parametrize(
    "retryable, attempt, retries, delay, jitter, expected",
    [
        (True, 1, 2, 1.0, 1.0, 1.0),  # the first retry waits retry_delay
        (True, 2, 2, 1.0, 1.0, 2.0),  # then doubles
        (True, 3, 2, 1.0, 1.0, None),  # retries spent: the task fails
        (False, 1, 5, 1.0, 1.0, None),  # not the task's own exception (bad signature): no retry
        (True, 3, 5, 0.5, 1.25, 2.5),  # jitter scales the wait
        (True, 1, 0, 1.0, 1.0, None),  # no retries asked for
    ],
)
def test_retry_after(retryable, attempt, retries, delay, jitter, expected) -> None:
    got = lifecycle.retry_after(retryable=retryable, attempt=attempt, retries=retries,
                                retry_delay=delay, jitter=jitter)
    assert got == expected
