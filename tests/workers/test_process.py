"""Process workers: owned children, replaced when they die, killed on timeout or cancel."""

from __future__ import annotations

import os
import signal
import sys
import time

from omniq import OmniQ, TaskStatus

from .. import helpers
from .common import cancel_running
from .common import runner as _runner
from .common import wait_until as _wait_until


def test_children_are_spawned_not_forked_and_run_omniq_entry_point(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/p.db", worker="process", concurrency=2) as oq:
        pids = _runner(oq).pids()
        assert len(pids) == 2 and os.getpid() not in pids
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            assert b"omniq.workers.child" in argv
        assert sorted(set(h.result(30) for h in oq.map(helpers.pid, range(40)))) != []


def test_child_killed_from_outside_is_replaced_and_its_task_delivered_again(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/k.db", worker="process", concurrency=1) as oq:
        marker = tmp_path / "started"
        h = oq.submit(helpers.touch_then_sleep, str(marker), 3.0)
        assert _wait_until(marker.exists)
        (victim,) = _runner(oq).pids()
        os.kill(victim, signal.SIGKILL)
        assert h.result(timeout=60) == 3.0  # second delivery finished it
        assert victim not in _runner(oq).pids()
        types = [e.type for e in oq.events(task_id=h.id)]
        assert "requeued" in types and types[-1] == "succeeded"


def test_cancel_running_task_terminates_its_child(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/c.db", worker="process", concurrency=1) as oq:
        marker = tmp_path / "started"
        h = oq.submit(helpers.touch_then_sleep, str(marker), 60)
        assert _wait_until(marker.exists)
        (child,) = _runner(oq).pids()
        cancel_running(h, within=20)
        assert _wait_until(lambda: child not in _runner(oq).pids())
        assert oq.submit(helpers.square, 3).result(30) == 9


def test_close_without_drain_gives_unstarted_tasks_back(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    oq = OmniQ(tasks=url, worker="process", concurrency=1)
    hs = [oq.submit(helpers.sleep_return, 0.2, i) for i in range(20)]
    oq.flush()
    time.sleep(0.5)
    oq.close(drain=False)
    with OmniQ(tasks=url, concurrency=0) as probe:
        st = [probe.status(h.id) for h in hs]
    assert TaskStatus.RUNNING not in st  # nothing left leased by a closed instance
    assert st.count(TaskStatus.QUEUED) >= 10
    with OmniQ(tasks=url, worker="process", concurrency=2) as oq2:
        values = [oq2.get_result(h.id, wait=True, timeout=60).value for h in hs]
    assert values == list(range(20))


def test_exit_drains_submitted_tasks(tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    with OmniQ(tasks=url, worker="process", concurrency=2) as oq:
        hs = [oq.submit(helpers.sleep_return, 0.05, i) for i in range(10)]
    assert all(h.done() for h in hs)
    assert [h.result() for h in hs] == list(range(10))


def test_prefetch_follows_task_duration(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/f.db", worker="process", concurrency=1) as oq:
        [h.result(30) for h in oq.map(helpers.square, range(300))]
        assert _runner(oq)._prefetch() > 2  # quick tasks: batches in flight
        [h.result(30) for h in oq.map(helpers.sleep_return, [0.1] * 3, )]
        assert _runner(oq)._prefetch() <= 2  # slow tasks: no queue behind a running one


def test_task_reading_stdin_gets_eof_not_protocol_frames(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/i.db", worker="process", concurrency=1) as oq:
        h = oq.submit(lambda: sys.stdin.read())  # before: read the next frames meant for the child
        assert h.result(30) == ""
        assert oq.submit(helpers.square, 4).result(30) == 16
