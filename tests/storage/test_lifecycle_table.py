"""Every backend against the same lifecycle decisions (``omniq.lifecycle``).

memory, file:// and NATS call the lifecycle functions; SQLite, PostgreSQL and Redis decide
server-side (SQL statements, Lua scripts) for atomicity. Each case here is one row of a table:
the inputs are set up through the storage interface, the expected outcome is what the pure
function decides for those inputs, and every backend must do exactly that. A server-side copy
that drifts from the rule fails here, naming the rule and the row.
"""

from __future__ import annotations

import pytest

from omniq import lifecycle
from omniq.ids import new_id
from omniq.lifecycle import Cascade
from omniq.models import Schedule, Task, TaskStatus
from omniq.storage.base import TaskQueue

S = TaskStatus
T0 = 1_000_000.0
LEASE = 30.0

#: Every task-queue backend, the servers' in a namespace of the test's own.
BACKEND_URLS = [
    "memory://",
    "sqlite:///{tmp}/t.db",
    "file://{tmp}/fq",
    "postgresql://{server}",
    "redis://{server}",
    "nats://{server}",
    "s3://omniq-test{tmp}/bq",
]
#: conftest's ``queue`` fixture, opened on each of these URLs
pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("queue", BACKEND_URLS, indirect=True)]


def task(**kw: object) -> Task:
    kw.setdefault("id", new_id())
    kw.setdefault("payload", b"payload")
    kw.setdefault("created_at", T0)
    return Task(**kw)  # type: ignore[arg-type]


async def claim(q: TaskQueue, now: float, limit: int = 100) -> list[Task]:
    return await q.claim("w1", queues=None, limit=limit, lease=LEASE, now=now)


async def status(q: TaskQueue, task_id: str) -> TaskStatus:
    return (await q.statuses([task_id]))[task_id]


# --- claim eligibility ---------------------------------------------------------------------------
# (status given at enqueue, eta, expires_at, claim at)
CLAIM_CASES = [
    (S.QUEUED, None, None, T0),
    (S.QUEUED, None, T0 + 10, T0 + 9),
    (S.QUEUED, None, T0 + 10, T0 + 10),
    (S.QUEUED, None, T0 + 10, T0 + 11),
    (S.PENDING, T0 + 5, None, T0 + 4),
    (S.PENDING, T0 + 5, None, T0 + 5),
    (S.PENDING, T0 + 5, None, T0 + 6),
    (S.PENDING, T0 + 5, T0 + 10, T0 + 6),
    (S.PENDING, T0 + 5, T0 + 10, T0 + 10),
]


@pytest.mark.parametrize(("given", "eta", "expires_at", "now"), CLAIM_CASES)
async def test_claim_eligibility(
    queue: TaskQueue, given: TaskStatus, eta: float | None, expires_at: float | None, now: float
) -> None:
    t = task(status=given, eta=eta, expires_at=expires_at)
    await queue.enqueue([t])
    expected = lifecycle.claimable(given, eta=eta, expires_at=expires_at, waiting=False, now=now)
    got = await claim(queue, now)
    assert [c.id for c in got] == ([t.id] if expected else [])


async def test_a_task_waiting_for_a_dependency_is_not_claimable(queue: TaskQueue) -> None:
    parent, child = task(priority=1), task(status=S.PENDING)
    child.depends_on = (parent.id,)
    await queue.enqueue([parent, child])
    assert not lifecycle.claimable(S.PENDING, eta=None, expires_at=None, waiting=True, now=T0)
    assert [c.id for c in await claim(queue, T0)] == [parent.id]


async def test_claim_order(queue: TaskQueue) -> None:
    priorities = [0, 5, -1, 5, 0, 2, -1, 2, 0]
    tasks = [task(priority=p) for p in priorities]
    for t in tasks[:4]:  # two batches: enqueue order spans calls too
        await queue.enqueue([t])
    await queue.enqueue(tasks[4:])
    expected = sorted(range(len(tasks)), key=lambda i: lifecycle.claim_order(priorities[i], i))
    got = await claim(queue, T0)
    assert [t.id for t in got] == [tasks[i].id for i in expected]


# --- lapsed leases ------------------------------------------------------------------------------------
# (max_deliveries, deliveries before the last claim lapses, cancel requested, reap at lease +)
LAPSE_CASES = [
    (1, 1, False, 1.0),
    (2, 1, False, 1.0),
    (3, 2, False, 1.0),
    (2, 2, False, 1.0),
    (1, 1, True, 1.0),
    (3, 1, True, 1.0),
    (2, 1, False, 0.0),  # the lease's last instant: not lapsed yet
]


@pytest.mark.parametrize(("max_deliveries", "deliveries", "cancel", "after"), LAPSE_CASES)
async def test_lapsed_lease(
    queue: TaskQueue, max_deliveries: int, deliveries: int, cancel: bool, after: float
) -> None:
    t = task(max_deliveries=max_deliveries)
    await queue.enqueue([t])
    now = T0
    for _ in range(deliveries - 1):  # earlier deliveries whose leases lapsed too
        [c] = await claim(queue, now)
        now = c.lease_until + 1.0  # type: ignore[operator]
        reaped = await queue.reap(now=now)
        assert [r.id for r in reaped.requeued] == [t.id]
    [c] = await claim(queue, now)
    assert c.deliveries == deliveries
    if cancel:
        assert (await queue.cancel([t.id], now=now))[t.id] is S.RUNNING
    reap_at = c.lease_until + after  # type: ignore[operator]
    reaped = await queue.reap(now=reap_at)
    if not lifecycle.lease_lapsed(c.lease_until, reap_at):
        assert (reaped.requeued, reaped.dead, reaped.cancelled) == ([], [], [])
        assert await status(queue, t.id) is S.RUNNING
        return
    fate = lifecycle.on_lapse(
        cancel_requested=cancel, deliveries=deliveries, max_deliveries=max_deliveries
    )
    assert await status(queue, t.id) is fate
    assert [r.id for r in reaped.requeued] == ([t.id] if fate is S.QUEUED else [])
    assert [r.id for r in reaped.dead] == ([t.id] if fate is S.FAILED else [])
    assert [(r.id, cause) for r, cause in reaped.cancelled] == (
        [(t.id, t.id)] if fate is S.CANCELLED else []
    )


# --- expiry ---------------------------------------------------------------------------------------------
# (status: QUEUED, PENDING on an eta, or RUNNING; expire at)
EXPIRY_CASES = [
    (S.QUEUED, T0 + 9),
    (S.QUEUED, T0 + 10),
    (S.QUEUED, T0 + 11),
    (S.PENDING, T0 + 9),
    (S.PENDING, T0 + 10),
    (S.RUNNING, T0 + 11),
]


@pytest.mark.parametrize(("state", "now"), EXPIRY_CASES)
async def test_expiry(queue: TaskQueue, state: TaskStatus, now: float) -> None:
    expires_at = T0 + 10
    if state is S.PENDING:
        t = task(status=S.PENDING, eta=T0 + 100, expires_at=expires_at)
    else:
        t = task(expires_at=expires_at)
    await queue.enqueue([t])
    if state is S.RUNNING:
        assert [c.id for c in await claim(queue, T0)] == [t.id]
    assert await status(queue, t.id) is state
    expired = await queue.expire(now=now)
    if lifecycle.expires(state, expires_at, now):
        assert [(e.id, e.status) for e in expired] == [(t.id, S.EXPIRED)]
        assert await status(queue, t.id) is S.EXPIRED
    else:
        assert expired == []
        assert await status(queue, t.id) is state


# --- the dependency cascade ----------------------------------------------------------------------------
# (how the dependency ends, whether the dependent waits for another one too, dependent's eta)
CASCADE_CASES = [
    (S.SUCCEEDED, False, None),
    (S.SUCCEEDED, True, None),
    (S.SUCCEEDED, False, T0 + 100),
    (S.FAILED, False, None),
    (S.FAILED, True, None),
    (S.CANCELLED, False, None),
    (S.EXPIRED, False, None),
    (S.EXPIRED, True, None),
]


@pytest.mark.parametrize(("end", "other", "eta"), CASCADE_CASES)
async def test_dependency_cascade(
    queue: TaskQueue, end: TaskStatus, other: bool, eta: float | None
) -> None:
    dep = task(priority=1, expires_at=T0 + 10 if end is S.EXPIRED else None)
    blocker = task(status=S.PENDING, eta=T0 + 1000)  # never ends within the test
    child = task(status=S.PENDING, eta=eta)
    child.depends_on = (dep.id, blocker.id) if other else (dep.id,)
    grandchild = task(status=S.PENDING)
    grandchild.depends_on = (child.id,)
    await queue.enqueue([dep, blocker, child, grandchild])
    now = T0 + 20
    ended: list[tuple[Task, str]]
    released: list[Task] = []
    if end is S.EXPIRED:
        expired = await queue.expire(now=now)
        ended = [(e, "") for e in expired if e.id != dep.id]
    elif end is S.CANCELLED:
        await queue.cancel([dep.id], now=now)
        ended = []
    else:
        [c] = await claim(queue, T0, limit=1)
        assert c.id == dep.id
        fin = await queue.finish("w1", [(dep.id, end)], now=now)
        ended, released = fin.cancelled, fin.released
    fate = lifecycle.on_dependency_end(end, others_left=other)
    got = await status(queue, child.id)
    if fate is Cascade.CANCEL:
        assert got is S.CANCELLED
        assert await status(queue, grandchild.id) is S.CANCELLED  # transitively
        if end in (S.FAILED, S.EXPIRED):
            assert {t.id for t, _ in ended} == {child.id, grandchild.id}
    elif fate is Cascade.RELEASE:
        assert got is lifecycle.ready_status(eta, now)
        assert [t.id for t in released] == [child.id]
        assert await status(queue, grandchild.id) is S.PENDING
    else:
        assert got is S.PENDING
        assert released == []
        assert await status(queue, grandchild.id) is S.PENDING


# --- schedule slots ---------------------------------------------------------------------------------------
# (paused, the slot the firer read: as stored or another, the schedule exists)
SLOT_CASES = [
    (False, True, True),
    (True, True, True),
    (False, False, True),
    (False, True, False),
]


@pytest.mark.parametrize(("paused", "same_slot", "exists"), SLOT_CASES)
async def test_schedule_slot(queue: TaskQueue, paused: bool, same_slot: bool, exists: bool) -> None:
    slot = T0 + 60
    s = Schedule(id="s1", name="tick", payload=b"x", interval=60.0, next_run=slot, paused=paused,
                 created_at=T0)  # fmt: skip
    if exists:
        await queue.add_schedule(s)
    expected_slot = slot if same_slot else slot - 60
    t = task()
    won = await queue.fire_schedule(
        "s1", expected_next_run=expected_slot, next_run=slot + 60, now=slot, task=t
    )
    decision = lifecycle.slot_fires(s if exists else None, expected_slot)
    assert won is decision
    stored = {x.id: x for x in await queue.get_schedules()}.get("s1")
    if decision:
        after = lifecycle.fired(s, next_run=slot + 60, now=slot, task_id=t.id)
        assert stored is not None
        assert (stored.next_run, stored.last_run, stored.last_task_id, stored.paused) == (
            after.next_run, after.last_run, after.last_task_id, after.paused,
        )  # fmt: skip
        assert await status(queue, t.id) is S.QUEUED
        # the slot is taken: a second firer that read the same slot loses it
        again = await queue.fire_schedule(
            "s1", expected_next_run=slot, next_run=slot + 60, now=slot, task=task()
        )
        assert again is lifecycle.slot_fires(stored, slot) is False
    else:
        assert (await queue.statuses([t.id])) == {}
        if exists:
            assert stored is not None and (stored.next_run, stored.last_run) == (s.next_run, None)
