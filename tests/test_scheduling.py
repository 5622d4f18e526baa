"""Scheduling: pure slot arithmetic (no loop), then the Scheduler against real storage."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniq import ids
from omniq.errors import ConfigError
from omniq.models import Schedule, Task
from omniq.scheduling import (
    Scheduler,
    after_fire,
    default_schedule_name,
    describe_spec,
    due_slot,
    initial_run,
    local_timezone_name,
    next_run,
    schedule_row,
    validate_spec,
)
from omniq.storage.base import TaskQueue
from tests.helpers import examples

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.timezone.utc


def sched(**kw: object) -> Schedule:
    base: dict[str, object] = {"id": "s1", "name": "job", "payload": b"", "func_name": "mod.job"}
    base.update(kw)
    return Schedule(**base)  # type: ignore[arg-type]


def cron_sched(expr: str, tz: str = "UTC") -> Schedule:
    spec = validate_spec(cron=expr, timezone=tz)
    return sched(cron=spec.cron, timezone=spec.timezone)


def slots(schedule: Schedule, start: dt.datetime, n: int) -> list[dt.datetime]:
    """The next ``n`` slots after ``start``, as datetimes in ``start``'s zone."""
    out, t = [], start.timestamp()
    for _ in range(n):
        nxt = next_run(schedule, t)
        assert nxt is not None and nxt > t
        out.append(dt.datetime.fromtimestamp(nxt, start.tzinfo))
        t = nxt
    return out


# --- validate_spec ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"cron": "* * * * *", "interval": 5}, {"interval": 5, "at": 1.0}, {"timezone": "UTC"}],
)
def test_exactly_one_of_cron_interval_at(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"exactly one of cron=, interval= or at="):
        validate_spec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "expr",
    [
        "61 * * * *",
        "* * * *",
        "a b c d e",
        "0 0 30 2 *",
        "* * * * * * 2030",
        "@reboot",
        "",
        "*/0 * * * *",
    ],
)
def test_bad_cron_is_quoted_with_what_is_valid(expr: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_spec(cron=expr)
    msg = str(info.value)
    assert msg.startswith(f"cron={expr!r}")
    assert "5 fields" in msg and "seconds first" in msg
    assert isinstance(info.value, ValueError)


def test_cron_that_never_fires_says_so() -> None:
    with pytest.raises(ConfigError, match="never fires"):
        validate_spec(cron="0 0 30 2 *")


@pytest.mark.parametrize("expr", ["H * * * *", "R * * * *", "0 H(0-5) * * *", "r/5 * * * *"])
def test_hashed_and_random_fields_refused(expr: str) -> None:
    with pytest.raises(ConfigError, match=r"hashed \(H\) or random \(R\)"):
        validate_spec(cron=expr)


def test_cron_not_a_string() -> None:
    with pytest.raises(ConfigError, match=r"cron=5 is not a cron expression"):
        validate_spec(cron=5)  # type: ignore[arg-type]


def test_cron_normalized_and_aliases_expanded() -> None:
    assert validate_spec(cron="  */5   *  * * *", timezone="UTC").cron == "*/5 * * * *"
    assert validate_spec(cron="@daily", timezone="UTC").cron == "0 0 * * *"
    assert validate_spec(cron="@HOURLY", timezone="UTC").cron == "0 * * * *"
    assert validate_spec(cron="0 9 * * mon-fri", timezone="UTC").cron == "0 9 * * mon-fri"


def test_six_fields_have_seconds_first() -> None:
    s = cron_sched("*/10 * * * * *")
    start = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert [d.second for d in slots(s, start, 4)] == [10, 20, 30, 40]
    # "15 30 * * * *": second 15 of minute 30 of every hour
    s = cron_sched("15 30 * * * *")
    assert slots(s, start, 2) == [
        dt.datetime(2026, 1, 1, 12, 30, 15, tzinfo=UTC),
        dt.datetime(2026, 1, 1, 13, 30, 15, tzinfo=UTC),
    ]


def test_bad_timezone_is_named() -> None:
    with pytest.raises(ConfigError, match=r"timezone='Mars/Olympus' is not a known IANA"):
        validate_spec(cron="* * * * *", timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match=r"timezone=3 is not a time zone"):
        validate_spec(cron="* * * * *", timezone=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"timezone='UTC' does not apply to interval"):
        validate_spec(interval=5, timezone="UTC")


def test_timezone_accepts_zoneinfo() -> None:
    assert validate_spec(cron="* * * * *", timezone=BERLIN).timezone == "Europe/Berlin"


def test_default_timezone_is_the_local_zone_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert local_timezone_name() == "Asia/Tokyo"
    assert validate_spec(cron="0 9 * * *").timezone == "Asia/Tokyo"
    monkeypatch.setenv("TZ", ":Europe/Berlin")
    assert local_timezone_name() == "Europe/Berlin"
    monkeypatch.setenv("TZ", "Not/AZone")
    ZoneInfo(local_timezone_name())  # falls back to something valid


@pytest.mark.parametrize(
    ("value", "seconds"), [(30, 30.0), (0.2, 0.2), (dt.timedelta(minutes=2), 120.0)]
)
def test_interval_accepted(value: object, seconds: float) -> None:
    assert validate_spec(interval=value).interval == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", [0, -1, math.nan, math.inf, True, "30", dt.timedelta(0), dt.timedelta(seconds=-1)]
)
def test_interval_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^interval="):
        validate_spec(interval=value)  # type: ignore[arg-type]


def test_at_naive_is_local_aware_honoured_epoch_kept() -> None:
    naive = dt.datetime(2026, 11, 28, 12, 0)
    assert validate_spec(at=naive).at == naive.timestamp()
    aware = dt.datetime(2026, 11, 28, 12, 0, tzinfo=NEW_YORK)
    assert validate_spec(at=aware).at == dt.datetime(2026, 11, 28, 17, 0, tzinfo=UTC).timestamp()
    # a naive at with a timezone is wall time in that zone
    spec = validate_spec(at=naive, timezone="Europe/Berlin")
    assert spec.at == dt.datetime(2026, 11, 28, 11, 0, tzinfo=UTC).timestamp()
    assert spec.timezone == "Europe/Berlin"
    assert validate_spec(at=1_800_000_000).at == 1_800_000_000.0


@pytest.mark.parametrize("value", ["2026-01-01", True, math.nan, dt.date(2026, 1, 1)])
def test_at_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^at="):
        validate_spec(at=value)  # type: ignore[arg-type]


_FIELD_CHARS = "0123456789*/-,?LW#HR@ abcdefhijlmnorstuvwyz"
_NUM = st.one_of(st.integers(0, 12), st.integers(0, 70)).map(str)
_TOKEN = st.one_of(
    st.just("*"),
    _NUM,
    st.tuples(_NUM, _NUM).map("-".join),
    _NUM.map("*/{}".format),
    st.tuples(_NUM, _NUM, _NUM).map(lambda t: f"{t[0]}-{t[1]}/{t[2]}"),
    st.sampled_from(["L", "15W", "5#2", "mon-fri", "jan", "?", "L1", "sun-sat/2", "H", "R"]),
)
_CRONLIKE = st.lists(
    st.lists(_TOKEN, min_size=1, max_size=2).map(",".join), min_size=4, max_size=7
).map(" ".join)


@settings(max_examples=examples(500), deadline=None)
@given(
    st.one_of(
        _CRONLIKE,
        st.text(alphabet=_FIELD_CHARS, max_size=30),
        st.text(max_size=20),
    )
)
def test_random_cron_is_valid_or_config_error(expr: str) -> None:
    try:
        spec = validate_spec(cron=expr, timezone="Europe/Berlin")
    except ConfigError as exc:
        assert repr(expr) in str(exc)
        return
    s = sched(cron=spec.cron, timezone=spec.timezone)
    after = dt.datetime(2026, 3, 29, 1, 30, tzinfo=BERLIN).timestamp()
    nxt = next_run(s, after)
    assert nxt is None or nxt > after


# --- cron slots -----------------------------------------------------------------------------------


def test_cron_in_timezone() -> None:
    s = cron_sched("0 9 * * *", "America/New_York")
    start = dt.datetime(2026, 1, 15, 0, 0, tzinfo=UTC)
    first = next_run(s, start.timestamp())
    assert first == dt.datetime(2026, 1, 15, 14, 0, tzinfo=UTC).timestamp()  # EST = UTC-5
    summer = next_run(s, dt.datetime(2026, 7, 15, 0, 0, tzinfo=UTC).timestamp())
    assert summer == dt.datetime(2026, 7, 15, 13, 0, tzinfo=UTC).timestamp()  # EDT = UTC-4


def test_cron_next_is_strictly_after() -> None:
    s = cron_sched("*/5 * * * *")
    on_slot = dt.datetime(2026, 1, 1, 12, 5, tzinfo=UTC).timestamp()
    assert next_run(s, on_slot) == on_slot + 300
    assert next_run(s, on_slot - 0.001) == on_slot


def test_dst_spring_forward_berlin() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:xx does not exist
    daily = cron_sched("30 2 * * *", "Europe/Berlin")
    got = slots(daily, dt.datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN), 3)
    assert [d.isoformat() for d in got] == [
        "2026-03-29T03:00:00+02:00",  # the missing 02:30 runs at the transition
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    half_hourly = cron_sched("*/30 * * * *", "Europe/Berlin")
    got = slots(half_hourly, dt.datetime(2026, 3, 29, 1, 0, tzinfo=BERLIN), 4)
    assert [d.isoformat() for d in got] == [
        "2026-03-29T01:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:30:00+02:00",
        "2026-03-29T04:00:00+02:00",
    ]


def test_dst_fall_back_berlin_fixed_hour_runs_once() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:xx happens twice
    daily = cron_sched("30 2 * * *", "Europe/Berlin")
    got = slots(daily, dt.datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN), 3)
    assert [d.isoformat() for d in got] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]
    # starting inside the second pass does not run it again either
    second_pass = dt.datetime(2026, 10, 25, 2, 10, fold=1, tzinfo=BERLIN)
    assert next_run(daily, second_pass.timestamp()) == (
        dt.datetime(2026, 10, 26, 2, 30, tzinfo=BERLIN).timestamp()
    )


def test_dst_fall_back_berlin_wildcard_hour_keeps_real_cadence() -> None:
    hourly = cron_sched("0 * * * *", "Europe/Berlin")
    got = slots(hourly, dt.datetime(2026, 10, 25, 0, 30, tzinfo=BERLIN), 4)
    assert [d.isoformat() for d in got] == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    gaps = {b.timestamp() - a.timestamp() for a, b in itertools.pairwise(got)}
    assert gaps == {3600.0}


def test_dst_new_york_both_transitions() -> None:
    daily = cron_sched("30 1 * * *", "America/New_York")  # 01:xx repeats on 2026-11-01
    got = slots(daily, dt.datetime(2026, 10, 31, 12, 0, tzinfo=NEW_YORK), 2)
    assert [d.isoformat() for d in got] == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]
    daily = cron_sched("30 2 * * *", "America/New_York")  # 02:xx missing on 2026-03-08
    got = slots(daily, dt.datetime(2026, 3, 7, 12, 0, tzinfo=NEW_YORK), 2)
    assert [d.isoformat() for d in got] == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]


@settings(max_examples=examples(200), deadline=None)
@given(
    expr=st.sampled_from(
        ["*/7 * * * *", "0 * * * *", "30 2 * * *", "0 1-3 * * *", "*/20 2 * * *", "5 */2 * * *"]
    ),
    zone=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Sydney"]),
    offset=st.floats(min_value=-2 * 86400, max_value=2 * 86400),
)
def test_cron_slots_increase_and_fixed_hours_never_repeat_a_day(
    expr: str, zone: str, offset: float
) -> None:
    s = cron_sched(expr, zone)
    tz = ZoneInfo(zone)
    # around a transition of each zone in 2026
    pivot = {
        "Europe/Berlin": dt.datetime(2026, 10, 25, 2, 30, tzinfo=tz),
        "America/New_York": dt.datetime(2026, 11, 1, 1, 30, tzinfo=tz),
        "Australia/Sydney": dt.datetime(2026, 4, 5, 2, 30, tzinfo=tz),
    }[zone]
    got = slots(s, dt.datetime.fromtimestamp(pivot.timestamp() + offset, tz), 30)
    wall = [d.replace(tzinfo=None) for d in got]
    if not s.cron or s.cron.split(" ")[1].startswith("*"):
        return
    assert len(set(wall)) == len(wall)  # a fixed wall time never runs twice


# --- interval and one-shot ---------------------------------------------------------------------


def test_interval_slots_anchored_at_creation() -> None:
    s = sched(interval=0.3, created_at=1000.0)
    assert initial_run(s, 1000.0) == pytest.approx(1000.3)
    assert next_run(s, 999.0) == pytest.approx(1000.3)  # k >= 1: never the creation instant
    far = 1000.0 + 0.3 * 1_000_000
    assert next_run(s, far + 0.05) == pytest.approx(far + 0.3)
    # firing late does not drift the grid
    slot = initial_run(s, 1000.0)
    for _ in range(50):
        assert slot is not None
        slot = after_fire(s, slot, now=slot + 0.07)
    assert slot is not None
    k = (slot - 1000.0) / 0.3
    assert abs(k - round(k)) < 1e-6


@settings(max_examples=examples(300))
@given(
    anchor=st.floats(min_value=0, max_value=2e9),
    interval=st.floats(min_value=1e-3, max_value=1e6),
    delta=st.floats(min_value=-1e6, max_value=1e8),
)
def test_interval_next_is_first_grid_point_after(
    anchor: float, interval: float, delta: float
) -> None:
    s = sched(interval=interval, created_at=anchor)
    after = anchor + delta
    nxt = next_run(s, after)
    assert nxt is not None and nxt > after
    k = round((nxt - anchor) / interval)
    assert k >= 1
    assert k == 1 or anchor + (k - 1) * interval <= after


def test_one_shot() -> None:
    at = dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC).timestamp()
    s = sched(at=at)
    assert initial_run(s, at - 60) == at
    assert initial_run(s, at + 3600) == at  # past when added: fires at once, never dropped
    assert next_run(s, at - 1) == at
    assert next_run(s, at) is None
    assert after_fire(s, at, at + 0.01) is None
    fired = sched(at=at, last_run=at + 0.01)
    assert initial_run(fired, at - 60) is None  # resume after firing: nothing more
    assert next_run(fired, at - 60) is None


# --- due slots and missed slots -----------------------------------------------------------------


def test_due_slot() -> None:
    s = sched(interval=10.0, created_at=0.0, next_run=10.0)
    assert due_slot(s, 9.99) is None
    assert due_slot(s, 10.0) == 10.0
    assert due_slot(s, 55.0) == 10.0
    paused = sched(interval=10.0, created_at=0.0, next_run=10.0, paused=True)
    assert due_slot(paused, 55.0) is None
    assert due_slot(sched(at=5.0, next_run=None), 100.0) is None


def test_missed_interval_slots_fire_once() -> None:
    s = sched(interval=10.0, created_at=0.0, next_run=10.0)
    now = 95.0  # slots 10, 20, ..., 90 all missed
    fired = []
    while (slot := due_slot(s, now)) is not None:
        fired.append(slot)
        s.next_run = after_fire(s, slot, now)
    assert fired == [10.0]
    assert s.next_run == 100.0  # back on the grid, after now


def test_missed_cron_slots_fire_once() -> None:
    s = cron_sched("*/5 * * * *")
    slot = dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp()
    s.next_run = slot
    now = slot + 3600 + 42  # a kernel asleep for an hour
    fired = []
    while (due := due_slot(s, now)) is not None:
        fired.append(due)
        s.next_run = after_fire(s, due, now)
    assert fired == [slot]
    assert s.next_run == slot + 3600 + 300


def test_on_time_fire_moves_to_next_slot() -> None:
    s = sched(interval=10.0, created_at=0.0, next_run=10.0)
    assert after_fire(s, 10.0, 10.002) == 20.0
    c = cron_sched("* * * * *")
    assert after_fire(c, 600.0, 600.004) == 660.0


# --- display ----------------------------------------------------------------------------------


def test_describe_spec() -> None:
    assert describe_spec(cron_sched("*/5 * * * *", "UTC")) == "cron */5 * * * * (UTC)"
    assert describe_spec(sched(interval=30.0)) == "every 30s"
    assert describe_spec(sched(interval=0.2)) == "every 0.2s"
    assert describe_spec(sched(interval=90.0)) == "every 1m30s"
    assert describe_spec(sched(interval=7200.0)) == "every 2h"
    assert describe_spec(sched(interval=86400.0)) == "every 1d"
    local_noon = dt.datetime(2026, 11, 28, 12, 0).timestamp()
    assert describe_spec(sched(at=local_noon)) == "at 2026-11-28 12:00"
    berlin = validate_spec(at=dt.datetime(2026, 11, 28, 12, 0, 30), timezone="Europe/Berlin")
    assert describe_spec(sched(at=berlin.at, timezone=berlin.timezone)) == (
        "at 2026-11-28 12:00:30 (Europe/Berlin)"
    )


def test_schedule_row() -> None:
    s = cron_sched("0 9 * * *", "Europe/Berlin")
    s.next_run = dt.datetime(2026, 6, 1, 9, 0, tzinfo=BERLIN).timestamp()
    s.last_run = s.next_run - 86400
    row = schedule_row(s)
    assert set(row) == {"id", "name", "func", "spec", "next_run", "last_run", "paused", "queue", "last_task_id"}
    assert row["name"] == "job" and row["func"] == "mod.job" and row["queue"] == "default"
    assert row["spec"] == "cron 0 9 * * * (Europe/Berlin)"
    assert row["next_run"] == dt.datetime(2026, 6, 1, 9, 0, tzinfo=BERLIN)
    assert row["next_run"].utcoffset() == dt.timedelta(hours=2)  # shown in the schedule's zone
    assert row["last_run"] == dt.datetime(2026, 5, 31, 9, 0, tzinfo=BERLIN)
    s.paused = True
    assert schedule_row(s)["next_run"] is None and schedule_row(s)["paused"] is True


def test_default_schedule_name() -> None:
    def report() -> None: ...

    assert default_schedule_name(report) == "test_default_schedule_name.<locals>.report"
    a = [lambda: 1 for _ in range(2)]
    b = lambda: 2  # noqa: E731
    assert default_schedule_name(a[0]) == default_schedule_name(a[1])  # same code: same name
    assert default_schedule_name(a[0]) != default_schedule_name(b)
    assert "<lambda>#" in default_schedule_name(b)


# --- runtime: Scheduler against the real backends -------------------------------------------------
# No storage mocks: every test runs on memory:// and on a SQLite file.


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/s.db"


def open_queue(url: str) -> TaskQueue:
    from omniq.storage.urls import open_backends

    queue, _results, _events = open_backends(url, None, None)
    return queue


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[TaskQueue]:
    queue = open_queue(url)
    await queue.connect()
    try:
        yield queue
    finally:
        await queue.close()


def make_task(schedule: Schedule, slot: float, by: str = "") -> Task:
    """What the orchestrator does, minus serialization: the slot (and who fired it) go into
    metadata, so counts come from storage rather than from in-memory counters."""
    return Task(
        id=ids.new_id(),
        payload=schedule.payload,
        name=schedule.func_name,
        queue=schedule.queue,
        priority=schedule.priority,
        created_at=time.time(),
        metadata={"schedule": schedule.id, "slot": slot, "by": by},
    )


def tagged(by: str) -> Callable[[Schedule, float], Task]:
    return lambda schedule, slot: make_task(schedule, slot, by)


async def drain(queue: TaskQueue) -> list[Task]:
    """Every task the schedulers enqueued so far (claimed, so the next drain sees only new)."""
    return await queue.claim("test-counter", queues=None, limit=100_000, lease=600, now=time.time())


@asynccontextmanager
async def running(*schedulers: Scheduler) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        for s in schedulers:
            await tg.start(s.run)
        yield
        tg.cancel_scope.cancel()


def lags(tasks: list[Task]) -> list[float]:
    return sorted(t.created_at - t.metadata["slot"] for t in tasks)


@pytest.mark.anyio
async def test_interval_fires_about_n_times(url: str) -> None:
    async with connected(url) as queue:
        sch = Scheduler(queue, make_task)
        async with running(sch):
            sid = await sch.add(payload=b"p", func_name="mod.tick", interval=0.2)
            await anyio.sleep(2.1)  # slots at +0.2 ... +2.0: ten
        tasks = await drain(queue)
        created = (await sch.get(sid)).created_at  # type: ignore[union-attr]
    slots = sorted(t.metadata["slot"] for t in tasks)
    assert 9 <= len(tasks) <= 11, slots
    assert len(set(slots)) == len(slots)
    for slot in slots:  # on the grid anchored at creation
        k = (slot - created) / 0.2
        assert abs(k - round(k)) < 1e-6
    assert all(t.metadata["schedule"] == sid and t.payload == b"p" for t in tasks)
    assert max(lags(tasks)) < 0.5
    assert sch.fired == len(tasks)


@pytest.mark.anyio
async def test_fires_close_to_its_slot_and_wake_is_immediate(url: str) -> None:
    async with connected(url) as queue:
        # a poll interval of a minute: only the timer and wake() can make it fire in time
        sch = Scheduler(queue, make_task, poll_interval=60)
        async with running(sch):
            await anyio.sleep(0.05)  # the loop is now asleep for a minute
            await sch.add(payload=b"p", func_name="mod.once", at=time.time() + 0.3)
            await anyio.sleep(0.6)
        tasks = await drain(queue)
    assert len(tasks) == 1
    assert 0 <= lags(tasks)[0] < 0.5


@pytest.mark.anyio
async def test_one_shot_fires_once_and_is_done(url: str) -> None:
    async with connected(url) as queue:
        sch = Scheduler(queue, make_task)
        async with running(sch):
            sid = await sch.add(payload=b"p", func_name="mod.once", at=time.time() + 0.1)
            await anyio.sleep(0.5)
            # re-running the notebook cell (same name, same time) does not fire it again
            await sch.add(payload=b"p", func_name="mod.once", at=(await sch.get(sid)).at)  # type: ignore[union-attr]
            await anyio.sleep(0.3)
        tasks = await drain(queue)
        done = await sch.get(sid)
    assert len(tasks) == 1
    assert done is not None and done.next_run is None and done.last_run is not None
    assert done.last_task_id == tasks[0].id


async def collect(queue: TaskQueue, n: int, timeout: float = 5.0) -> list[Task]:
    """Drain until ``n`` tasks arrived (or ``timeout``): robust on a loaded CI machine."""
    got: list[Task] = []
    with anyio.move_on_after(timeout):
        while len(got) < n:
            got += await drain(queue)
            await anyio.sleep(0.02)
    return got


@pytest.mark.anyio
async def test_pause_stops_and_resume_restarts(url: str) -> None:
    async with connected(url) as queue:
        sch = Scheduler(queue, make_task)
        async with running(sch):
            sid = await sch.add(payload=b"p", func_name="mod.tick", interval=0.1)
            assert len(await collect(queue, 3)) >= 3
            assert await sch.pause(sid) is True
            paused_at = time.time()
            assert await sch.pause(sid) is False  # already paused
            await anyio.sleep(0.6)  # six slots pass
            during = await drain(queue)
            assert await sch.resume("mod.tick") is True  # by name works too
            resumed_at = time.time()
            after = await collect(queue, 3)
    assert all(t.metadata["slot"] <= paused_at for t in during)  # at most one in flight
    assert len(during) <= 1
    # resumed: fires again, from the next slot after resume (the paused slots are not replayed)
    assert len(after) >= 3
    assert all(t.metadata["slot"] > resumed_at for t in after)


@pytest.mark.anyio
async def test_missed_slots_fire_once_at_runtime(url: str) -> None:
    async with connected(url) as queue:
        sch = Scheduler(queue, make_task)
        sid = await sch.add(payload=b"p", func_name="mod.tick", interval=0.1)
        await anyio.sleep(0.75)  # nobody running: seven slots pass
        await sch.tick()
        tasks = await drain(queue)
        s = await sch.get(sid)
    assert len(tasks) == 1
    assert s is not None and s.next_run is not None and s.next_run > time.time() - 0.1


@pytest.mark.anyio
async def test_same_name_replaces(url: str) -> None:
    async with connected(url) as queue:
        sch = Scheduler(queue, make_task)
        a = await sch.add(payload=b"v1", func_name="mod.f", interval=60)
        first = await sch.get(a)
        b = await sch.add(payload=b"v2", func_name="mod.f", interval=60)  # cell re-run
        assert a == b
        again = await sch.get(a)
        assert again is not None and first is not None
        assert again.payload == b"v2" and again.next_run == first.next_run
        await sch.add(payload=b"v3", func_name="mod.f", cron="*/5 * * * *", timezone="UTC")
        changed = await sch.get(a)
        assert changed is not None and changed.cron == "*/5 * * * *" and changed.interval is None
        c = await sch.add(payload=b"v3", func_name="mod.f", name="other", interval=60)
        assert c != a
        rows = await sch.list()
        assert {r["name"] for r in rows} == {"other", "mod.f"}
        assert all(isinstance(r["next_run"], dt.datetime) for r in rows)
        assert len(await sch.schedules()) == 2
        assert await sch.delete("other") is True
        assert await sch.delete("other") is False
        with pytest.raises(ConfigError, match=r"no schedule with id or name 'nope'.*'mod.f'"):
            await sch.pause("nope")


@pytest.mark.anyio
async def test_bad_arguments_are_config_errors(url: str) -> None:
    async with connected(url) as queue:
        sch = Scheduler(queue, make_task)
        with pytest.raises(ConfigError, match=r"cron='\* \* \*'"):
            await sch.add(payload=b"p", func_name="f", cron="* * *")
        with pytest.raises(ConfigError, match=r"queue=''"):
            await sch.add(payload=b"p", func_name="f", interval=1, queue="")
        with pytest.raises(ConfigError, match=r"priority='1'"):
            await sch.add(payload=b"p", func_name="f", interval=1, priority="1")  # type: ignore[arg-type]
        assert await sch.schedules() == []


@pytest.mark.anyio
async def test_a_broken_schedule_does_not_stop_the_others(url: str) -> None:
    def picky(schedule: Schedule, slot: float) -> Task:
        if schedule.name == "bad":
            raise RuntimeError("cannot build")
        return make_task(schedule, slot)

    async with connected(url) as queue:
        sch = Scheduler(queue, picky)
        async with running(sch):
            await sch.add(payload=b"p", func_name="bad", interval=0.1)
            await sch.add(payload=b"p", func_name="good", interval=0.1)
            await anyio.sleep(0.55)
        tasks = await drain(queue)
    assert 4 <= len(tasks) <= 6
    assert {t.name for t in tasks} == {"good"}


@pytest.mark.anyio
async def test_two_schedulers_on_one_sqlite_file_fire_each_slot_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    async with connected(url) as qa, connected(url) as qb:
        a, b = Scheduler(qa, tagged("a")), Scheduler(qb, tagged("b"))
        async with running(a, b):
            await a.add(payload=b"p", func_name="mod.tick", interval=0.1)
            await anyio.sleep(2.05)
        tasks = await drain(qa)
    per_slot = Counter(t.metadata["slot"] for t in tasks)
    assert 18 <= len(per_slot) <= 22
    assert set(per_slot.values()) == {1}
    # both really competed (each slot is a race for the write lock; ~20 races)
    assert {t.metadata["by"] for t in tasks} == {"a", "b"}


@pytest.mark.anyio
async def test_changes_from_another_instance_are_seen_within_the_poll_interval(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    async with connected(url) as qa, connected(url) as qb:
        runner = Scheduler(qa, make_task, poll_interval=0.3)
        other = Scheduler(qb, make_task)  # another process's view: never woken by `runner`
        async with running(runner):
            await anyio.sleep(0.1)
            sid = await other.add(payload=b"p", func_name="mod.tick", interval=0.1)
            await anyio.sleep(1.0)
            assert runner.fired >= 4
            await other.pause(sid)
            await anyio.sleep(0.35)  # one poll interval (+ a slot in flight)
            fired = runner.fired
            await anyio.sleep(0.5)
            assert runner.fired == fired


_CHILD = """
import sys, time, anyio
from omniq import ids
from omniq.models import Task
from omniq.scheduling import Scheduler
from omniq.storage.urls import open_backends

def make_task(schedule, slot):
    return Task(id=ids.new_id(), payload=schedule.payload, name=schedule.func_name,
                created_at=time.time(), metadata={"schedule": schedule.id, "slot": slot,
                "by": "child"})

async def main(url, until):
    queue, _, _ = open_backends(url, None, None)
    await queue.connect()
    sch = Scheduler(queue, make_task)
    with anyio.move_on_after(until - time.time()):
        await sch.run()
    await queue.close()

anyio.run(main, sys.argv[1], float(sys.argv[2]))
"""


@pytest.mark.anyio
async def test_two_processes_fire_each_slot_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    async with connected(url) as queue:
        here = Scheduler(queue, tagged("parent"))
        await here.add(payload=b"p", func_name="mod.tick", interval=0.1)
        until = time.time() + 4.0
        async with await anyio.open_process(
            [sys.executable, "-c", _CHILD, url, str(until)], stdout=None, stderr=None
        ) as child:
            async with running(here):
                await anyio.sleep(until - time.time())
            assert await child.wait() == 0
        tasks = await drain(queue)
    per_slot = Counter(t.metadata["slot"] for t in tasks)
    assert set(per_slot.values()) == {1}, [s for s, n in per_slot.items() if n > 1]
    assert 35 <= len(per_slot) <= 41
    # the child (up after its imports, ~0.5 s) won some slots: the race was real
    assert {t.metadata["by"] for t in tasks} == {"parent", "child"}


def test_six_fields_written_seconds_last_are_refused_with_the_seconds_first_form() -> None:
    """croniter's own six-field form puts seconds last: '* * * * * */2' meant every 2 s, and
    was read as every second on every other weekday."""
    with pytest.raises(ConfigError, match=r"seconds FIRST.*'\*/2 \* \* \* \* \*'"):
        validate_spec(cron="* * * * * */2")
    assert validate_spec(cron="*/2 * * * * *").cron == "*/2 * * * * *"  # every 2 seconds
    assert validate_spec(cron="0 */2 * * * 1-5").cron == "0 */2 * * * 1-5"
