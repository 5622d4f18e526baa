"""gevent workers: greenlets in a monkey-patched child, never in the user's process."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from omniq import ConfigError, OmniQ, TaskError, TaskStatus
from omniq.errors import WorkerDied
from omniq.workers.registry import make_runner

from .common import cancel_running, runner, wait_until

# not importorskip: that would import gevent here, and this process must not need it
needs_gevent = pytest.mark.skipif(importlib.util.find_spec("gevent") is None, reason="the gevent extra is not installed")


# --- task functions (imported by reference in the child) ---------------------------------------
def nap(seconds, value=None):
    time.sleep(seconds)  # cooperative in the child: time is monkey-patched there
    return value


def touch_then_nap(path, seconds):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return seconds


def die_once(path):
    """Kill the child the first time, succeed when delivered again."""
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        os._exit(7)
    return "second delivery"


def always_die():
    os._exit(9)


def spin(seconds, path=None):
    """Hold the CPU without ever yielding to the hub: gevent.Timeout cannot fire."""
    if path is not None:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def shell_out_then_nap(value):
    """A subprocess inherits the child's stdin: it must not be the protocol pipe."""
    subprocess.run([sys.executable, "-c", "import sys; sys.stdin.read()"], check=True, timeout=10)
    try:
        input()
    except EOFError:
        pass
    time.sleep(0.2)
    return value


def patched_in_child():
    from gevent import monkey

    return monkey.is_module_patched("socket"), monkey.is_module_patched("time")


def fail(x):
    raise ValueError(f"bad value {x}")


async def async_nap(seconds, value):
    import asyncio

    await asyncio.sleep(seconds)
    return value


# --- helpers ------------------------------------------------------------------------------------
def _gevent(tmp_path, concurrency=20):
    return OmniQ(tasks=f"sqlite:///{tmp_path}/g.db", worker="gevent", concurrency=concurrency)


@pytest.fixture
def oq(tmp_path):
    with _gevent(tmp_path) as q:
        yield q


def _child(oq):
    (pid,) = runner(oq).pids()
    return pid


def _not_patched_here():
    if "gevent" in sys.modules:
        from gevent import monkey

        assert not monkey.is_module_patched("socket")
        assert not monkey.is_module_patched("threading")
    assert socket.socket.__module__ == "socket"
    assert threading.Lock.__module__ in ("_thread", "threading")


# --- tests --------------------------------------------------------------------------------------
@needs_gevent
def test_io_bound_tasks_run_concurrently_in_one_patched_child(oq):
    pid = _child(oq)
    assert pid != os.getpid()
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"omniq.workers.gevent_child" in f.read().split(b"\0")
    assert tuple(oq.submit(patched_in_child).result(30)) == (True, True)
    t0 = time.monotonic()
    hs = oq.map(lambda i: nap(0.2, i), range(50))
    assert [h.result(30) for h in hs] == list(range(50))
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, f"50 x 0.2 s took {elapsed:.2f} s: not concurrent"
    # out of order: a quick task enqueued after a slow one is reported first
    slow = oq.submit(nap, 1.0, "slow")
    quick = oq.submit(nap, 0.05, "quick")
    assert quick.result(30) == "quick" and slow.status() is TaskStatus.RUNNING
    assert slow.result(30) == "slow"
    assert _child(oq) == pid
    _not_patched_here()


@needs_gevent
def test_user_process_is_never_monkey_patched(tmp_path):
    had_gevent = "gevent" in sys.modules
    with _gevent(tmp_path, concurrency=2) as q:
        assert q.submit(nap, 0.01, 1).result(30) == 1
    _not_patched_here()
    if not had_gevent:
        assert "gevent" not in sys.modules  # the parent does not even import it


@needs_gevent
def test_tasks_that_start_subprocesses_or_read_stdin_leave_the_protocol_alone(oq):
    assert oq.submit(shell_out_then_nap, "first").result(30) == "first"
    t0 = time.monotonic()
    hs = oq.map(shell_out_then_nap, range(20))
    assert [h.result(30) for h in hs] == list(range(20))
    assert time.monotonic() - t0 < 5.0  # still concurrent: the pipe stayed cooperative


@needs_gevent
def test_timeout_stops_only_that_greenlet(oq):
    pid = _child(oq)
    others = [oq.submit(nap, 1.0, i) for i in range(5)]
    t0 = time.monotonic()
    tid = oq.enqueue(nap, args=(30,), timeout=0.5)
    r = oq.get_result(tid, wait=True, timeout=30)
    assert time.monotonic() - t0 < 5
    assert r.status is TaskStatus.FAILED
    assert r.error.type == "TaskTimeout" and "timed out after 0.5 s" in r.error.message
    assert [h.result(30) for h in others] == list(range(5))
    assert _child(oq) == pid  # the child did not have to die for it


@needs_gevent
def test_timeout_of_a_task_that_holds_the_cpu_kills_the_child(oq):
    """gevent.Timeout cannot fire while a greenlet never yields; the parent steps in."""
    pid = _child(oq)
    bystander = oq.submit(nap, 0.5, "again")
    time.sleep(0.2)
    tid = oq.enqueue(spin, args=(30,), timeout=0.5)
    r = oq.get_result(tid, wait=True, timeout=60)
    assert r.status is TaskStatus.FAILED and r.error.type == "TaskTimeout"
    assert bystander.result(60) == "again"  # lost with the child, delivered again
    assert wait_until(lambda: runner(oq).pids() not in ([], [pid]))
    assert oq.submit(nap, 0.01, 3).result(30) == 3


@needs_gevent
def test_cancel_running_greenlet(oq, tmp_path):
    pid = _child(oq)
    marker = tmp_path / "started"
    h = oq.submit(touch_then_nap, str(marker), 60)
    neighbour = oq.submit(nap, 1.5, "kept")
    assert wait_until(marker.exists)
    cancel_running(h, within=10)
    assert neighbour.result(30) == "kept"
    assert _child(oq) == pid  # the greenlet was killed, not the child


@needs_gevent
def test_cancel_of_a_task_that_holds_the_cpu_kills_the_child(oq, tmp_path):
    pid = _child(oq)
    marker = tmp_path / "spinning"
    h = oq.submit(spin, 60, str(marker))
    assert wait_until(marker.exists)
    cancel_running(h, within=20)
    assert wait_until(lambda: runner(oq).pids() not in ([], [pid]))


@needs_gevent
def test_child_protocol_cancel_before_start_and_out_of_order_results():
    """Straight at the child: an "X" in the same read as its "T" still gets an answer, and
    results come back as tasks end, each naming its task."""
    from omniq.serialization import dumps_call
    from omniq.workers import _wire
    from omniq.workers.process import child_command, child_env

    p = subprocess.Popen(child_command("omniq.workers.gevent_child"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env=child_env())
    try:
        assert _wire.read_frame(p.stdout)[0] == "H"
        rows = [["slow", dumps_call(nap, (0.5, "s"), {}), None, None],
                ["quick", dumps_call(nap, (0.05, "q"), {}), None, None],
                ["never", dumps_call(nap, (5, "n"), {}), None, None],
                ["late", dumps_call(nap, (5, "l"), {}), 0.2, None]]  # [id, payload, timeout, expires_at]
        p.stdin.write(_wire.frame(["T", rows]) + _wire.frame(["X", "never"]))
        p.stdin.flush()
        done = []
        while len(done) < 4:
            msg = _wire.read_frame(p.stdout)
            if msg[0] == "R":
                done.extend((tid, code) for tid, code, *_ in msg[1])
        assert done == [("never", _wire.CANCELLED), ("quick", _wire.OK), ("late", _wire.TIMED_OUT),
                        ("slow", _wire.OK)]
        p.stdin.write(_wire.frame(["Q"]))
        p.stdin.flush()
        assert p.wait(10) == 0
    finally:
        p.kill()
        p.wait(10)
        p.stdin.close()
        p.stdout.close()


@needs_gevent
def test_child_crash_is_survived_and_its_tasks_delivered_again(oq, tmp_path):
    pid = _child(oq)
    marker = tmp_path / "died"
    bystanders = [oq.submit(nap, 0.5, i) for i in range(5)]
    time.sleep(0.2)
    assert oq.submit(die_once, str(marker)).result(60) == "second delivery"
    assert [b.result(60) for b in bystanders] == list(range(5))
    assert int(marker.read_text()) == pid
    assert _child(oq) != pid
    types = [e.type for e in oq.events(task_id=bystanders[0].id)]
    assert "requeued" in types and types[-1] == "succeeded"


@needs_gevent
def test_task_that_always_kills_the_child_fails_with_worker_died(oq):
    h = oq.submit(always_die)
    with pytest.raises(WorkerDied):
        h.result(60)
    assert oq.get_result(h.id).error.type == "WorkerDied"
    assert oq.submit(nap, 0.01, "alive").result(30) == "alive"


@needs_gevent
def test_failure_carries_the_remote_traceback(oq):
    h = oq.submit(fail, 3)
    with pytest.raises(TaskError) as info:
        h.result(30)
    assert "bad value 3" in str(info.value)
    err = oq.get_result(h.id).error
    assert err.type == "ValueError" and err.message == "bad value 3"
    assert 'raise ValueError(f"bad value {x}")' in err.traceback and "in fail" in err.traceback


@needs_gevent
def test_coroutine_functions_run_concurrently(oq):
    t0 = time.monotonic()
    hs = oq.map(lambda i: async_nap(0.3, i), range(12))
    assert [h.result(30) for h in hs] == list(range(12))
    assert time.monotonic() - t0 < 3.0


@needs_gevent
def test_closures_and_lambdas_from_main(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from omniq import OmniQ

        offset = 100

        def make_adder(n):
            def add(x):
                time.sleep(0.1)
                return x + n + offset
            return add

        with OmniQ(tasks="sqlite:///{tmp_path}/m.db", worker="gevent", concurrency=10) as oq:
            add = make_adder(5)
            a = [h.result(30) for h in oq.map(add, range(10))]
            b = oq.submit(lambda s: s.upper(), "gevent").result(30)
        assert "gevent" not in sys.modules, "the script's process imported gevent"
        print(a, b)
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{[x + 105 for x in range(10)]} GEVENT"


@needs_gevent
def test_exit_drains_submitted_tasks(tmp_path):
    with _gevent(tmp_path, concurrency=5) as q:
        hs = [q.submit(nap, 0.1, i) for i in range(20)]
    assert all(h.done() for h in hs)
    assert [h.result() for h in hs] == list(range(20))


def test_missing_gevent_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gevent", None)  # what find_spec sees when it is absent
    with pytest.raises(ConfigError, match=r"pip install 'omniq\[gevent\]'"):
        make_runner("gevent", 2)
    with pytest.raises(ConfigError, match=r"pip install 'omniq\[gevent\]'"), _gevent(tmp_path, concurrency=1):
        pass
