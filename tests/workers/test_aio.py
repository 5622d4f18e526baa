"""The async runner: slots gate prefetched tasks; a waiting task can be cancelled or handed back."""

from __future__ import annotations

import time

from omniq import OmniQ

from .. import helpers


def test_prefetched_tasks_wait_for_a_slot_and_can_be_cancelled_there(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/a.db", worker="async", concurrency=1) as oq:
        first = oq.submit(helpers.sleep_return, 0.5, "first")
        waiting = [oq.submit(helpers.sleep_return, 0.01, i) for i in range(3)]
        deadline = time.monotonic() + 10
        while oq.status(waiting[1].id) != "running" and time.monotonic() < deadline:
            if oq.core.worker is not None and waiting[1].id in oq.core.worker.runner.held():
                break
            time.sleep(0.01)
        assert oq.cancel(waiting[1].id)
        assert first.result(timeout=30) == "first"
        assert waiting[1].get(timeout=30).status == "cancelled"
        assert [waiting[i].result(timeout=30) for i in (0, 2)] == [0, 2]


def test_a_graceful_stop_hands_back_what_has_not_started(tmp_path):
    url = f"sqlite:///{tmp_path}/b.db"
    with OmniQ(tasks=url, worker="async", concurrency=1) as oq:
        ids = [oq.enqueue(helpers.sleep_return, args=(0.2, i)) for i in range(5)]
        deadline = time.monotonic() + 10
        while oq.status(ids[0]) != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        oq.close(drain=False)  # one runs to its end; the prefetched rest go back to the queue
    with OmniQ(tasks=url, worker="thread", concurrency=2) as again:
        assert [again.get_result(t, wait=True, timeout=30).value for t in ids] == [0, 1, 2, 3, 4]
