"""The progress widget's model outside a kernel, its throttling, and the text fallback.

ipywidgets objects can be created without a kernel (their comms are inert), so the widget's
state is read straight off the objects. Tasks run on real OmniQ instances (SQLite, threads).
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import threading
import time

import pytest

from omniq import OmniQ
from omniq.models import ErrorInfo, TaskResult, TaskStatus
from omniq.notebook.widgets import MAX_FAILURES_SHOWN, Progress, in_kernel, progress
from omniq.progress import Throttle, Tracker

pytest.importorskip("ipywidgets")


def ok(i):
    return i


def bad_every_third(i):
    if i % 3 == 0:
        raise ValueError(f"point {i} is bad")
    return i


def boom(i):
    raise KeyError(i)


def nap(seconds):
    time.sleep(seconds)
    return seconds


@pytest.fixture
def oq(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/w.db", worker="thread", concurrency=4) as q:
        yield q


def _until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_no_kernel_here():
    assert in_kernel() is False


def test_map_group_ends_green_with_counts(oq):
    hs = oq.map(ok, range(50))
    p = Progress(oq, hs, title="squares", mode="widget")
    assert p.mode == "widget" and p.bar.max == 50 and p.label.value == "squares"
    oq.gather(hs, timeout=30)
    assert p.finalize() is p
    assert p.bar.value == 50 and p.bar.bar_style == "success"
    text = p.counts.value
    assert "50/50" in text and "done 50" in text and "failed 0" in text and "running 0" in text
    assert "ETA" not in text and "elapsed" in text
    assert p.failures.layout.display == "none" and p.failures.children == ()
    assert "50/50" in repr(p)


def test_failures_are_listed_with_tracebacks(oq):
    sw = oq.sweep(bad_every_third, {"i": range(12)}, name="w")
    p = sw.progress(mode="widget")
    assert progress(sw) is p  # one widget per sweep
    sw.wait(30)
    p.finalize()
    assert p.bar.value == 12 and p.bar.max == 12 and p.bar.bar_style == "danger"
    assert "done 8" in p.counts.value and "failed 4" in p.counts.value
    assert p.failures.layout.display == ""
    assert len(p.failures.children) == 4
    assert p.failures.titles[0] == "i=0 — ValueError: point 0 is bad"
    tb = p.failures.children[0].value
    assert "Traceback" in tb and "in bad_every_third" in tb and "ValueError: point 0 is bad" in tb
    assert p.failures_note.layout.display == "none"


def test_failures_shown_are_capped(oq):
    hs = oq.map(boom, range(MAX_FAILURES_SHOWN + 5))
    p = Progress(oq, hs, title="boom", mode="widget")
    for h in hs:
        h.get(30)
    p.finalize()
    assert len(p.failures.children) == MAX_FAILURES_SHOWN
    assert p.failures.titles[0].endswith("KeyError: 0")
    assert "5 more" in p.failures_note.value and p.failures_note.layout.display == ""


def test_single_handle_and_factory(oq):
    h = oq.submit(ok, 7)
    p = progress(h, mode="widget")
    assert p.title == f"task {h.id}" and p.bar.max == 1
    h.result(30)
    p.finalize()
    assert p.bar.value == 1 and p.bar.bar_style == "success"
    group = progress(oq.map(ok, range(3)), mode="widget", total=10)
    assert group.title == "3 tasks" and group.bar.max == 10


def test_updates_are_throttled_and_the_last_state_lands(oq):
    n = 400
    hs = oq.map(nap, [0.002] * n)
    t0 = time.monotonic()
    p = Progress(oq, hs, mode="widget", interval=0.1)
    for h in hs:
        h.get(60)
    elapsed = time.monotonic() - t0
    # no finalize(): the trailing update alone must bring the final state
    assert _until(lambda: p.bar.value == n and p.bar.bar_style == "success", timeout=2)
    time.sleep(0.3)
    total_time = time.monotonic() - t0
    assert p.updates <= total_time * 10 + 3, (p.updates, total_time)
    assert p.updates >= 2
    print(f"\n{n} tasks in {elapsed:.2f} s -> {p.updates} widget updates")


def test_running_count_comes_from_started_events(oq):
    hs = oq.map(nap, [0.6] * 6)
    p = Progress(oq, hs, mode="widget", interval=0.05)
    assert _until(lambda: p.snapshot().running == 4, timeout=10)
    assert _until(lambda: "running 4" in p.counts.value, timeout=2)
    for h in hs:
        h.get(30)
    assert _until(lambda: "running 0" in p.counts.value and p.bar.value == 6, timeout=2)


def test_output_area_takes_remote_stdout_and_stderr(oq):
    p = Progress(oq, [oq.submit(ok, 1)], mode="widget")
    p.append_stdout("hello\n")
    p.append_stderr("Traceback ...\nValueError: x\n")
    outs = p.output.outputs
    assert outs[0]["name"] == "stdout" and outs[0]["text"] == "hello\n"
    assert outs[1]["name"] == "stderr" and "ValueError: x" in outs[1]["text"]


def test_resumed_points_count_as_done_and_retry_turns_green(tmp_path, oq):
    marker = tmp_path / "bad"
    marker.touch()

    def flaky(i):
        if i == 1 and marker.exists():
            raise RuntimeError("not yet")
        return i

    sw = oq.sweep(flaky, {"i": range(3)}, name="flaky").wait(30)
    again = oq.sweep(flaky, {"i": range(3)}, name="flaky")
    p = again.progress(mode="widget")
    again.wait(30)
    p.finalize()
    assert again.submitted == 1 and p.bar.value == 3 and p.bar.bar_style == "danger"
    marker.unlink()
    again.retry_failed().wait(30)
    assert _until(lambda: p.bar.bar_style == "success", timeout=3)
    assert p.failures.layout.display == "none" and p.bar.value == 3
    assert sw.counts() == {"succeeded": 2, "failed": 1}  # the first object keeps its own state


def test_text_fallback_outside_a_kernel(oq, capsys):
    buf = io.StringIO()
    hs = oq.map(bad_every_third, range(6))
    p = Progress(oq, hs, title="t", file=buf)  # mode="auto": no kernel here
    assert p.mode == "text"
    for h in hs:
        h.get(30)
    p.finalize()
    lines = buf.getvalue().splitlines()
    assert lines[-1].startswith("t: [####################] 6/6")
    assert "done 4" in lines[-1] and "failed 2" in lines[-1]
    assert len(lines) <= 3  # a non-terminal gets a line at most every 2 s, plus the last
    p.append_stdout("remote out\n")
    assert capsys.readouterr().out == "remote out\n"
    sw = oq.sweep(ok, {"i": [1]}, name="txt").wait(30)
    sw._ipython_display_()  # in a terminal IPython: the repr
    assert "<Sweep 'txt' 1 points: 1 succeeded>" in capsys.readouterr().out


def test_bad_arguments(oq):
    with pytest.raises(ValueError, match="mode='gui'"):
        Progress(oq, [], mode="gui")
    with pytest.raises(TypeError, match="expected a task handle"):
        Progress(oq, [object()], mode="widget")


# --- the UI-free parts ----------------------------------------------------------------------
def test_throttle_calls_at_most_once_per_interval_and_always_after_the_last_poke():
    calls: list[int] = []
    state = {"v": 0}
    lock = threading.Lock()

    def render() -> bool:
        calls.append(state["v"])
        return False

    th = Throttle(render, interval=0.05, heartbeat=None)
    stop = time.monotonic() + 0.5

    def poker():
        while time.monotonic() < stop:
            with lock:
                state["v"] += 1
            th.poke()

    threads = [threading.Thread(target=poker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = state["v"]
    assert _until(lambda: calls and calls[-1] == final, timeout=1)
    assert final > 1000 and len(calls) <= 0.5 / 0.05 + 3, len(calls)


def test_tracker_ignores_a_stale_future_after_resubmission():
    tr = Tracker()
    (slot,) = tr.add_slots(1)
    first: cf.Future[TaskResult] = cf.Future()
    second: cf.Future[TaskResult] = cf.Future()
    tr.begin([slot], ["a"], ["queued"])
    tr.attach([slot], [first])
    tr.begin([slot], ["b"], ["queued"])
    tr.attach([slot], [second])
    first.set_result(TaskResult(task_id="a", status=TaskStatus.FAILED, error=ErrorInfo("E", "old")))
    assert tr.state(slot) == "queued" and not tr.complete
    second.set_result(TaskResult(task_id="b", status=TaskStatus.SUCCEEDED))
    assert tr.state(slot) == "succeeded" and tr.wait(0)
    boom_future: cf.Future[TaskResult] = cf.Future()
    (slot2,) = tr.add_slots(1)
    tr.begin([slot2], ["c"], ["queued"])
    tr.attach([slot2], [boom_future])
    boom_future.set_exception(OSError("disk full"))
    snap = tr.snapshot()
    assert snap.failed == 1 and snap.failures[0].error == ErrorInfo("OSError", "disk full")


def test_tasks_running_before_the_widget_was_made_show_as_running(oq):
    hs = oq.map(nap, [0.8] * 6)
    # (the queue reports prefetched tasks as RUNNING too; "started" is when a slot runs one)
    assert _until(lambda: len(oq.events(types=["started"])) == 4, timeout=10)
    p = Progress(oq, hs, mode="widget")  # its "started" events were emitted before it existed
    assert p.snapshot().running == 4 and "running 4" in p.counts.value
    sw = oq.sweep(nap, {"seconds": [0.8, 0.81]}, name="late")
    assert _until(lambda: sw.counts().get("running") == 2, timeout=10)
    again = oq.sweep(nap, {"seconds": [0.8, 0.81]}, name="late")  # follows the points in flight
    assert again.submitted == 0 and again.counts().get("running") == 2
    again.wait(30)
    for h in hs:
        h.get(30)


def test_a_cancelled_task_is_counted_as_cancelled_not_failed(oq):
    import time as _time

    h = oq.enqueue(ok, args=(1,), delay=60)  # waits: cancelled before it runs
    handle = oq.handle(h)
    p = Progress(oq, [handle], title="one", mode="widget")
    assert oq.cancel(h)
    deadline = _time.monotonic() + 30
    while not p.tracker.snapshot().complete and _time.monotonic() < deadline:
        _time.sleep(0.02)
    p.finalize()
    snap = p.tracker.snapshot()
    assert (snap.failed, snap.cancelled) == (0, 1)
    assert "failed 0" in p.counts.value and "cancelled 1" in p.counts.value
    assert p.bar.bar_style == "warning"  # before: "failed 1" in red
