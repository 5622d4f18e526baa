"""Process workers: owned children, replaced when they die, killed on timeout or cancel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from omniq import OmniQ, TaskStatus
from omniq.cli import status_report

from .. import helpers
from .common import cancel_running, wait_for, wait_until
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
        assert _runner(oq)._prefetch() == 1  # slow tasks: at most one waiting behind a running one


def test_task_reading_stdin_gets_eof_not_protocol_frames(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/i.db", worker="process", concurrency=1) as oq:
        h = oq.submit(lambda: sys.stdin.read())  # before: read the next frames meant for the child
        assert h.result(30) == ""
        assert oq.submit(helpers.square, 4).result(30) == 16


# --- dispatch: no child idles while a task it could run waits ------------------------------------


def _redis_url() -> str:
    redis = pytest.importorskip("redis", reason="the redis extra is not installed")
    base = os.environ.get("OMNIQ_TEST_REDIS", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(base, socket_connect_timeout=1).ping()
    except Exception as exc:
        pytest.skip(f"no Redis server answers at {base} ({exc})")
    return f"{base}?prefix=omniq-dispatch-{os.urandom(4).hex()}"


@pytest.fixture(params=["sqlite", "memory", "redis"])
def pool_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/pool.db"
    elif request.param == "memory":
        yield "memory://"
    else:
        url = _redis_url()
        yield url
        import redis

        base, _, prefix = url.partition("?prefix=")
        client = redis.Redis.from_url(base)
        for k in client.scan_iter(f"{prefix}*"):
            client.delete(k)
        client.close()


def _overlap(a: tuple[int, float, float], b: tuple[int, float, float]) -> float:
    """Seconds two (pid, start, end) runs overlapped."""
    return min(a[2], b[2]) - max(a[1], b[1])


def test_two_slow_tasks_on_a_fresh_pool_run_at_once_in_two_children(pool_url):
    with OmniQ(tasks=pool_url, worker="process", concurrency=2) as oq:
        a, b = (h.result(60) for h in [oq.submit(helpers.nap, 1.0), oq.submit(helpers.nap, 1.0)])
    assert a[0] != b[0]  # before: both ran in the first child, one after the other (2.0 s)
    assert _overlap(a, b) > 0.8


def test_slow_tasks_after_quick_ones_are_spread_over_the_children(pool_url):
    with OmniQ(tasks=pool_url, worker="process", concurrency=2) as oq:
        assert [h.result(60) for h in oq.map(helpers.square, range(50))][-1] == 49**2
        runs = [h.result(60) for h in [oq.submit(helpers.nap, 1.0) for _ in range(4)]]
    per_child = sorted(sum(1 for r in runs if r[0] == pid) for pid in {r[0] for r in runs})
    assert per_child == [2, 2]  # before: all four in one child (4.0 s)


def test_tasks_queued_behind_a_slow_one_are_taken_by_an_idle_child(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/steal.db", worker="process", concurrency=2) as oq:
        [h.result(60) for h in oq.map(helpers.square, range(300))]  # quick: children take batches
        assert _runner(oq)._prefetch() > 1
        slow, *quick = oq.map(helpers.nap, [2.0, 0.05, 0.05, 0.05, 0.05])  # one claim, one batch
        runs = [h.result(60) for h in quick]
        first = slow.result(60)
    # every quick task ended long before the slow one: none waited behind it in its child
    assert all(r[2] < first[2] - 1.0 for r in runs), (first, runs)
    assert all(r[0] != first[0] for r in runs if r[1] > first[1])


def test_unknown_durations_count_as_long():
    from omniq.workers.process import ProcessRunner

    r = ProcessRunner(2)
    assert r._prefetch() == 1  # nothing seen yet: one waiting task per child, no batch
    for _ in range(20):
        r._observe(0.0001)
    assert r._prefetch() > 1
    for _ in range(20):
        r._observe(1.0)
    assert r._prefetch() == 1


def test_omniq_worker_runs_two_slow_tasks_at_once(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    with OmniQ(tasks=url, concurrency=0) as oq:
        ids = [oq.enqueue(helpers.nap, args=(1.5,)) for _ in range(2)]
        w = subprocess.Popen([sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "process",
                              "-c", "2"], stderr=subprocess.PIPE, text=True)
        try:
            a, b = (oq.get_result(i, wait=True, timeout=60).value for i in ids)
        finally:
            w.send_signal(signal.SIGTERM)
            w.communicate(timeout=60)
    assert a[0] != b[0] and _overlap(a, b) > 1.0


# --- children that cannot outlive their owner or escape its signals -------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_kill9_of_omniq_worker_takes_its_children_and_their_tasks_with_it(tmp_path):
    url = f"sqlite:///{tmp_path}/k9.db"
    started, finished = tmp_path / "started", tmp_path / "finished"
    with OmniQ(tasks=url, concurrency=0) as oq:
        oq.enqueue(helpers.touch_sleep_touch, args=(str(started), 2.0, str(finished)))
        w = subprocess.Popen([sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "process",
                              "-c", "1"], stderr=subprocess.DEVNULL)
        try:
            assert wait_until(started.exists, 60)
            child = int(started.read_text())
            assert child != w.pid
        finally:
            w.kill()
            w.wait(30)
        assert wait_until(lambda: not _alive(child), 10), "the child outlived its killed owner"
        time.sleep(2.5)  # past the moment the task would have finished
    assert not finished.exists()  # before: the orphan ran it to the end while it was delivered again


def test_children_run_in_a_session_of_their_own(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/s.db", worker="process", concurrency=2) as oq:
        for pid in _runner(oq).pids():
            assert os.getsid(pid) == pid  # the Stop button's SIGINT to our process group misses them
        os.killpg(os.getpgid(os.getpid()), 0)  # (our own group exists; nothing is sent)
        assert oq.submit(helpers.square, 5).result(30) == 25


def test_a_replacement_that_fails_is_retried_and_the_pool_says_it_is_short(tmp_path):
    from omniq.workers.process import PoolShortWarning

    with OmniQ(tasks=f"sqlite:///{tmp_path}/short.db", worker="process", concurrency=2) as oq:
        runner = _runner(oq)
        runner.child_module = "omniq.workers.no_such_child"  # every start now fails
        victim = runner.pids()[0]
        with pytest.warns(PoolShortWarning, match="short of a worker"):
            os.kill(victim, signal.SIGKILL)
            assert wait_until(lambda: runner.missing() == 1, 30)
            time.sleep(0.3)
        workers = wait_for(lambda: [w for w in oq.health()["workers"] if w["missing"] == 1], 30,
                           what="health() to report the short pool")
        assert workers[0]["slots"] == 2
        assert "SHORT of 1" in status_report(oq.health())
        runner.child_module = "omniq.workers.child"  # the next retry works
        assert wait_until(lambda: runner.missing() == 0 and len(runner.pids()) == 2, 30)
        assert sorted({h.result(30)[0] for h in oq.map(helpers.nap, [0.5, 0.5])}) == sorted(runner.pids())


# --- memory limits ---------------------------------------------------------------------------------


def test_a_task_over_its_memory_limit_fails_naming_the_limit_and_the_pool_goes_on(tmp_path):
    from omniq import TaskError

    with OmniQ(tasks=f"sqlite:///{tmp_path}/mem.db", worker="process", concurrency=1) as oq:
        runner = _runner(oq)
        runner.memory_limit = 200 << 20  # the worker's default (omniq worker --memory-limit)
        before = runner.pids()
        t0 = time.monotonic()
        h = oq.handle(oq.enqueue(helpers.hog, args=(1000,), retries=2))
        with pytest.raises(TaskError) as err:
            h.result(60)
        assert time.monotonic() - t0 < 20
        assert err.value.type == "MemoryLimitExceeded"
        assert "200.0 MiB" in err.value.message and "used" in err.value.message
        r = oq.get_result(h.id)
        assert r.attempts == 1  # failed as itself: not delivered again as if its worker had died
        assert oq.submit(helpers.square, 6).result(30) == 36  # the pool goes on, with a new child
        assert runner.pids() != before


def test_a_child_killed_by_sigkill_says_so(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/k9.db", worker="process", concurrency=1, max_deliveries=1) as oq:
        marker = tmp_path / "started"
        h = oq.submit(helpers.touch_then_sleep, str(marker), 30)
        assert wait_until(marker.exists)
        os.kill(int(marker.read_text()), signal.SIGKILL)
        r = oq.get_result(h.id, wait=True, timeout=60)
    assert r.error.type == "WorkerDied" and "killed by SIGKILL: out of memory?" in r.error.message
    assert r.attempts == 1  # it was delivered once, and ran (before: 0)


# --- errors that say what to do ----------------------------------------------------------------------


def test_remote_tracebacks_start_at_the_users_code(tmp_path):
    from omniq import TaskError

    with OmniQ(tasks=f"sqlite:///{tmp_path}/tb.db", worker="process", concurrency=1) as oq, \
            pytest.raises(TaskError) as err:
        oq.submit(helpers.boom_once_then, str(tmp_path / "m")).result(30)
    tb = err.value.traceback
    assert tb.splitlines()[1].strip().startswith('File "') and "helpers.py" in tb.splitlines()[1]
    assert "omniq/workers" not in tb and "omniq/serialization" not in tb


def test_a_worker_that_cannot_import_the_tasks_module_says_where_it_looked(tmp_path):
    from omniq import TaskError

    pkg = tmp_path / "mine"
    pkg.mkdir()
    (pkg / "tasks_mod_xyz.py").write_text("def work(x):\n    return x + 1\n")
    url = f"sqlite:///{tmp_path}/imp.db"
    sys.path.insert(0, str(pkg))
    try:
        import tasks_mod_xyz  # type: ignore[import-not-found]

        with OmniQ(tasks=url, concurrency=0) as oq:
            tid = oq.enqueue(tasks_mod_xyz.work, args=(1,))
            elsewhere = tmp_path / "elsewhere"
            elsewhere.mkdir()
            w = subprocess.Popen([sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "process",
                                  "-c", "1"], cwd=elsewhere, stderr=subprocess.DEVNULL,
                                 env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
            try:
                with pytest.raises(TaskError) as err:
                    oq.handle(tid).result(60)
            finally:
                w.terminate()
                w.wait(60)
    finally:
        sys.path.remove(str(pkg))
        sys.modules.pop("tasks_mod_xyz", None)
    msg = err.value.message
    assert "tasks_mod_xyz" in msg and "PYTHONPATH" in msg and str(elsewhere) in msg


def test_a_module_planted_where_the_worker_starts_is_not_imported_by_its_children(tmp_path):
    """Children started as ``python -m`` had the working directory first on their path: a
    ``dill.py`` there ran in every child (security review, finding 5)."""
    url = f"sqlite:///{tmp_path}/plant.db"
    here = tmp_path / "here"
    here.mkdir()
    marker = tmp_path / "pwned"
    (here / "dill.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with OmniQ(tasks=url, concurrency=0) as oq:
        tid = oq.enqueue(helpers.square, args=(7,))
        script = os.path.join(os.path.dirname(sys.executable), "omniq")  # as a user starts it
        w = subprocess.Popen([script, "worker", "--tasks", url, "--worker", "process", "-c", "1"], cwd=here,
                             stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        try:
            assert oq.get_result(tid, wait=True, timeout=60).value == 49
        finally:
            w.terminate()
            w.wait(60)
    assert not marker.exists()


def test_a_finished_task_is_reported_while_a_slow_one_runs_after_it_in_the_same_child(tmp_path):
    """A child held a quick task's result back until the slow task it took next had finished."""
    with OmniQ(tasks=f"sqlite:///{tmp_path}/held.db", worker="process", concurrency=1) as oq:
        quick, slow = oq.map(helpers.sleep_return, [0.0, 3.0])  # one batch: both go to the child
        t0 = time.monotonic()
        assert quick.result(30) == 0.0
        assert time.monotonic() - t0 < 1.5
        assert slow.result(30) == 3.0


def test_closing_without_draining_while_tasks_run_logs_no_protocol_error(tmp_path, caplog):
    import logging

    url = f"sqlite:///{tmp_path}/nodrain.db"
    caplog.set_level(logging.WARNING, logger="omniq")
    oq = OmniQ(tasks=url, worker="process", concurrency=2)
    hs = [oq.submit(helpers.sleep_return, 0.15, i) for i in range(4)]
    time.sleep(0.1)  # running now
    oq.close(drain=False)
    assert not [r for r in caplog.records if "protocol error" in r.getMessage()]
    with OmniQ(tasks=url, worker="process", concurrency=2) as again:
        assert [again.get_result(h.id, wait=True, timeout=60).value for h in hs] == [0, 1, 2, 3]


def test_closing_while_a_replacement_starts_leaves_no_child_running(tmp_path):
    """A child dies and the instance closes while its replacement is still starting: the
    replacement is stopped too, not left running (in a notebook the kernel lives on)."""
    import psutil

    me = psutil.Process()
    others = {p.pid for p in me.children(recursive=True)}  # pools other tests keep open

    def ours() -> list[str]:
        return [f"{p.pid} {p.status()} {' '.join(p.cmdline())}" for p in me.children(recursive=True)
                if p.pid not in others and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                and "omniq.workers" in " ".join(p.cmdline())]

    import gc
    import warnings

    for i in range(5):
        oq = OmniQ(tasks=f"sqlite:///{tmp_path}/q{i}.db", worker="process", concurrency=2)
        oq.open()
        pids = _runner(oq).pids()
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(0.02 * i)  # the replacement is somewhere in its start when close comes
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            oq.close()
            del oq
            gc.collect()  # a transport left open warns when collected
        # (a child still exiting is not a leak; one left behind lingers until collected)
        assert wait_until(lambda: not ours(), timeout=0.5), f"close #{i} left {ours()}"
        assert not [str(w.message) for w in caught if w.category is ResourceWarning], f"close #{i}"
