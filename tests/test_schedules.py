"""Schedules through the public API, on a SQLite file shared by instances and processes.

A fired slot becomes a task whose metadata is ``{"schedule": id, "slot": epoch}``; tests find
those tasks through the event log (``started``) and their results, and count them per slot.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from omniq import OmniQ, TaskResult, TaskStatus
from omniq.errors import ConfigError

from .workers import common

REPO = Path(__file__).resolve().parent.parent


def tick(label: Any = None) -> Any:
    return label


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/s.db"


def fired(oq: OmniQ, sid: str) -> list[TaskResult]:
    """Finished tasks of schedule ``sid``, by slot."""
    out = []
    for tid in dict.fromkeys(e.task_id for e in oq.events(types=["started"])):
        r = oq.get_result(tid)
        if r is not None and r.metadata.get("schedule") == sid:
            out.append(r)
    return sorted(out, key=lambda r: r.metadata["slot"])


def slots(results: list[TaskResult]) -> list[float]:
    return [r.metadata["slot"] for r in results]


wait_for = functools.partial(common.wait_for, timeout=10.0, step=0.05)  # schedules tick every 50 ms


def assert_once_per_slot(found: list[TaskResult]) -> None:
    dupes = {s: n for s, n in Counter(slots(found)).items() if n > 1}
    assert not dupes, f"slots fired more than once: {dupes}"


def test_interval_schedule_fires_repeatedly_on_its_slots(db: str) -> None:
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        t0 = time.time()
        sid = oq.schedule(tick, interval=0.2, args=("x",), name="every-200ms")
        found = wait_for(lambda: (f := fired(oq, sid)) and len(f) >= 5 and f, what="5 runs")
        assert all(r.status is TaskStatus.SUCCEEDED and r.value == "x" for r in found)
        assert_once_per_slot(found)
        s = slots(found)
        assert s[0] == pytest.approx(t0 + 0.2, abs=0.1)  # first slot one interval after creation
        steps = [b - a for a, b in itertools.pairwise(s)]
        assert all(st == pytest.approx(0.2, abs=1e-6) for st in steps), steps  # on the grid, no drift
        lags = [r.started_at - r.metadata["slot"] for r in found]
        assert all(0 <= lag < 0.3 for lag in lags), lags
        (row,) = oq.schedules()
        assert row["id"] == sid and row["name"] == "every-200ms" and row["paused"] is False
        assert row["spec"] == "every 0.2s"
        nxt = row["next_run"]
        assert isinstance(nxt, dt.datetime) and nxt.tzinfo is not None
        assert -0.05 < nxt.timestamp() - time.time() <= 0.25
        assert row["last_run"] is not None and row["last_run"] <= nxt


def test_a_one_shot_schedule_fires_once(db: str) -> None:
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        at = time.time() + 0.3
        sid = oq.schedule(tick, at=at, args=("once",), name="one-shot")
        (r,) = wait_for(lambda: fired(oq, sid), what="the one-shot")
        assert r.value == "once" and r.metadata["slot"] == pytest.approx(at)
        time.sleep(0.5)
        assert len(fired(oq, sid)) == 1
        (row,) = oq.schedules()
        assert row["next_run"] is None and row["last_run"] is not None


def test_pause_stops_firing_and_resume_restarts_it(db: str) -> None:
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        sid = oq.schedule(tick, interval=0.2, name="pausable")
        wait_for(lambda: len(fired(oq, sid)) >= 2, what="2 runs")
        assert oq.pause_schedule(sid) is True
        assert oq.pause_schedule(sid) is False  # already paused
        paused_at = time.time()
        (row,) = oq.schedules()
        assert row["paused"] is True and row["next_run"] is None
        time.sleep(0.3)  # a slot being fired as we paused may still finish
        before = len(fired(oq, sid))
        time.sleep(0.8)  # four slots pass
        assert len(fired(oq, sid)) == before
        assert oq.resume_schedule(sid) is True
        assert oq.resume_schedule(sid) is False
        resumed_at = time.time()
        (row,) = oq.schedules()
        assert row["paused"] is False and row["next_run"].timestamp() > resumed_at - 0.01
        found = wait_for(lambda: (f := fired(oq, sid)) and len(f) >= before + 2 and f, what="runs after resume")
        assert_once_per_slot(found)
        # the slots that passed while paused were not replayed
        assert not [s for s in slots(found) if paused_at + 0.2 < s < resumed_at]
        with pytest.raises(ConfigError, match="no-such-schedule"):
            oq.pause_schedule("no-such-schedule")


def test_a_bad_cron_is_refused_with_the_expression_quoted(db: str) -> None:
    with OmniQ(tasks=db, concurrency=0) as oq:
        for bad in ("61 * * * *", "* * *", "*/5 * * * * * *", "0 0 30 2 *", "every minute"):
            with pytest.raises(ConfigError) as ei:
                oq.schedule(tick, cron=bad)
            assert repr(bad) in str(ei.value), str(ei.value)
        with pytest.raises(ConfigError, match="interval"):
            oq.schedule(tick, interval=-1)
        with pytest.raises(ConfigError, match="exactly one"):
            oq.schedule(tick, cron="* * * * *", interval=5)
        assert oq.schedules() == []
        sid = oq.schedule(tick, cron="*/5 * * * *", timezone="UTC", name="good")
        (row,) = oq.schedules()
        assert row["id"] == sid and row["spec"] == "cron */5 * * * * (UTC)"
        assert row["next_run"].minute % 5 == 0 and row["next_run"].second == 0


def test_scheduled_tasks_have_the_lifecycle_events_of_any_task(db: str) -> None:
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        sid = oq.schedule(tick, interval=0.2, name="evented")
        (r, *_) = wait_for(lambda: fired(oq, sid), what="a run")
        time.sleep(0.1)
        types = [str(e.type) for e in oq.events(task_id=r.task_id)]
        assert types == ["enqueued", "started", "succeeded"], types


def test_two_instances_on_one_file_fire_each_slot_once(db: str) -> None:
    with OmniQ(tasks=db, worker="thread", concurrency=1) as a, \
            OmniQ(tasks=db, worker="thread", concurrency=1) as b:
        sid = a.schedule(tick, interval=0.1, name="shared")
        time.sleep(2.6)  # b's scheduler reads storage within a second, then both race each slot
        a.pause_schedule(sid)
        time.sleep(0.3)
        found = fired(a, sid)
        assert found == fired(b, sid)
        assert_once_per_slot(found)
        assert len(found) >= 18, len(found)  # ~25 slots; none lost to the race either
        assert {r.worker for r in found} <= {w["id"] for w in a.health()["workers"]}


_OTHER_PROCESS = textwrap.dedent(
    """
    import sys, time
    from omniq import OmniQ
    with OmniQ(tasks=sys.argv[1], concurrency=0) as oq:
        print("ready", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def test_an_instance_in_another_process_does_not_fire_a_slot_twice(db: str) -> None:
    other = subprocess.Popen(
        [sys.executable, "-c", _OTHER_PROCESS, db, "3.5"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
            sid = oq.schedule(tick, interval=0.1, name="cross-process")
            time.sleep(2.5)
            oq.pause_schedule(sid)
            time.sleep(0.3)
            found = fired(oq, sid)
        assert_once_per_slot(found)
        assert len(found) >= 16, len(found)
    finally:
        _, err = other.communicate(timeout=30)
    assert other.returncode == 0, err


def test_missed_slots_fire_once_on_restart_not_once_each(db: str) -> None:
    with OmniQ(tasks=db, concurrency=0) as oq:
        sid = oq.schedule(tick, interval=0.3, name="missed")
    time.sleep(1.6)  # five slots pass with nobody running
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        reopened = time.time()
        wait_for(lambda: fired(oq, sid), what="the catch-up run")
        time.sleep(0.75)  # the regular slots after it: two more
        found = fired(oq, sid)
    assert_once_per_slot(found)
    catch_up = [s for s in slots(found) if s < reopened]
    assert len(catch_up) == 1, slots(found)
    assert 2 <= len(found) - 1 <= 3, slots(found)
    assert all(s > reopened for s in slots(found)[1:])
