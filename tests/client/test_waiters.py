"""The pickup loop: results made elsewhere reach this instance's waiters, without reading the
result store over and over for tasks its own workers will report."""

from __future__ import annotations

import threading
import time

import pytest

from omniq import OmniQ
from omniq.errors import TaskCancelled


def block(gate: str) -> str:
    import os
    import time

    while not os.path.exists(gate):
        time.sleep(0.01)
    return "done"


def value(x: int) -> int:
    return x


def test_a_task_served_here_and_cancelled_by_another_process_still_resolves(tmp_path) -> None:
    """The pickup loop leaves the tasks this instance serves to its own workers, but still
    looks them up now and then: another process may cancel them (omniq cancel)."""
    db, gate = f"sqlite:///{tmp_path}/q.db", tmp_path / "gate"
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        busy = oq.submit(block, str(gate))  # holds the only slot
        *ahead, waiting = oq.map(value, range(50))  # queued behind it, served here
        oq.flush()
        with OmniQ(tasks=db, concurrency=0) as other:
            assert other.status(waiting.id).name == "QUEUED"  # not taken by the worker yet
            assert other.cancel(waiting.id)
        with pytest.raises(TaskCancelled):
            waiting.result(timeout=30)
        gate.touch()
        assert busy.result(timeout=30) == "done"
        assert [h.result(timeout=30) for h in ahead] == list(range(49))


def test_tasks_served_here_are_not_looked_up_on_every_pass(tmp_path) -> None:
    """With no worker elsewhere, the result store is not read for queued tasks this
    instance's worker will run and report (it was, every 50-200 ms, for the whole backlog)."""
    gate = tmp_path / "gate"
    with OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", worker="thread", concurrency=1) as oq:
        results = oq.core.session.results
        asked: list[int] = []
        real = results.get_results
        lock = threading.Lock()

        async def counting(ids):  # the real store, counted
            with lock:
                asked.append(len(ids))
            return await real(ids)

        results.get_results = counting  # type: ignore[method-assign]
        busy = oq.submit(block, str(gate))
        backlog = oq.map(value, range(500))
        oq.flush()
        time.sleep(1.0)  # many pickup passes; the backlog waits behind the busy slot
        looked = sum(asked)
        gate.touch()
        assert busy.result(timeout=30) == "done"
        assert [h.result(timeout=60) for h in backlog] == list(range(500))
    assert looked <= 2 * 501, f"the backlog was looked up {looked} times in a second"
